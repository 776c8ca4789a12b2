//! A minimal modern (version 2) virtio-mmio driver core, polled, no interrupts:
//!
//! - [`find`]: the transports, from `virtio_mmio.device=SIZE@ADDR:IRQ` words on the command
//!   line (what hv and QEMU microvm with `acpi=off` announce), else a scan of hv's windows
//!   (0xd100_0000 + i * 0x1000) and QEMU microvm's (0xfeb0_0000 + i * 0x200);
//! - [`Transport::init`]: reset, ACKNOWLEDGE, DRIVER, feature negotiation (VERSION_1 plus what
//!   the driver asks for), FEATURES_OK checked;
//! - [`Transport::setup_queue`]: one split [`Virtqueue`] in guest memory from [`alloc`];
//! - [`Transport::driver_ok`], then [`Virtqueue::add_chain`], [`Virtqueue::notify`] and
//!   [`Virtqueue::pop_used`] (a descriptor free list), or the fixed-chain calls a tight loop
//!   uses ([`Virtqueue::write_desc`], [`Virtqueue::push_avail`], [`Virtqueue::publish`],
//!   [`Virtqueue::pop_used_fixed`]).
//!
//! Device drivers sit on top: [`blk`]. Everything runs on the BSP, at CPL0, or at CPL3 for a
//! request loop ([`ring3`]); memory is identity-mapped, so guest-physical addresses are
//! pointers. [`Virtqueue::kick`] uses EVENT_IDX when the driver negotiated it.

pub mod blk;
pub mod blk_loop;
pub mod net;
pub mod ring3;

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{compiler_fence, AtomicU64, Ordering};

use crate::io::{mmio_read32, mmio_write32};

/// `Magic` register value ("virt").
const MAGIC: u32 = 0x7472_6976;

// Register offsets (virtio 1.2, 4.2.2).
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC: u64 = 0x080;
const REG_QUEUE_DRIVER: u64 = 0x090;
const REG_QUEUE_DEVICE: u64 = 0x0a0;
const REG_CONFIG: u64 = 0x100;

// Device status bits.
const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_FAILED: u32 = 128;

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX: notifications suppressed through the rings' event fields.
pub const F_EVENT_IDX: u64 = 1 << 29;

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;
/// Avail ring flag: the driver wants no interrupts (it polls).
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Where [`alloc`] hands out memory: past the image and its stacks (which end below 3 MiB).
const ARENA_START: u64 = 4 << 20;
/// The arena's end: the guest needs at least 64 MiB of RAM for the largest benchmark buffers.
const ARENA_END: u64 = 60 << 20;

static ARENA_NEXT: AtomicU64 = AtomicU64::new(ARENA_START);

/// Hands out `size` bytes of guest RAM aligned to `align` (a power of two), never freed; `None`
/// when the arena is used up. The memory is not zeroed.
pub fn alloc(size: u64, align: u64) -> Option<u64> {
    let start = (ARENA_NEXT.load(Ordering::Relaxed) + align - 1) & !(align - 1);
    let end = start.checked_add(size)?;
    if end > ARENA_END {
        return None;
    }
    ARENA_NEXT.store(end, Ordering::Relaxed);
    Some(start)
}

/// Zeroes `len` bytes at guest-physical `addr`.
pub fn zero(addr: u64, len: u64) {
    // SAFETY: callers pass memory from `alloc` (identity-mapped RAM the guest owns, nothing
    // else refers to it as a Rust object).
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, len as usize) }
}

/// Why a device could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The transport is the legacy (version 1) one.
    Legacy(u32),
    /// The device does not offer VERSION_1.
    NoVersion1,
    /// The device refused our feature set (FEATURES_OK did not stick).
    FeaturesRefused,
    /// The queue does not exist or is already in use.
    NoQueue(u16),
    /// The arena is used up.
    NoMemory,
}

