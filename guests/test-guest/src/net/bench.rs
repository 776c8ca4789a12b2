//! `test=net-bench`: frames between the guest and the host as fast as the device moves them.
//!
//! ```text
//! test=net-bench mode=tx size=64|...|1514 count=N
//! test=net-bench mode=rx count=N [idle=S]
//! ```
//!
//! - `tx`: fills every TX slot once with a `size`-byte frame (to 02:00:00:00:00:01, EtherType
//!   0x88b5, the IEEE local experimental one, so the host's stack drops it at once), then keeps
//!   the ring full: each returned slot is queued again as it is (no per-frame writes but the
//!   ring entry), with EVENT_IDX so the device is only notified when it has gone idle. The host
//!   counts the frames on its TAP.
//! - `rx`: counts frames until `count` have arrived or none came for `idle` seconds (default
//!   5) after the first; each slot is handed straight back.
//!
//! Prints `net-bench start ...` when the ring is set up (a host times from it), then
//! `net-bench done <frames>` and `net-bench tsc=<ticks>`.

use super::{mac_str, put_eth, Stack};
use crate::io::rdtsc;
use crate::serial::{say, Line};
use crate::virtio::net::{Net, MAX_FRAME};
use crate::virtio::{arg, arg_u64, F_EVENT_IDX};

const BENCH_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const BENCH_ETHERTYPE: u16 = 0x88b5;

/// `test=net-bench`.
pub fn run(cmdline: &[u8]) {
    let count = arg_u64(cmdline, b"count", 100_000);
    let Some(nic) = Net::open(cmdline, 256, F_EVENT_IDX) else { return };
    mac_str(Line::new().s("net mac="), nic.mac).print();
    match arg(cmdline, b"mode") {
        Some(b"tx") | None => tx(nic, cmdline, count),
        Some(b"rx") => rx(nic, cmdline, count),
        Some(other) => Line::new().s("net-bench: unknown mode ").bytes(other).print(),
    }
}

fn tx(mut nic: Net, cmdline: &[u8], count: u64) {
    let size = arg_u64(cmdline, b"size", 64).clamp(60, MAX_FRAME as u64) as usize;
    let mac = nic.mac;
    let slots = nic.tx_size();
    for slot in 0..slots {
        let addr = nic.tx_slot_frame(slot);
        // SAFETY: the slot's frame area, arena memory of the driver not yet given to the
        // device.
        let f = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, size) };
        put_eth(f, BENCH_DST, mac, BENCH_ETHERTYPE);
        for (i, b) in f[14..].iter_mut().enumerate() {
            *b = i as u8;
        }
        nic.prepare_tx(slot, size);
    }
    Line::new()
        .s("net-bench start mode=tx size=")
        .dec(size as u64)
        .s(" count=")
        .dec(count)
        .s(" ring=")
        .dec(slots.into())
        .print();
    let start = rdtsc();
    let mut issued = 0u64;
    for slot in 0..slots {
        if issued == count {
            break;
        }
        nic.requeue_tx(slot);
        issued += 1;
    }
    nic.kick_tx();
    let mut done = 0u64;
    let mut spins = 0u32;
    let mut seen = 0u64;
    let mut last_progress = start;
    let patience = super::tsc_hz() * 30;
    while done < count {
        let mut refilled = false;
        while let Some(slot) = nic.pop_tx() {
            done += 1;
            if issued < count {
                nic.requeue_tx(slot);
                issued += 1;
                refilled = true;
            }
        }
        if refilled {
            nic.kick_tx();
            spins = 0;
            continue;
        }
        spins += 1;
        if spins & 0xffff == 0 {
            let now = rdtsc();
            if done != seen {
                seen = done;
                last_progress = now;
            } else if now.wrapping_sub(last_progress) > patience {
                Line::new().s("net-bench: timed out after ").dec(done).s(" frames").print();
                return;
            }
            nic.notify_tx();
        }
    }
    let ticks = rdtsc().wrapping_sub(start);
    Line::new().s("net-bench done ").dec(done).print();
    Line::new().s("net-bench tsc=").dec(ticks).print();
}

fn rx(nic: Net, cmdline: &[u8], count: u64) {
    let idle = arg_u64(cmdline, b"idle", 5).max(1);
    let mut s = Stack::new(nic);
    say("net-bench start mode=rx");
    let mut got = 0u64;
    let mut start = 0u64;
    let mut last = 0u64;
    let patience = s.hz * idle;
    let wait_first = s.hz * 120;
    let begin = rdtsc();
    let mut spins = 0u32;
    while got < count {
        let mut n = 0u64;
        while let Some((slot, _)) = s.nic.recv() {
            s.nic.release(slot);
            n += 1;
        }
        let now = rdtsc();
        if n > 0 {
            s.nic.flush_rx();
            if got == 0 {
                start = now;
            }
            got += n;
            last = now;
            continue;
        }
        spins += 1;
        if spins & 0xfff == 0 {
            // Buffers go back without a notification while the device is busy (EVENT_IDX);
            // make sure an idle one hears of them.
            s.nic.renotify();
        }
        if (got > 0 && now.wrapping_sub(last) > patience)
            || (got == 0 && now.wrapping_sub(begin) > wait_first)
        {
            break;
        }
    }
    Line::new().s("net-bench done ").dec(got).print();
    Line::new().s("net-bench tsc=").dec(last.wrapping_sub(start)).print();
}
