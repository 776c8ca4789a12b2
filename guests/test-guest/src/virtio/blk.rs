//! A polling virtio-blk driver and its two tests.
//!
//! - `test=blk [dev=D] [sector=S] [count=C] [seed=N]`: prints the capacity (config space) and
//!   the serial (GET_ID), writes a pattern ([`pattern_word`]) to C sectors at S, FLUSHes, reads
//!   them back and compares.
//! - `test=blk-bench [dev=D] mode=seqread|seqwrite|randread bs=B count=N [depth=Q] [cpl3=0]
//!   [event_idx=0] [seed=N]`: N requests of B bytes, up to Q in flight (default: as many as
//!   fit 16 MiB, at most 32), each slot a fixed three-descriptor chain; the used ring is polled
//!   and, with EVENT_IDX, the device is kicked only when it has gone idle. The request loop runs
//!   at CPL3 ([`super::ring3`]; native on PVM hosts, where CPL0 is emulated at ~4 MIPS) unless
//!   `cpl3=0`. Prints `blk-bench start ...`, `blk-bench done N` and
//!   `blk-bench errors=E tsc=T cpl=3|0`; the host times the first two lines.
//!
//! `dev=D` picks the D-th virtio-blk device (default 0).

use super::{
    arg, arg_u64, find, Buf, Transport, Virtqueue, DESC_F_NEXT, DESC_F_WRITE, F_EVENT_IDX,
};
use crate::io::rdtsc;
use crate::serial::{say, Line};

const VIRTIO_ID_BLOCK: u32 = 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const SECTOR: u64 = 512;
/// Sectors per request in `test=blk` (64 KiB).
const CHUNK_SECTORS: u64 = 128;
/// How long one request may take before the driver gives up (TSC ticks: seconds at GHz rates).
const REQUEST_TICKS: u64 = 60_000_000_000;

/// The pattern's 64-bit word at disk byte `offset` (a multiple of 8) for `seed`, stored
/// little-endian. The host tests compute the same function.
pub fn pattern_word(seed: u64, offset: u64) -> u64 {
    let mut x = seed ^ offset.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 32)
}

/// A live virtio-blk device with one queue.
pub(super) struct Blk {
    transport: Transport,
    queue: Virtqueue,
    features: u64,
    /// A 16-byte request header and a status byte (at +16), for the one-at-a-time requests.
    scratch: u64,
}

fn status_name(status: u8) -> &'static str {
    match status {
        0 => "OK",
        1 => "IOERR",
        2 => "UNSUPP",
        _ => "?",
    }
}

impl Blk {
    /// Finds the `dev`-th blk device and brings it up with one queue of at most `queue_size`.
    pub(super) fn open(cmdline: &[u8], queue_size: u16, extra: u64) -> Option<Blk> {
        let dev = arg_u64(cmdline, b"dev", 0) as usize;
        let Some(transport) = find(cmdline).nth_of_type(VIRTIO_ID_BLOCK, dev) else {
            Line::new().s("blk: no virtio-blk device ").dec(dev as u64).print();
            return None;
        };
        let setup = transport.init(F_RO | F_FLUSH | extra).and_then(|features| {
            let queue = transport.setup_queue(0, queue_size)?;
            Ok((features, queue))
        });
        let (features, queue) = match setup {
            Ok(v) => v,
            Err(e) => {
                Line::new().s("blk: init failed: ").s(e.describe()).print();
                return None;
            }
        };
        transport.driver_ok();
        let Some(scratch) = super::alloc(64, 64) else {
            say("blk: out of memory");
            return None;
        };
        Some(Blk { transport, queue, features, scratch })
    }

    fn capacity(&self) -> u64 {
        self.transport.config64(0)
    }

    /// One request, waited for: header, optional data buffer, status. The status, or `None` on
    /// a timeout.
    pub(super) fn request(&mut self, ty: u32, sector: u64, data: Option<Buf>) -> Option<u8> {
        let hdr = self.scratch;
        let status = self.scratch + 16;
        // SAFETY: `scratch` is 64 bytes of arena memory only this driver uses.
        unsafe {
            core::ptr::write_volatile(hdr as *mut u32, ty);
            core::ptr::write_volatile((hdr + 4) as *mut u32, 0);
            core::ptr::write_volatile((hdr + 8) as *mut u64, sector);
            core::ptr::write_volatile(status as *mut u8, 0xff);
        }
        let h = Buf { addr: hdr, len: 16, device_writes: false };
        let s = Buf { addr: status, len: 1, device_writes: true };
        let added = match data {
            Some(d) => self.queue.add_chain(&[h, d, s]),
            None => self.queue.add_chain(&[h, s]),
        };
        added?;
        self.queue.notify();
        self.queue.wait_used(REQUEST_TICKS)?;
        // SAFETY: as above; the device has written the status byte.
        Some(unsafe { core::ptr::read_volatile(status as *const u8) })
    }
}