impl InitError {
    /// A short description for the serial line.
    pub fn describe(self) -> &'static str {
        match self {
            InitError::Legacy(_) => "legacy virtio-mmio transport (version 1) not supported",
            InitError::NoVersion1 => "device does not offer VIRTIO_F_VERSION_1",
            InitError::FeaturesRefused => "device refused the features (FEATURES_OK)",
            InitError::NoQueue(_) => "queue missing or already in use",
            InitError::NoMemory => "out of guest memory for the queue",
        }
    }
}

/// One virtio-mmio transport window.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// Guest-physical base of the register window.
    pub base: u64,
}

impl Transport {
    fn read(self, reg: u64) -> u32 {
        mmio_read32(self.base + reg)
    }

    fn write(self, reg: u64, value: u32) {
        mmio_write32(self.base + reg, value)
    }

    /// The device ID (1 net, 2 block, 0 none).
    pub fn device_id(self) -> u32 {
        self.read(REG_DEVICE_ID)
    }

    /// Whether a virtio-mmio transport answers at this window.
    pub fn present(self) -> bool {
        self.read(REG_MAGIC) == MAGIC
    }

    /// Resets the device and negotiates VERSION_1 plus `wanted & offered`. Returns the
    /// accepted features.
    pub fn init(self, wanted: u64) -> Result<u64, InitError> {
        let version = self.read(REG_VERSION);
        if version != 2 {
            return Err(InitError::Legacy(version));
        }
        self.write(REG_STATUS, 0);
        while self.read(REG_STATUS) != 0 {
            core::hint::spin_loop();
        }
        self.write(REG_STATUS, S_ACKNOWLEDGE);
        self.write(REG_STATUS, S_ACKNOWLEDGE | S_DRIVER);
        self.write(REG_DEVICE_FEATURES_SEL, 0);
        let lo = self.read(REG_DEVICE_FEATURES);
        self.write(REG_DEVICE_FEATURES_SEL, 1);
        let hi = self.read(REG_DEVICE_FEATURES);
        let offered = u64::from(lo) | (u64::from(hi) << 32);
        if offered & F_VERSION_1 == 0 {
            self.write(REG_STATUS, S_FAILED);
            return Err(InitError::NoVersion1);
        }
        let accepted = (wanted | F_VERSION_1) & offered;
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, accepted as u32);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, (accepted >> 32) as u32);
        let status = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK;
        self.write(REG_STATUS, status);
        if self.read(REG_STATUS) & S_FEATURES_OK == 0 {
            self.write(REG_STATUS, S_FAILED);
            return Err(InitError::FeaturesRefused);
        }
        Ok(accepted)
    }

    /// Sets up queue `index` with at most `max_size` entries (the device's maximum if smaller,
    /// rounded down to a power of two), its rings in fresh guest memory, interrupts suppressed.
    pub fn setup_queue(self, index: u16, max_size: u16) -> Result<Virtqueue, InitError> {
        self.write(REG_QUEUE_SEL, u32::from(index));
        if self.read(REG_QUEUE_READY) != 0 {
            return Err(InitError::NoQueue(index));
        }
        let device_max = self.read(REG_QUEUE_NUM_MAX).min(u32::from(u16::MAX)) as u16;
        let mut size = device_max.min(max_size);
        if size == 0 {
            return Err(InitError::NoQueue(index));
        }
        size = 1 << (15 - size.leading_zeros());
        let n = u64::from(size);
        let desc = alloc(16 * n, 4096).ok_or(InitError::NoMemory)?;
        let avail = alloc(6 + 2 * n, 4096).ok_or(InitError::NoMemory)?;
        let used = alloc(6 + 8 * n, 4096).ok_or(InitError::NoMemory)?;
        zero(desc, 16 * n);
        zero(avail, 6 + 2 * n);
        zero(used, 6 + 8 * n);
        self.write(REG_QUEUE_NUM, u32::from(size));
        for (reg, addr) in
            [(REG_QUEUE_DESC, desc), (REG_QUEUE_DRIVER, avail), (REG_QUEUE_DEVICE, used)]
        {
            self.write(reg, addr as u32);
            self.write(reg + 4, (addr >> 32) as u32);
        }
        let mut q = Virtqueue {
            size,
            desc,
            avail,
            used,
            notify_addr: self.base + REG_QUEUE_NOTIFY,
            index,
            avail_idx: 0,
            last_used: 0,
            kicked_idx: 0,
            event_idx: false,
            free_head: 0,
            num_free: size,
        };
        // SAFETY: `avail` is the ring just allocated for this queue.
        unsafe { write_volatile(avail as *mut u16, AVAIL_F_NO_INTERRUPT) };
        for i in 0..size {
            q.write_desc(i, 0, 0, 0, i.wrapping_add(1));
        }
        self.write(REG_QUEUE_READY, 1);
        Ok(q)
    }

    /// Sets DRIVER_OK: the device is live.
    pub fn driver_ok(self) {
        let status = self.read(REG_STATUS);
        self.write(REG_STATUS, status | S_DRIVER_OK);
    }

    /// Reads 32 bits of the device configuration space at `offset`.
    pub fn config32(self, offset: u64) -> u32 {
        self.read(REG_CONFIG + offset)
    }

    /// Reads 64 bits of the device configuration space at `offset` (two 32-bit reads).
    pub fn config64(self, offset: u64) -> u64 {
        u64::from(self.config32(offset)) | (u64::from(self.config32(offset + 4)) << 32)
    }
}

