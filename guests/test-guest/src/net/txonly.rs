//! `test=net-txonly`: a transmit-only virtio-net driver, legal by the specification (a driver
//! need not make every queue ready) and one QEMU runs: only the transmit queue (1) is set up;
//! the receive queue (0) is left not ready.
//!
//! ```text
//! test=net-txonly count=N [size=60..2036] [dev=D]
//! ```
//!
//! Sends `count` frames of `size` bytes (to 02:00:00:00:00:01, EtherType 0x88b5, the IEEE
//! local experimental one, so the host's stack drops them on arrival; bytes 14..18 carry the
//! frame's number), waiting for the device to return each slot before reusing it. Prints
//! `net-txonly status 0x..` after DRIVER_OK (a device that refuses the queue set sets
//! DEVICE_NEEDS_RESET, 0x40, and the driver stops there), then `net-txonly sent N` once the
//! device has returned every frame, or `net-txonly: timed out after N`.

use super::{mac_str, put_eth};
use crate::io::{mmio_read32, rdtsc};
use crate::serial::Line;
use crate::virtio::{alloc, arg_u64, find, zero};

const VIRTIO_ID_NET: u32 = 1;
/// VIRTIO_NET_F_MAC.
const F_MAC: u64 = 1 << 5;
/// The virtio-mmio status register (the transport module keeps its accessor private).
const REG_STATUS: u64 = 0x70;
/// DEVICE_NEEDS_RESET in the status register.
const S_NEEDS_RESET: u32 = 0x40;
const TX_QUEUE: u16 = 1;
/// `struct virtio_net_hdr_v1`.
const HDR_LEN: usize = 12;
/// Bytes per TX slot.
const SLOT: u64 = 2048;
const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const ETHERTYPE: u16 = 0x88b5;

/// `test=net-txonly`.
pub fn run(cmdline: &[u8]) {
    let count = arg_u64(cmdline, b"count", 100);
    let size = arg_u64(cmdline, b"size", 60).clamp(60, SLOT - HDR_LEN as u64) as usize;
    let dev = arg_u64(cmdline, b"dev", 0) as usize;
    let Some(t) = find(cmdline).nth_of_type(VIRTIO_ID_NET, dev) else {
        Line::new().s("net-txonly: no virtio-net device ").dec(dev as u64).print();
        return;
    };
    let features = match t.init(F_MAC) {
        Ok(f) => f,
        Err(e) => {
            Line::new().s("net-txonly: init failed: ").s(e.describe()).print();
            return;
        }
    };
    let mut tx = match t.setup_queue(TX_QUEUE, 64) {
        Ok(q) => q,
        Err(e) => {
            Line::new().s("net-txonly: TX queue: ").s(e.describe()).print();
            return;
        }
    };
    let mut mac = [0x52, 0x54, 0x00, 0x00, 0x00, 0x01];
    if features & F_MAC != 0 {
        let (lo, hi) = (t.config32(0).to_le_bytes(), t.config32(4).to_le_bytes());
        mac[..4].copy_from_slice(&lo);
        mac[4..].copy_from_slice(&hi[..2]);
    }
    let n = tx.size();
    let Some(slots) = alloc(SLOT * u64::from(n), 4096) else {
        Line::new().s("net-txonly: out of memory").print();
        return;
    };
    for i in 0..n {
        let slot = slots + SLOT * u64::from(i);
        zero(slot, HDR_LEN as u64);
        // SAFETY: the slot's frame area, arena memory of this driver not yet given to the
        // device.
        let f =
            unsafe { core::slice::from_raw_parts_mut((slot + HDR_LEN as u64) as *mut u8, size) };
        put_eth(f, DST, mac, ETHERTYPE);
        for (j, b) in f[18..].iter_mut().enumerate() {
            *b = j as u8;
        }
        tx.write_desc(i, slot, (HDR_LEN + size) as u32, 0, 0);
    }
    t.driver_ok();
    let status = mmio_read32(t.base + REG_STATUS);
    mac_str(Line::new().s("net mac="), mac).print();
    Line::new().s("net-txonly status ").hex(u64::from(status), 2).print();
    if status & S_NEEDS_RESET != 0 {
        Line::new().s("net-txonly: the device needs a reset").print();
        return;
    }

    let patience = super::tsc_hz() * 30;
    let (mut sent, mut done, mut next) = (0u64, 0u64, 0u16);
    let mut last_progress = rdtsc();
    while done < count {
        if sent < count && sent - done < u64::from(n) {
            let slot = slots + SLOT * u64::from(next) + HDR_LEN as u64;
            // SAFETY: the slot is free (fewer than `n` frames are in flight and the device
            // returns them in order); bytes 14..18 lie inside the frame (size >= 60).
            unsafe { core::ptr::write_unaligned((slot + 14) as *mut u32, sent as u32) };
            tx.push_avail(next);
            tx.kick();
            next = (next + 1) & (n - 1);
            sent += 1;
            continue;
        }
        if tx.pop_used_fixed().is_some() {
            done += 1;
            last_progress = rdtsc();
        } else if rdtsc().wrapping_sub(last_progress) > patience {
            Line::new().s("net-txonly: timed out after ").dec(done).print();
            return;
        } else {
            core::hint::spin_loop();
        }
    }
    Line::new().s("net-txonly sent ").dec(done).print();
}
