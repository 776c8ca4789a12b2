//! Shared helpers for the block and virtio-blk tests: guest memory, a split virtqueue the test
//! fills by hand (well-formed or not), request builders, and disk images.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use hv_mem::{GuestMemory, GuestRam, MemoryConfig};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM size for tests.
pub const RAM_SIZE: u64 = 64 << 20;
/// Where tests put request buffers.
pub const DATA_BASE: u64 = 0x10_0000;
/// Queue size used by the tests.
pub const QUEUE_SIZE: u16 = 64;

/// Device-writable descriptor flag.
pub const W: u16 = VRING_DESC_F_WRITE as u16;
/// Device-readable (no flags).
pub const R: u16 = 0;

pub fn ram() -> GuestRam {
    GuestRam::new(&MemoryConfig::new(RAM_SIZE)).expect("guest RAM")
}

/// A split queue the tests fill by hand: descriptor table at `base`, avail ring at
/// `base + 0x1000`, used ring at `base + 0x2000`. (virtio-queue's `MockSplitQueue` places the
/// used ring 64 bytes after the avail ring start for a 64-entry queue, so more than ~30 avail
/// entries overwrite used entries: it is not used here.)
pub struct TestQueue<'a> {
    pub mem: &'a GuestMemory,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    next_desc: u16,
    avail: u16,
    next_addr: u64,
    pub queue: Queue,
}

impl<'a> TestQueue<'a> {
    pub fn new(mem: &'a GuestMemory) -> Self {
        Self::at(mem, GuestAddress(0), DATA_BASE)
    }

    /// A queue at `base`, allocating buffers from `data_base` upwards.
    pub fn at(mem: &'a GuestMemory, base: GuestAddress, data_base: u64) -> Self {
        let (desc_table, avail_ring, used_ring) = (base.0, base.0 + 0x1000, base.0 + 0x2000);
        mem.write_slice(&[0u8; 0x3000], base).expect("clear queue memory");
        let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
        queue.set_size(QUEUE_SIZE);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(desc_table);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(avail_ring);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(used_ring);
        queue.set_used_ring_address(lo, hi);
        queue.set_ready(true);
        assert!(queue.is_valid(mem), "test queue layout");
        Self {
            mem,
            desc_table,
            avail_ring,
            used_ring,
            next_desc: 0,
            avail: 0,
            next_addr: data_base,
            queue,
        }
    }

