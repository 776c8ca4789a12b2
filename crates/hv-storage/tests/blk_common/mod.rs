//! Shared helpers for the block and virtio-blk tests: guest memory, a split virtqueue the test
//! fills by hand (well-formed or not; [`hv_test_support::virtq::TestQueue`]) with virtio-blk
//! request builders, and disk images.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use hv_mem::{GuestMemory, GuestRam};
use hv_test_support::virtq;
#[allow(unused_imports)] // Not every test uses every flag.
pub use hv_test_support::virtq::{N, R, W};
use vm_memory::GuestAddress;

/// Guest RAM size for tests.
pub const RAM_SIZE: u64 = 64 << 20;
/// Where tests put request buffers.
pub const DATA_BASE: u64 = 0x10_0000;
/// Queue size used by the tests.
pub const QUEUE_SIZE: u16 = 64;
/// Buffers are sector-aligned, as backends doing direct I/O on guest memory want them.
const BUFFER_ALIGN: u64 = 512;

/// Guest RAM of [`RAM_SIZE`] bytes.
pub fn ram() -> GuestRam {
    virtq::ram(RAM_SIZE)
}

hv_test_support::test_queue_wrapper!(
    /// The shared test queue ([`QUEUE_SIZE`] entries, sector-aligned buffers) with virtio-blk
    /// request builders; everything else comes from [`virtq::TestQueue`] through `Deref`.
    TestQueue
);

impl<'a> TestQueue<'a> {
    /// A queue with its rings at 0 and its buffers from [`DATA_BASE`].
    pub fn new(mem: &'a GuestMemory) -> Self {
        Self::at(mem, GuestAddress(0), DATA_BASE)
    }

    /// A queue at `base`, allocating buffers from `data_base` upwards.
    pub fn at(mem: &'a GuestMemory, base: GuestAddress, data_base: u64) -> Self {
        Self(virtq::TestQueue::new(mem, QUEUE_SIZE, base.0, data_base).align_buffers(BUFFER_ALIGN))
    }

    /// Writes a request header and returns its address.
    pub fn header(&mut self, type_: u32, sector: u64) -> u64 {
        let a = self.alloc(16);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&type_.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.write_guest(a, &h);
        a
    }

    /// Allocates a status byte preset to 0xff.
    pub fn status(&mut self) -> u64 {
        let a = self.alloc(1);
        self.write_guest(a, &[0xff]);
        a
    }

    /// The status byte at `addr`.
    pub fn status_at(&self, addr: u64) -> u8 {
        self.read_guest(addr, 1)[0]
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
            self.write_guest(d + 16 * i as u64, &b);
        }
        let s = self.status();
        self.add_chain(&[(h, 16, R), (d, 16 * segs.len() as u32, R), (s, 1, W)]);
        s
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

/// True when `qemu-img` runs.
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

/// Creates a qcow2 image at `overlay` backed by `base` (an image of format `base_format`), as
/// large as the base unless `size` (a qemu-img size like `64K`) is given.
pub fn qcow2_overlay(base: &Path, base_format: &str, overlay: &Path, size: Option<&str>) {
    let (base, overlay) = (base.to_str().unwrap(), overlay.to_str().unwrap());
    let mut args = vec!["create", "-q", "-f", "qcow2", "-b", base, "-F", base_format, overlay];
    args.extend(size);
    qemu_img(&args);
}

/// A qcow2 overlay over a raw base of `len` bytes filled with `pattern(len, seed)`; returns
/// (overlay, base).
pub fn qcow2_over_raw(dir: &Path, len: usize, seed: u8) -> (PathBuf, PathBuf) {
    let base = raw_file(dir, "base.raw", len, seed);
    let overlay = dir.join("overlay.qcow2");
    qcow2_overlay(&base, "raw", &overlay, None);
    (overlay, base)
}

/// True when files in `dir` can be opened with O_DIRECT (tmpfs cannot).
pub fn direct_io_supported(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".o_direct_probe");
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