/// `test=blk`.
pub fn test(cmdline: &[u8]) {
    let Some(mut blk) = Blk::open(cmdline, 16, 0) else { return };
    let capacity = blk.capacity();
    Line::new().s("blk capacity=").dec(capacity).print();
    if blk.features & F_RO != 0 {
        say("blk read-only");
    }

    let Some(id_buf) = super::alloc(32, 8) else { return };
    super::zero(id_buf, 32);
    match blk.request(T_GET_ID, 0, Some(Buf { addr: id_buf, len: 20, device_writes: true })) {
        Some(S_OK) => {
            // SAFETY: 20 bytes of arena memory the device just wrote.
            let id = unsafe { core::slice::from_raw_parts(id_buf as *const u8, 20) };
            let n = id.iter().position(|&b| b == 0).unwrap_or(20);
            Line::new().s("blk id=").bytes(&id[..n]).print();
        }
        Some(st) => Line::new().s("blk id unavailable: ").s(status_name(st)).print(),
        None => return say("blk: GET_ID timed out"),
    }

    let sector = arg_u64(cmdline, b"sector", 0);
    let count = arg_u64(cmdline, b"count", 8).clamp(1, 8192);
    let seed = arg_u64(cmdline, b"seed", 1);
    let bytes = count * SECTOR;
    let (Some(wbuf), Some(rbuf)) = (super::alloc(bytes, 4096), super::alloc(bytes, 4096)) else {
        return say("blk: out of memory for the buffers");
    };
    fill_pattern(wbuf, sector * SECTOR, bytes, seed);
    super::zero(rbuf, bytes);

    // Write, chunk by chunk.
    let mut done = 0;
    while done < count {
        let n = (count - done).min(CHUNK_SECTORS);
        let data =
            Buf { addr: wbuf + done * SECTOR, len: (n * SECTOR) as u32, device_writes: false };
        match blk.request(T_OUT, sector + done, Some(data)) {
            Some(S_OK) => {}
            Some(st) => {
                Line::new()
                    .s("blk write failed at sector ")
                    .dec(sector + done)
                    .s(": status ")
                    .dec(u64::from(st))
                    .s(" (")
                    .s(status_name(st))
                    .s(")")
                    .print();
                // A read-only disk still reads.
                let data = Buf { addr: rbuf, len: SECTOR as u32, device_writes: true };
                if blk.request(T_IN, sector, Some(data)) == Some(S_OK) {
                    say("blk read ok");
                }
                return;
            }
            None => return say("blk: write timed out"),
        }
        done += n;
    }
    if blk.features & F_FLUSH != 0 {
        match blk.request(T_FLUSH, 0, None) {
            Some(S_OK) => {}
            Some(st) => Line::new().s("blk flush failed: ").s(status_name(st)).print(),
            None => return say("blk: flush timed out"),
        }
    }
    Line::new().s("blk wrote ").dec(count).s(" sectors at ").dec(sector).print();

    // Read back and compare.
    let mut done = 0;
    while done < count {
        let n = (count - done).min(CHUNK_SECTORS);
        let data =
            Buf { addr: rbuf + done * SECTOR, len: (n * SECTOR) as u32, device_writes: true };
        match blk.request(T_IN, sector + done, Some(data)) {
            Some(S_OK) => {}
            Some(st) => {
                Line::new()
                    .s("blk read failed at sector ")
                    .dec(sector + done)
                    .s(": ")
                    .s(status_name(st))
                    .print();
                return;
            }
            None => return say("blk: read timed out"),
        }
        done += n;
    }
    match first_mismatch(rbuf, sector * SECTOR, bytes, seed) {
        None => say("blk verify ok"),
        Some(off) => Line::new()
            .s("blk verify FAILED at sector ")
            .dec(off / SECTOR)
            .s(" byte ")
            .dec(off % SECTOR)
            .print(),
    }
}

