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
