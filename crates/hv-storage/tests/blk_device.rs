//! The virtio-blk device behind hv-core's virtio-mmio transport, driven register by register
//! the way a driver does (no KVM): feature negotiation, queue setup, notifications served by
//! the device's worker thread, the interrupt, the config space, reset.

mod blk_common;

use std::time::{Duration, Instant};

use blk_common::*;
use hv_core::bus::BusDevice;
use hv_core::devices::IrqLine;
use hv_core::rate_limiter::{BucketConfig, RateLimiter};
use hv_core::virtio::{MmioTransport, VirtioDevice};
use hv_core::vmm_sys_util::eventfd::EventFd;
use hv_storage::block::{open_disk, DiskFormat, DiskOptions};
use hv_storage::virtio_blk::{BlockConfig, VirtioBlock};
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};

const MIB: usize = 1 << 20;

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Negotiates every offered feature and sets up queue 0 at the TestQueue layout (base 0).
fn bring_up(t: &mut MmioTransport) -> u64 {
    bring_up_queue(t, 0)
}

/// Negotiates every offered feature and sets up only queue `sel` at the TestQueue layout.
fn bring_up_queue(t: &mut MmioTransport, sel: u32) -> u64 {
    wr(t, 0x70, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    let mut features = 0u64;
    for sel in 0..2 {
        wr(t, 0x14, sel);
        features |= u64::from(rd(t, 0x10)) << (32 * sel);
    }
    for sel in 0..2 {
        wr(t, 0x24, sel);
        wr(t, 0x20, (features >> (32 * sel)) as u32);
    }
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
    wr(t, 0x70, s);
    assert_ne!(rd(t, 0x70) & VIRTIO_CONFIG_S_FEATURES_OK, 0, "features accepted");
    wr(t, 0x30, sel);
    assert_eq!(rd(t, 0x34), u32::from(QUEUE_SIZE));
    wr(t, 0x38, u32::from(QUEUE_SIZE));
    wr(t, 0x80, 0);
    wr(t, 0x90, 0x1000);
    wr(t, 0xa0, 0x2000);
    wr(t, 0x44, 1);
    features
}

fn driver_ok(t: &mut MmioTransport) {
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
    wr(t, 0x70, s | VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(t.activated(), "status {:#x}", rd(t, 0x70));
}

fn wait_used(q: &TestQueue, n: u16) {
    let start = Instant::now();
    while q.used_idx() < n {
        assert!(start.elapsed() < Duration::from_secs(10), "device did not complete {n} requests");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn transport(dev: VirtioBlock, mem: &hv_mem::GuestMemory) -> MmioTransport {
    // One per queue, non-blocking, as the worker drains the eventfd after each wake-up.
    let queues = dev.queue_max_sizes().len();
    let notify = (0..queues).map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect();
    MmioTransport::new(Box::new(dev), mem.clone(), IrqLine::disconnected().unwrap(), notify)
        .unwrap()
}

#[test]
fn a_driver_reads_and_writes_through_the_mmio_transport() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 40);
    let disk = open_disk(&path, DiskFormat::Raw, DiskOptions::default()).unwrap();
    let config = BlockConfig { queue_size: QUEUE_SIZE, ..Default::default() }.with_serial("dev");
    let ram = ram();
    let mem = ram.memory();
    let mut t = transport(VirtioBlock::new(disk, config), mem);
    assert_eq!(rd(&mut t, 8), 2, "device id: block");
    // Config space: capacity in sectors at offset 0.
    let mut cap = [0u8; 8];
    t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), (MIB / 512) as u64);

    let mut q = TestQueue::new(mem);
    bring_up(&mut t);
    // A request queued before DRIVER_OK is served at activation.
    let (early, s0) = q.rw(VIRTIO_BLK_T_IN, 2, &[1024], W);
    driver_ok(&mut t);
    wait_used(&q, 1);
    assert_eq!(q.status_at(s0), VIRTIO_BLK_S_OK as u8);
    assert_eq!(q.read_guest(early[0], 1024), pattern(MIB, 40)[1024..2048]);

    // A write, then a read of the same sectors, each with a notification.
    let data = pattern(4096, 41);
    let (w, s1) = q.rw(VIRTIO_BLK_T_OUT, 64, &[4096], R);
    q.write_guest(w[0], &data);
    wr(&mut t, 0x50, 0);
    wait_used(&q, 2);
    let (r, s2) = q.rw(VIRTIO_BLK_T_IN, 64, &[2048, 2048], W);
    wr(&mut t, 0x50, 0);
    wait_used(&q, 3);
    assert_eq!((q.status_at(s1), q.status_at(s2)), (0, 0));
    let mut got = q.read_guest(r[0], 2048);
    got.extend(q.read_guest(r[1], 2048));
    assert_eq!(got, data);
    assert_eq!(std::fs::read(&path).unwrap()[64 * 512..64 * 512 + 4096], data[..]);
    assert_ne!(rd(&mut t, 0x60) & 1, 0, "used-buffer interrupt raised");
    wr(&mut t, 0x64, 1);

    // Reset stops the device; a notification afterwards does nothing.
    wr(&mut t, 0x70, 0);
    assert!(!t.activated());
    q.rw(VIRTIO_BLK_T_IN, 0, &[512], W);
    wr(&mut t, 0x50, 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(q.used_idx(), 3);
}

#[test]
fn a_throttled_device_finishes_its_requests_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 42);
    let disk = open_disk(&path, DiskFormat::Raw, DiskOptions::default()).unwrap();
    let config = BlockConfig { queue_size: QUEUE_SIZE, ..Default::default() };
    // One operation per 20 ms.
    let rl = RateLimiter::new(None, Some(BucketConfig::new(1, Duration::from_millis(20)))).unwrap();
    let ram = ram();
    let mem = ram.memory();
    let mut t = transport(VirtioBlock::new(disk, config).with_rate_limiter(rl), mem);
    let mut q = TestQueue::new(mem);
    bring_up(&mut t);
    driver_ok(&mut t);
    let statuses: Vec<u64> = (0..4).map(|i| q.rw(VIRTIO_BLK_T_IN, i, &[512], W).1).collect();
    let start = Instant::now();
    wr(&mut t, 0x50, 0);
    // Only the timer can finish the rest: no more notifications come.
    wait_used(&q, 4);
    assert!(start.elapsed() >= Duration::from_millis(50), "the limit was applied");
    assert!(statuses.iter().all(|&s| q.status_at(s) == 0));
}