pub(super) fn fill_pattern(addr: u64, disk_offset: u64, bytes: u64, seed: u64) {
    // SAFETY: `addr..addr+bytes` is arena memory from `alloc`, 8-byte aligned.
    let words = unsafe { core::slice::from_raw_parts_mut(addr as *mut u64, (bytes / 8) as usize) };
    for (i, w) in words.iter_mut().enumerate() {
        *w = pattern_word(seed, disk_offset + 8 * i as u64);
    }
}

/// The disk offset of the first word that differs from the pattern.
pub(super) fn first_mismatch(addr: u64, disk_offset: u64, bytes: u64, seed: u64) -> Option<u64> {
    // SAFETY: as in `fill_pattern`; the device has finished writing it.
    let words = unsafe { core::slice::from_raw_parts(addr as *const u64, (bytes / 8) as usize) };
    words
        .iter()
        .enumerate()
        .find(|(i, &w)| w != pattern_word(seed, disk_offset + 8 * *i as u64))
        .map(|(i, _)| disk_offset + 8 * i as u64)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    SeqRead,
    SeqWrite,
    RandRead,
}

/// `test=blk-bench`.
pub fn bench(cmdline: &[u8]) {
    let mode = match arg(cmdline, b"mode") {
        Some(b"seqread") | None => Mode::SeqRead,
        Some(b"seqwrite") => Mode::SeqWrite,
        Some(b"randread") => Mode::RandRead,
        Some(other) => {
            Line::new().s("blk-bench: unknown mode ").bytes(other).print();
            return;
        }
    };
    let bs = arg_u64(cmdline, b"bs", 4096);
    if bs == 0 || !bs.is_multiple_of(SECTOR) || bs > 4 << 20 {
        return say("blk-bench: bs must be a multiple of 512, at most 4 MiB");
    }
    let count = arg_u64(cmdline, b"count", 1000);
    // EVENT_IDX (unless `event_idx=0`): the loop kicks only a device that went idle.
    let extra = if arg_u64(cmdline, b"event_idx", 1) != 0 { F_EVENT_IDX } else { 0 };
    let Some(mut blk) = Blk::open(cmdline, 128, extra) else { return };
    if blk.features & F_EVENT_IDX != 0 {
        blk.queue.use_event_idx();
    }
    let capacity = blk.capacity();
    let bs_sectors = bs / SECTOR;
    let blocks = capacity / bs_sectors;
    if blocks == 0 {
        return say("blk-bench: disk smaller than one block");
    }
    if mode == Mode::SeqWrite && blk.features & F_RO != 0 {
        return say("blk-bench: disk is read-only");
    }
    let max_slots = u64::from(blk.queue.size() / 3);
    let default_depth = ((16 << 20) / bs).clamp(1, 32);
    let slots = arg_u64(cmdline, b"depth", default_depth).clamp(1, max_slots).min(count.max(1));
    let s = slots as u16;
    let (Some(hdrs), Some(stats), Some(bufs)) =
        (super::alloc(16 * slots, 64), super::alloc(slots, 64), super::alloc(bs * slots, 4096))
    else {
        return say("blk-bench: out of memory for the buffers (give the guest 64 MiB)");
    };
    let ty = if mode == Mode::SeqWrite { T_OUT } else { T_IN };
    let data_flags = if mode == Mode::SeqWrite { DESC_F_NEXT } else { DESC_F_NEXT | DESC_F_WRITE };
    // Slot k: descriptors k (header), k+s (data), k+2s (status); its head is k.
    for k in 0..s {
        let hdr = hdrs + 16 * u64::from(k);
        // SAFETY: arena memory of this benchmark.
        unsafe {
            core::ptr::write_volatile(hdr as *mut u32, ty);
            core::ptr::write_volatile((hdr + 4) as *mut u32, 0);
        }
        blk.queue.write_desc(k, hdr, 16, DESC_F_NEXT, k + s);
        blk.queue.write_desc(k + s, bufs + bs * u64::from(k), bs as u32, data_flags, k + 2 * s);
        blk.queue.write_desc(k + 2 * s, stats + u64::from(k), 1, DESC_F_WRITE, 0);
    }
    Line::new()
        .s("blk-bench start mode=")
        .bytes(arg(cmdline, b"mode").unwrap_or(b"seqread"))
        .s(" bs=")
        .dec(bs)
        .s(" count=")
        .dec(count)
        .s(" depth=")
        .dec(slots)
        .print();
    // The loop runs at CPL3 unless `cpl3=0` (native on PVM hosts, where CPL0 is emulated).
    let cpl3 = arg_u64(cmdline, b"cpl3", 1) != 0;

    let ctx = LoopCtx {
        queue: &mut blk.queue,
        hdrs,
        stats,
        slots: s,
        random: mode == Mode::RandRead,
        bs_sectors,
        blocks,
        // A power-of-two block count picks random blocks with a mask instead of a division.
        mask: if blocks.is_power_of_two() { blocks - 1 } else { 0 },
        rng: arg_u64(cmdline, b"seed", 0x2545_f491_4f6c_dd1d) | 1,
        next_block: 0,
        count,
        completed: 0,
        errors: 0,
        ticks: 0,
        timed_out: false,
    };
    let mut ctx = ctx;
    let ran_at_cpl3 = cpl3 && super::ring3::run_at_cpl3(loop_at_cpl3, &raw mut ctx as u64);
    if !ran_at_cpl3 {
        run_loop(&mut ctx);
    }
    if ctx.timed_out {
        Line::new().s("blk-bench: timed out after ").dec(ctx.completed).s(" requests").print();
        return;
    }
    Line::new().s("blk-bench done ").dec(ctx.completed).print();
    Line::new()
        .s("blk-bench errors=")
        .dec(ctx.errors)
        .s(" tsc=")
        .dec(ctx.ticks)
        .s(if ran_at_cpl3 { " cpl=3" } else { " cpl=0" })
        .print();
}