/// The most transports [`find`] returns.
pub const MAX_TRANSPORTS: usize = 32;

/// The transports found, in command-line order (or window order when scanning).
pub struct Found {
    /// Window bases; the first `count` are valid.
    pub bases: [u64; MAX_TRANSPORTS],
    /// How many were found.
    pub count: usize,
}

impl Found {
    fn push(&mut self, base: u64) {
        if self.count < MAX_TRANSPORTS && !self.bases[..self.count].contains(&base) {
            self.bases[self.count] = base;
            self.count += 1;
        }
    }

    /// The `n`-th present transport whose device ID is `device_id`.
    pub fn nth_of_type(&self, device_id: u32, n: usize) -> Option<Transport> {
        self.bases[..self.count]
            .iter()
            .map(|&base| Transport { base })
            .filter(|t| t.present() && t.device_id() == device_id)
            .nth(n)
    }
}

/// Finds the virtio-mmio transports: from the command line's `virtio_mmio.device=` words, or,
/// when it has none, by scanning hv's and QEMU microvm's windows for the magic value.
pub fn find(cmdline: &[u8]) -> Found {
    let mut found = Found { bases: [0; MAX_TRANSPORTS], count: 0 };
    for word in words(cmdline) {
        if let Some(spec) = word.strip_prefix(b"virtio_mmio.device=") {
            if let Some(base) = parse_mmio_spec(spec) {
                found.push(base);
            }
        }
    }
    if found.count > 0 {
        return found;
    }
    // hv: 0xd100_0000 + i * 4 KiB; QEMU microvm: 0xfeb0_0000 + i * 512 (24 transports).
    for (first, step, n) in [(0xd100_0000u64, 0x1000u64, 16u64), (0xfeb0_0000, 0x200, 24)] {
        for i in 0..n {
            let t = Transport { base: first + i * step };
            if t.present() {
                found.push(t.base);
            }
        }
    }
    found
}

/// `SIZE@BASE:IRQ` (SIZE with an optional K/M suffix, BASE in hex or decimal): the base.
fn parse_mmio_spec(spec: &[u8]) -> Option<u64> {
    let at = spec.iter().position(|&b| b == b'@')?;
    let rest = &spec[at + 1..];
    let end = rest.iter().position(|&b| b == b':').unwrap_or(rest.len());
    parse_number(&rest[..end])
}