#[test]
fn a_driver_that_readies_only_some_queues_is_served_on_those() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 43);
    let disk = open_disk(&path, DiskFormat::Raw, DiskOptions::default()).unwrap();
    let config = BlockConfig { queue_size: QUEUE_SIZE, ..Default::default() }.with_queues(2);
    let ram = ram();
    let mem = ram.memory();
    let dev = VirtioBlock::new(disk, config);
    let handle = dev.handle();
    let mut t = transport(dev, mem);
    let mut q = TestQueue::new(mem);
    // Queue 0 is left not ready; only queue 1 is set up.
    bring_up_queue(&mut t, 1);
    driver_ok(&mut t);
    assert_eq!(rd(&mut t, 0x70) & 0x40, 0, "no DEVICE_NEEDS_RESET");
    assert_eq!(handle.active_queues(), [1]);
    let (r, s) = q.rw(VIRTIO_BLK_T_IN, 8, &[4096], W);
    wr(&mut t, 0x50, 1);
    wait_used(&q, 1);
    assert_eq!(q.status_at(s), VIRTIO_BLK_S_OK as u8);
    assert_eq!(q.read_guest(r[0], 4096), pattern(MIB, 43)[4096..8192]);
    // The counters reach the caller through the handle while the transport owns the device.
    let start = Instant::now();
    while handle.totals().requests < 1 {
        assert!(start.elapsed() < Duration::from_secs(10), "counters never updated");
        std::thread::sleep(Duration::from_millis(1));
    }
    let per_queue = handle.queue_stats();
    assert_eq!(per_queue.len(), 1);
    assert_eq!((per_queue[0].0, per_queue[0].1.read_bytes), (1, 4096));
    assert_eq!(handle.totals().read_bytes, 4096);
    wr(&mut t, 0x70, 0);
    assert!(handle.active_queues().is_empty(), "reset clears the active queues");
}

/// An ext4 file system in an image on a loop device, mounted for the test, that the test can
/// freeze: a write to a file on it then waits in the kernel until it is thawed, which makes a
/// request that stays in flight for as long as the test wants. Unmounted on drop.
struct FreezableFs {
    _dir: tempfile::TempDir,
    mnt: std::path::PathBuf,
}