/// What the request loop works on; it runs at CPL0 or CPL3, so it only touches memory and
/// device registers (no port I/O, no printing).
struct LoopCtx<'a> {
    queue: &'a mut Virtqueue,
    hdrs: u64,
    stats: u64,
    slots: u16,
    random: bool,
    bs_sectors: u64,
    blocks: u64,
    mask: u64,
    rng: u64,
    next_block: u64,
    count: u64,
    completed: u64,
    errors: u64,
    ticks: u64,
    timed_out: bool,
}

impl LoopCtx<'_> {
    /// Points slot `k` at the next block to transfer and queues it.
    #[inline(always)]
    fn issue(&mut self, k: u16) {
        let block = if self.random {
            let mut x = self.rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.rng = x;
            if self.mask != 0 {
                x & self.mask
            } else {
                x % self.blocks
            }
        } else {
            let b = self.next_block;
            self.next_block = if b + 1 >= self.blocks { 0 } else { b + 1 };
            b
        };
        // SAFETY: slot k's header and status byte, arena memory of this benchmark.
        unsafe {
            core::ptr::write_volatile(
                (self.hdrs + 16 * u64::from(k) + 8) as *mut u64,
                block * self.bs_sectors,
            );
            core::ptr::write_volatile((self.stats + u64::from(k)) as *mut u8, 0xff);
        }
        self.queue.push_avail(k);
    }
}

extern "C" fn loop_at_cpl3(ctx: u64) -> ! {
    // SAFETY: `bench` passes a pointer to its LoopCtx, alive until run_at_cpl3 returns.
    run_loop(unsafe { &mut *(ctx as *mut LoopCtx<'_>) });
    super::ring3::finish()
}

/// Issues `count` requests, `slots` in flight, and waits for them all.
fn run_loop(c: &mut LoopCtx<'_>) {
    let start = rdtsc();
    let mut issued = 0u64;
    for k in 0..c.slots {
        c.issue(k);
        issued += 1;
    }
    c.queue.kick();
    let mut spins = 0u32;
    let mut last_progress = start;
    let mut seen = 0u64;
    while c.completed < c.count {
        let mut refilled = false;
        while let Some(used) = c.queue.pop_used_fixed() {
            c.completed += 1;
            let k = used.id;
            if k >= c.slots {
                c.errors += 1;
                continue;
            }
            // SAFETY: slot k's status byte, written by the device.
            if unsafe { core::ptr::read_volatile((c.stats + u64::from(k)) as *const u8) } != S_OK {
                c.errors += 1;
            }
            if issued < c.count {
                c.issue(k);
                issued += 1;
                refilled = true;
            }
        }
        if refilled {
            c.queue.kick();
            spins = 0;
            continue;
        }
        spins += 1;
        if spins & 0xffff == 0 {
            // Nothing came back for a while: re-notify (a lost kick), give up after a minute.
            let now = rdtsc();
            if c.completed != seen {
                seen = c.completed;
                last_progress = now;
            } else if now.wrapping_sub(last_progress) > REQUEST_TICKS {
                c.timed_out = true;
                break;
            }
            c.queue.notify();
        }
    }
    c.ticks = rdtsc().wrapping_sub(start);
}