/// The whitespace-separated words of a command line.
pub fn words(cmdline: &[u8]) -> impl Iterator<Item = &[u8]> {
    cmdline.split(|&b| b == b' ' || b == b'\t' || b == b'\n').filter(|w| !w.is_empty())
}

/// The value of the last `key=value` word for `key`.
pub fn arg<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    words(cmdline)
        .filter_map(|w| {
            let rest = w.strip_prefix(key)?;
            rest.strip_prefix(b"=")
        })
        .last()
}

/// `key=N` as a number (decimal or 0x hex), or `default` when absent or malformed.
pub fn arg_u64(cmdline: &[u8], key: &[u8], default: u64) -> u64 {
    arg(cmdline, key).and_then(parse_number).unwrap_or(default)
}

/// A decimal or `0x` hexadecimal number.
pub fn parse_number(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix(b"0x").or_else(|| s.strip_prefix(b"0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v = 0u64;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' if radix == 16 => b - b'a' + 10,
            b'A'..=b'F' if radix == 16 => b - b'A' + 10,
            _ => return None,
        };
        v = v.checked_mul(radix)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes it (else it reads it).
    pub device_writes: bool,
}

/// A used-ring element: the chain's head and the bytes the device wrote.
#[derive(Debug, Clone, Copy)]
pub struct Used {
    /// Head descriptor index of the chain.
    pub id: u16,
    /// Bytes written into the chain's device-writable buffers (block requests do not rely
    /// on it, as the spec advises; a receive queue does).
    #[allow(dead_code)]
    pub len: u32,
}

/// A split virtqueue the driver owns. Use either the free-list calls ([`Self::add_chain`],
/// [`Self::pop_used`]) or the fixed-chain calls on one queue, not both.
pub struct Virtqueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify_addr: u64,
    index: u16,
    /// The driver's next avail index (published by [`Self::publish`]).
    avail_idx: u16,
    /// The next used index to read.
    last_used: u16,
    /// The avail index at the last [`Self::kick`].
    kicked_idx: u16,
    /// EVENT_IDX was negotiated: [`Self::kick`] notifies only when the device asked for it.
    event_idx: bool,
    free_head: u16,
    num_free: u16,
}