fn run(cmd: &str, args: &[&std::ffi::OsStr]) {
    let out = std::process::Command::new(cmd).args(args).output().expect(cmd);
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl FreezableFs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
        run("mkfs.ext4", &["-q".as_ref(), "-F".as_ref(), img.as_os_str()]);
        run("mount", &["-o".as_ref(), "loop,noatime".as_ref(), img.as_os_str(), mnt.as_os_str()]);
        FreezableFs { _dir: dir, mnt }
    }

    /// Freezes the file system until the guard is dropped.
    fn freeze(&self) -> Frozen<'_> {
        run("fsfreeze", &["-f".as_ref(), self.mnt.as_os_str()]);
        Frozen(self)
    }
}

impl Drop for FreezableFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
    }
}

/// Thaws the file system when dropped (also when the test fails, before the device waits
/// for its write).
struct Frozen<'a>(&'a FreezableFs);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze").arg("-u").arg(&self.0.mnt).status();
    }
}

/// Waits (at most 10 s, a bound for a device that never signals, not a timing) for `fd`.
fn wait_readable(fd: std::os::fd::RawFd) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, 10_000) == 1 }
}

/// Waits on the interrupt alone until `n` requests are used, re-arming it as a driver with
/// EVENT_IDX does (used_event = the next used entry it will read, then a recheck); false if
/// an interrupt never comes.
fn wait_used_by_interrupt(q: &TestQueue, irq: &EventFd, n: u16) -> bool {
    use std::os::fd::AsRawFd;
    loop {
        let seen = q.used_idx();
        q.set_used_event(seen);
        if q.used_idx() != seen {
            continue;
        }
        if seen >= n {
            return true;
        }
        if !wait_readable(irq.as_raw_fd()) {
            return false;
        }
        let _ = irq.read();
    }
}

#[test]
fn io_uring_completions_reach_the_guest_by_interrupt_while_a_request_is_still_in_flight() {
    hv_test_support::require!(hv_test_support::is_root(), "root (mount, fsfreeze)");
    hv_test_support::require!(
        hv_storage::block::raw_uring::uring_available().is_ok(),
        "io_uring is not available"
    );
    hv_test_support::require!(
        std::process::Command::new("mkfs.ext4").arg("-V").output().is_ok(),
        "mkfs.ext4 (e2fsprogs)"
    );
    let fs = FreezableFs::new();
    let path = raw_file(&fs.mnt, "disk.raw", MIB, 44);
    let opts = DiskOptions { engine: hv_storage::block::Engine::Uring, ..Default::default() };
    let disk = open_disk(&path, DiskFormat::Raw, opts).unwrap();
    let config = BlockConfig { queue_size: QUEUE_SIZE, ..Default::default() };
    let ram = ram();
    let mem = ram.memory();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let notify = vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()];
    let dev = Box::new(VirtioBlock::new(disk, config));
    let mut t =
        MmioTransport::new(dev, mem.clone(), IrqLine::new(irq.try_clone().unwrap()), notify)
            .unwrap();
    let mut q = TestQueue::new(mem);
    bring_up(&mut t);
    driver_ok(&mut t);

    let frozen = fs.freeze();
    // A write, which waits in the kernel while the file system is frozen, then 20 reads (the
    // queue's 64 descriptors hold 21 requests), all made available with one notification.
    let data = pattern(4096, 45);
    let (w, write_status) = q.rw(VIRTIO_BLK_T_OUT, 0, &[4096], R);
    q.write_guest(w[0], &data);
    let reads: Vec<(u64, Vec<u64>, u64)> = (0..20u64)
        .map(|i| {
            let sector = 8 + i * 8;
            let (bufs, status) = q.rw(VIRTIO_BLK_T_IN, sector, &[4096], W);
            (sector, bufs, status)
        })
        .collect();
    wr(&mut t, 0x50, 0);
    // From here the driver only waits for interrupts: it never notifies again.
    assert!(
        wait_used_by_interrupt(&q, &irq, 20),
        "no interrupt for the reads while the write is in flight ({} used)",
        q.used_idx()
    );
    assert_eq!(q.status_at(write_status), 0xff, "the write cannot have finished yet");
    let orig = pattern(MIB, 44);
    for (sector, bufs, status) in &reads {
        assert_eq!(q.status_at(*status), VIRTIO_BLK_S_OK as u8, "read of sector {sector}");
        let at = *sector as usize * 512;
        assert_eq!(q.read_guest(bufs[0], 4096), orig[at..at + 4096], "read of sector {sector}");
    }
    drop(frozen);
    assert!(wait_used_by_interrupt(&q, &irq, 21), "no interrupt for the write after the thaw");
    assert_eq!(q.status_at(write_status), VIRTIO_BLK_S_OK as u8);
    assert_eq!(std::fs::read(&path).unwrap()[..4096], data[..]);
    wr(&mut t, 0x70, 0);
}
