//! `test=net-bench`: frames between the guest and the host as fast as the device moves them.
//!
//! ```text
//! test=net-bench mode=tx size=64|...|1514 count=N [cpl3=0]
//! test=net-bench mode=rx count=N [idle=S] [cpl3=0]
//! ```
//!
//! - `tx`: fills every TX slot once with a `size`-byte frame (to 02:00:00:00:00:01, EtherType
//!   0x88b5, the IEEE local experimental one, so the host's stack drops it at once), then keeps
//!   the ring full: each returned slot is queued again as it is (no per-frame writes but the
//!   ring entry), with EVENT_IDX so the device is only notified when it has gone idle. The host
//!   counts the frames on its TAP.
//! - `rx`: counts frames until `count` have arrived or none came for `idle` seconds (default
//!   5) after the first; each slot is handed straight back. `tsc=` is then the time from the
//!   first frame to the last.
//!
//! Both loops run at CPL3 ([`crate::virtio::ring3`]; native on PVM hosts, where CPL0 is
//! emulated at ~4 MIPS) unless `cpl3=0`. Prints `net-bench start ...` when the ring is set up
//! (a host times from it), then `net-bench done <frames>` and `net-bench tsc=<ticks> cpl=N`.

use super::{mac_str, put_eth};
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
    let mut ctx = TxLoop {
        nic: &mut nic,
        count,
        done: 0,
        ticks: 0,
        timed_out: false,
        patience: super::tsc_hz() * 30,
    };
    let cpl3 = arg_u64(cmdline, b"cpl3", 1) != 0;
    let ran_at_cpl3 = cpl3 && crate::virtio::ring3::run_at_cpl3(tx_at_cpl3, &raw mut ctx as u64);
    if !ran_at_cpl3 {
        tx_loop(&mut ctx);
    }
    if ctx.timed_out {
        Line::new().s("net-bench: timed out after ").dec(ctx.done).s(" frames").print();
        return;
    }
    Line::new().s("net-bench done ").dec(ctx.done).print();
    Line::new()
        .s("net-bench tsc=")
        .dec(ctx.ticks)
        .s(if ran_at_cpl3 { " cpl=3" } else { " cpl=0" })
        .print();
}

/// What the transmit loop works on: it runs at CPL3 (native on PVM hosts) or CPL0, so it only
/// touches memory and device registers (no port I/O, no printing).
struct TxLoop<'a> {
    nic: &'a mut Net,
    count: u64,
    done: u64,
    ticks: u64,
    timed_out: bool,
    /// TSC ticks without progress before giving up.
    patience: u64,
}

extern "C" fn tx_at_cpl3(ctx: u64) -> ! {
    // SAFETY: `tx` passes a pointer to its TxLoop, alive until run_at_cpl3 returns.
    tx_loop(unsafe { &mut *(ctx as *mut TxLoop<'_>) });
    crate::virtio::ring3::finish()
}

/// Keeps the TX ring full until `count` frames have gone out.
fn tx_loop(c: &mut TxLoop<'_>) {
    let nic = &mut *c.nic;
    let start = rdtsc();
    let mut issued = 0u64;
    for slot in 0..nic.tx_size() {
        if issued == c.count {
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
    while done < c.count {
        let mut refilled = false;
        while let Some(slot) = nic.pop_tx() {
            done += 1;
            if issued < c.count {
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
            } else if now.wrapping_sub(last_progress) > c.patience {
                c.timed_out = true;
                break;
            }
            nic.notify_tx();
        }
    }
    c.done = done;
    c.ticks = rdtsc().wrapping_sub(start);
}

fn rx(mut nic: Net, cmdline: &[u8], count: u64) {
    let hz = super::tsc_hz();
    let mut ctx = RxLoop {
        nic: &mut nic,
        count,
        patience: hz * arg_u64(cmdline, b"idle", 5).max(1),
        wait_first: hz * 120,
        got: 0,
        ticks: 0,
    };
    say("net-bench start mode=rx");
    let cpl3 = arg_u64(cmdline, b"cpl3", 1) != 0;
    let ran_at_cpl3 = cpl3 && crate::virtio::ring3::run_at_cpl3(rx_at_cpl3, &raw mut ctx as u64);
    if !ran_at_cpl3 {
        rx_loop(&mut ctx);
    }
    Line::new().s("net-bench done ").dec(ctx.got).print();
    Line::new()
        .s("net-bench tsc=")
        .dec(ctx.ticks)
        .s(if ran_at_cpl3 { " cpl=3" } else { " cpl=0" })
        .print();
}

/// What the receive loop works on (CPL3 or CPL0: memory and device registers only).
struct RxLoop<'a> {
    nic: &'a mut Net,
    count: u64,
    /// TSC ticks without a frame, after the first, before stopping.
    patience: u64,
    /// TSC ticks to wait for the first frame.
    wait_first: u64,
    got: u64,
    /// TSC ticks from the first frame to the last.
    ticks: u64,
}

extern "C" fn rx_at_cpl3(ctx: u64) -> ! {
    // SAFETY: `rx` passes a pointer to its RxLoop, alive until run_at_cpl3 returns.
    rx_loop(unsafe { &mut *(ctx as *mut RxLoop<'_>) });
    crate::virtio::ring3::finish()
}

/// Counts frames, handing each slot straight back, until `count` or a quiet spell.
fn rx_loop(c: &mut RxLoop<'_>) {
    let nic = &mut *c.nic;
    let begin = rdtsc();
    let (mut got, mut first, mut last) = (0u64, 0u64, 0u64);
    let mut spins = 0u32;
    while got < c.count {
        let mut n = 0u64;
        while let Some((slot, _)) = nic.recv() {
            nic.release(slot);
            n += 1;
        }
        let now = rdtsc();
        if n > 0 {
            nic.flush_rx();
            if got == 0 {
                first = now;
            }
            got += n;
            last = now;
            continue;
        }
        spins += 1;
        if spins & 0xfff == 0 {
            // Buffers go back without a notification while the device is busy (EVENT_IDX);
            // make sure an idle one hears of them.
            nic.renotify();
        }
        if (got > 0 && now.wrapping_sub(last) > c.patience)
            || (got == 0 && now.wrapping_sub(begin) > c.wait_first)
        {
            break;
        }
    }
    c.got = got;
    c.ticks = last.wrapping_sub(first);
}