impl Virtqueue {
    /// Entries in the queue.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Writes descriptor `i`.
    #[inline(always)]
    pub fn write_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * u64::from(i & (self.size - 1));
        // SAFETY: `i` is masked to the table's size; the table is this queue's memory from
        // `alloc`.
        unsafe {
            write_volatile(d as *mut u64, addr);
            write_volatile((d + 8) as *mut u32, len);
            write_volatile((d + 12) as *mut u16, flags);
            write_volatile((d + 14) as *mut u16, next);
        }
    }

    fn desc_flags_next(&self, i: u16) -> (u16, u16) {
        let d = self.desc + 16 * u64::from(i & (self.size - 1));
        // SAFETY: inside this queue's descriptor table.
        unsafe { (read_volatile((d + 12) as *const u16), read_volatile((d + 14) as *const u16)) }
    }

    /// Puts the chain starting at `head` in the avail ring (not yet visible: [`Self::publish`]).
    #[inline(always)]
    pub fn push_avail(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx & (self.size - 1));
        // SAFETY: inside this queue's avail ring.
        unsafe { write_volatile(slot as *mut u16, head) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Makes the pushed chains visible to the device (writes the avail index).
    #[inline(always)]
    pub fn publish(&mut self) {
        // Ring entries before the index (x86 keeps stores in order; keep the compiler too).
        compiler_fence(Ordering::Release);
        // SAFETY: the avail ring's index field.
        unsafe { write_volatile((self.avail + 2) as *mut u16, self.avail_idx) };
    }

    /// Uses EVENT_IDX notification suppression in [`Self::kick`] (only if negotiated). The
    /// driver's `used_event` stays 0, so a device interrupts at most once per 65536 buffers.
    pub fn use_event_idx(&mut self) {
        self.event_idx = true;
    }

    /// Publishes the pushed chains and notifies the device unless EVENT_IDX says it is still
    /// working through the ring and will see them anyway (which saves a VM exit).
    #[inline(always)]
    pub fn kick(&mut self) {
        self.publish();
        let old = self.kicked_idx;
        let new = self.avail_idx;
        self.kicked_idx = new;
        if self.event_idx {
            // The index store must be visible before the avail_event load (store-load order
            // needs a full barrier on x86): else a device going idle could miss our chains.
            core::sync::atomic::fence(Ordering::SeqCst);
            // SAFETY: avail_event sits after the used ring's entries, inside its allocation.
            let event =
                unsafe { read_volatile((self.used + 4 + 8 * u64::from(self.size)) as *const u16) };
            // vring_need_event: notify if `event` lies in [old, new).
            if new.wrapping_sub(event).wrapping_sub(1) >= new.wrapping_sub(old) {
                return;
            }
        }
        self.notify();
    }

    /// Tells the device there is new work in this queue (one MMIO write: a VM exit).
    #[inline(always)]
    pub fn notify(&self) {
        mmio_write32(self.notify_addr, u32::from(self.index));
    }

    /// The next used element, if the device has returned one (fixed chains: nothing freed).
    #[inline(always)]
    pub fn pop_used_fixed(&mut self) -> Option<Used> {
        // SAFETY: the used ring's index field and entries, inside this queue's memory.
        unsafe {
            let idx = read_volatile((self.used + 2) as *const u16);
            if idx == self.last_used {
                return None;
            }
            compiler_fence(Ordering::Acquire);
            let e = self.used + 4 + 8 * u64::from(self.last_used & (self.size - 1));
            let id = read_volatile(e as *const u32) as u16;
            let len = read_volatile((e + 4) as *const u32);
            self.last_used = self.last_used.wrapping_add(1);
            Some(Used { id, len })
        }
    }

    /// Adds a chain of `bufs` from the free list and publishes it; `None` when there are not
    /// enough free descriptors. Returns the head index.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> Option<u16> {
        let n = u16::try_from(bufs.len()).ok()?;
        if n == 0 || n > self.num_free {
            return None;
        }
        let head = self.free_head;
        let mut i = head;
        for (k, b) in bufs.iter().enumerate() {
            let (_, next_free) = self.desc_flags_next(i);
            let last = k + 1 == bufs.len();
            let mut flags = if b.device_writes { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(i, b.addr, b.len, flags, if last { 0 } else { next_free });
            if last {
                self.free_head = next_free;
            }
            i = next_free;
        }
        self.num_free -= n;
        self.push_avail(head);
        self.publish();
        Some(head)
    }

    /// The next used element, its chain returned to the free list.
    pub fn pop_used(&mut self) -> Option<Used> {
        let used = self.pop_used_fixed()?;
        // Walk the chain to its tail, then splice it onto the free list.
        let mut tail = used.id;
        let mut n = 1;
        loop {
            let (flags, next) = self.desc_flags_next(tail);
            if flags & DESC_F_NEXT == 0 || n >= self.size {
                break;
            }
            tail = next;
            n += 1;
        }
        self.write_desc(tail, 0, 0, 0, self.free_head);
        self.free_head = used.id;
        self.num_free += n;
        Some(used)
    }

    /// Polls for the next used element (free-list mode) for up to `ticks` TSC ticks, notifying
    /// the device again now and then in case a notification was lost.
    pub fn wait_used(&mut self, ticks: u64) -> Option<Used> {
        let start = crate::io::rdtsc();
        let mut spins = 0u32;
        loop {
            if let Some(u) = self.pop_used() {
                return Some(u);
            }
            spins += 1;
            if spins & 0xffff == 0 {
                if crate::io::rdtsc().wrapping_sub(start) > ticks {
                    return None;
                }
                self.notify();
            }
            core::hint::spin_loop();
        }
    }
}