    /// Allocates `len` bytes of guest memory for a buffer (512-aligned).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next_addr;
        self.next_addr += len.div_ceil(512).max(1) * 512;
        a
    }

    /// Writes raw descriptors at table indices starting at the next free one (no NEXT flags
    /// added; `next` fields below the queue size are relative to that start); makes `head`
    /// (relative) available.
    pub fn add_raw(&mut self, descs: &[(u64, u32, u16, u16)], head: u16) {
        let base = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let idx = (base + i as u16) % QUEUE_SIZE;
            // `next` values at or past the queue size are kept as they are (broken links).
            let next = if next >= QUEUE_SIZE { next } else { (next + base) % QUEUE_SIZE };
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            let at = GuestAddress(self.desc_table + 16 * u64::from(idx));
            self.mem.write_obj(d, at).expect("store desc");
        }
        self.next_desc = (base + descs.len() as u16) % QUEUE_SIZE;
        self.push_avail((base + head) % QUEUE_SIZE);
    }

    /// Makes a table index available without touching the table.
    pub fn push_avail(&mut self, head: u16) {
        let slot = u64::from(self.avail % QUEUE_SIZE);
        let at = GuestAddress(self.avail_ring + 4 + 2 * slot);
        self.mem.write_obj(head.to_le(), at).expect("avail slot");
        self.avail = self.avail.wrapping_add(1);
        self.mem.write_obj(self.avail.to_le(), GuestAddress(self.avail_ring + 2)).expect("idx");
    }

    /// Adds a well-linked chain of `(addr, len, flags)`; returns its head index.
    pub fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        let n = descs.len();
        let raw: Vec<_> = descs
            .iter()
            .enumerate()
            .map(|(i, &(a, l, f))| {
                if i + 1 < n {
                    (a, l, f | VRING_DESC_F_NEXT as u16, i as u16 + 1)
                } else {
                    (a, l, f & !(VRING_DESC_F_NEXT as u16), 0)
                }
            })
            .collect();
        self.add_raw(&raw, 0);
        head
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(self.used_ring + 2)).expect("used idx"))
    }

    /// Used element `i`: (descriptor head, length).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let at = self.used_ring + 4 + 8 * u64::from(i % QUEUE_SIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
        (u32::from_le(id), u32::from_le(len))
    }

    /// Sets the avail ring flags (e.g. VRING_AVAIL_F_NO_INTERRUPT).
    pub fn set_avail_flags(&self, flags: u16) {
        self.mem.write_obj(flags.to_le(), GuestAddress(self.avail_ring)).expect("avail flags");
    }

    /// Sets `used_event` (EVENT_IDX), the field after the avail ring's entries.
    pub fn set_used_event(&self, v: u16) {
        let addr = self.avail_ring + 4 + 2 * u64::from(QUEUE_SIZE);
        self.mem.write_obj(v.to_le(), GuestAddress(addr)).expect("used_event");
    }

    /// Writes a request header and returns its address.
    pub fn header(&mut self, type_: u32, sector: u64) -> u64 {
        let a = self.alloc(16);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&type_.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(a)).expect("header");
        a
    }

    /// Allocates a status byte preset to 0xff.
    pub fn status(&mut self) -> u64 {
        let a = self.alloc(1);
        self.mem.write_obj(0xffu8, GuestAddress(a)).expect("status");
        a
    }

    pub fn status_at(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).expect("status")
    }

    /// Adds a read or write of `bufs` (buffer lengths) at `sector`; returns (buffer
    /// addresses, status address).
    pub fn rw(&mut self, type_: u32, sector: u64, bufs: &[u32], write_dir: u16) -> (Vec<u64>, u64) {
        let h = self.header(type_, sector);
        let addrs: Vec<u64> = bufs.iter().map(|&l| self.alloc(u64::from(l))).collect();
        let s = self.status();
        let mut chain = vec![(h, 16, R)];
        chain.extend(addrs.iter().zip(bufs).map(|(&a, &l)| (a, l, write_dir)));
        chain.push((s, 1, W));
        self.add_chain(&chain);
        (addrs, s)
    }

    /// Adds a discard or write-zeroes request with `(sector, num_sectors, flags)` segments.
    pub fn segments(&mut self, type_: u32, segs: &[(u64, u32, u32)]) -> u64 {
        let h = self.header(type_, 0);
        let d = self.alloc(16 * segs.len() as u64);
        for (i, &(sector, n, flags)) in segs.iter().enumerate() {
            let mut b = [0u8; 16];
            b[0..8].copy_from_slice(&sector.to_le_bytes());
            b[8..12].copy_from_slice(&n.to_le_bytes());
            b[12..16].copy_from_slice(&flags.to_le_bytes());
            self.mem.write_slice(&b, GuestAddress(d + 16 * i as u64)).expect("segment");
        }
        let s = self.status();
        self.add_chain(&[(h, 16, R), (d, 16 * segs.len() as u32, R), (s, 1, W)]);
        s
    }

    pub fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).expect("read guest");
        v
    }

    pub fn write_guest(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).expect("write guest");
    }
}

/// A deterministic byte pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

/// A raw file of `len` bytes filled with `pattern(len, seed)`.
pub fn raw_file(dir: &Path, name: &str, len: usize, seed: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pattern(len, seed)).expect("write raw file");
    p
}

pub fn have_qemu_img() -> bool {
    Command::new("qemu-img").arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// Runs qemu-img with `args`, panicking with its output when it fails.
pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().expect("run qemu-img");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "qemu-img {args:?} failed: {text}");
    text
}

/// `qemu-img check` passes on `path`.
pub fn qemu_img_check(path: &Path) {
    qemu_img(&["check", path.to_str().expect("utf-8 path")]);
}

/// The guest-visible contents of an image, through `qemu-img convert -O raw`.
pub fn qemu_img_contents(path: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("converted.raw");
    qemu_img(&["convert", "-O", "raw", path.to_str().unwrap(), out.to_str().unwrap()]);
    let v = std::fs::read(&out).expect("read converted");
    std::fs::remove_file(out).ok();
    v
}

/// A qcow2 overlay over a raw base of `len` bytes filled with `pattern(len, seed)`; returns
/// (overlay, base).
pub fn qcow2_over_raw(dir: &Path, len: usize, seed: u8) -> (PathBuf, PathBuf) {
    let base = raw_file(dir, "base.raw", len, seed);
    let overlay = dir.join("overlay.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "raw",
        overlay.to_str().unwrap(),
    ]);
    (overlay, base)
}
