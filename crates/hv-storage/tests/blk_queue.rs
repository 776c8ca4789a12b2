//! The virtio-blk queue handler, driven through a split queue in guest memory: every request
//! type against real raw and qcow2 files, read-only disks, several queues, throttling,
//! notification suppression, and malformed chains.

mod blk_common;

use std::time::Duration;

use blk_common::*;
use hv_core::rate_limiter::{BucketConfig, RateLimiter};
use hv_storage::block::{open_disk, Confinement, DiskFormat, DiskOptions};
use hv_storage::virtio_blk::queue_handler::handlers_for_queues;
use hv_storage::virtio_blk::{
    config_space, device_features, BlockConfig, BlockQueueHandler, QueueHandlerError, SERIAL_LEN,
};
use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT,
};
use virtio_queue::QueueT;

const MIB: usize = 1 << 20;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

fn config() -> BlockConfig {
    BlockConfig { queue_size: QUEUE_SIZE, ..BlockConfig::default() }.with_serial("hv-serial-0001")
}

fn handler(path: &std::path::Path, read_only: bool) -> BlockQueueHandler {
    let disk =
        open_disk(path, DiskFormat::Raw, DiskOptions { read_only, ..Default::default() }).unwrap();
    BlockQueueHandler::new(disk, &config())
}

/// A handler on a qcow2 overlay whose (raw) backing file `base` is allowed.
fn qcow2_handler(overlay: &std::path::Path, base: &std::path::Path) -> BlockQueueHandler {
    let confinement = Confinement::none().allow_file(base).unwrap();
    let disk =
        open_disk(overlay, DiskFormat::Qcow2, DiskOptions { confinement, ..Default::default() })
            .unwrap();
    BlockQueueHandler::new(disk, &config())
}

/// Runs every request type through the queue and checks the bytes in `contents()`.
fn all_request_types(h: &mut BlockQueueHandler, contents: &dyn Fn() -> Vec<u8>, seed: u8) {
    let ram = ram();
    let mut q = TestQueue::new(ram.memory());
    let base = pattern(MIB, seed);

    // IN: 3 buffers, 8 KiB at sector 16.
    let (bufs, s_in) = q.rw(VIRTIO_BLK_T_IN, 16, &[512, 4096, 3584], W);
    // OUT: 2 buffers, 4 KiB at sector 100.
    let data = pattern(4096, 77);
    let (wbufs, s_out) = q.rw(VIRTIO_BLK_T_OUT, 100, &[1024, 3072], R);
    q.write_guest(wbufs[0], &data[..1024]);
    q.write_guest(wbufs[1], &data[1024..]);
    let (id, s_id) = q.rw(VIRTIO_BLK_T_GET_ID, 0, &[20], W);
    let s_wz = q.segments(
        VIRTIO_BLK_T_WRITE_ZEROES,
        &[(200, 8, 0), (300, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)],
    );
    let s_disc = q.segments(VIRTIO_BLK_T_DISCARD, &[(512, 128, 0)]);
    // The flush comes last: what qemu-img reads afterwards must be on disk.
    let (_, s_flush) = q.rw(VIRTIO_BLK_T_FLUSH, 0, &[], R);

    assert!(h.process_queue(&mut q.queue, ram.memory()).unwrap(), "interrupt expected");
    assert_eq!(q.used_idx(), 6);
    for s in [s_in, s_out, s_id, s_wz, s_disc, s_flush] {
        assert_eq!(q.status_at(s), OK, "status of request with status byte at {s:#x}");
    }
    // Used lengths: IN writes 8 KiB + status, GET_ID 20 + status, the rest the status byte.
    let lens: Vec<u32> = (0..6).map(|i| q.used(i).1).collect();
    assert_eq!(lens, [8193, 1, 21, 1, 1, 1]);

    let mut got = q.read_guest(bufs[0], 512);
    got.extend(q.read_guest(bufs[1], 4096));
    got.extend(q.read_guest(bufs[2], 3584));
    assert_eq!(got, base[16 * 512..16 * 512 + 8192]);
    assert_eq!(q.read_guest(id[0], 20), b"hv-serial-0001\0\0\0\0\0\0");

    let disk = contents();
    assert_eq!(disk[100 * 512..100 * 512 + 4096], data[..]);
    assert!(disk[200 * 512..208 * 512].iter().all(|&b| b == 0));
    assert!(disk[300 * 512..316 * 512].iter().all(|&b| b == 0));
    assert_eq!(disk[208 * 512..209 * 512], base[208 * 512..209 * 512]);

    let st = h.stats();
    assert_eq!((st.requests, st.read_bytes, st.write_bytes, st.flushes), (6, 8192, 4096, 1));
    assert_eq!((st.io_errors, st.invalid_requests, st.dropped_chains), (0, 0, 0));
}

#[test]
fn raw_disk_serves_every_request_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 11);
    let mut h = handler(&path, false);
    all_request_types(&mut h, &|| std::fs::read(&path).unwrap(), 11);
    // Discard punched a hole in the raw file.
    assert!(std::fs::read(&path).unwrap()[512 * 512..640 * 512].iter().all(|&b| b == 0));
}

#[test]
fn qcow2_disk_serves_every_request_type_and_stays_valid() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().unwrap();
    let (overlay, base) = qcow2_over_raw(dir.path(), MIB, 12);
    {
        let mut h = qcow2_handler(&overlay, &base);
        let d = dir.path().to_path_buf();
        let o = overlay.clone();
        all_request_types(&mut h, &move || qemu_img_contents(&o, &d), 12);
    }
    qemu_img_check(&overlay);
    assert_eq!(std::fs::read(&base).unwrap(), pattern(MIB, 12), "base untouched");
}

#[test]
fn read_only_disk_answers_writes_with_ioerr() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 13);
    let mut h = handler(&path, true);
    let feats = device_features(h.backend(), &config());
    assert_ne!(feats & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(feats & (1 << VIRTIO_BLK_F_DISCARD), 0);
    let ram = ram();
    let mut q = TestQueue::new(ram.memory());
    let (_, s_out) = q.rw(VIRTIO_BLK_T_OUT, 0, &[512], R);
    let s_wz = q.segments(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 0)]);
    let s_disc = q.segments(VIRTIO_BLK_T_DISCARD, &[(0, 8, 0)]);
    let (_, s_in) = q.rw(VIRTIO_BLK_T_IN, 0, &[512], W);
    let (_, s_flush) = q.rw(VIRTIO_BLK_T_FLUSH, 0, &[], R);
    h.process_queue(&mut q.queue, ram.memory()).unwrap();
    assert_eq!(
        [s_out, s_wz, s_disc, s_in, s_flush].map(|s| q.status_at(s)),
        [IOERR, IOERR, IOERR, OK, OK]
    );
    assert_eq!(std::fs::read(&path).unwrap(), pattern(MIB, 13));
}

#[test]
fn features_and_config_space() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", 3 * MIB, 0);
    let disk = open_disk(&path, DiskFormat::Raw, DiskOptions::default()).unwrap();
    let cfg = config().with_queues(4);
    let feats = device_features(disk.as_ref(), &cfg);
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_BLK_F_MQ,
        VIRTIO_RING_F_EVENT_IDX,
    ] {
        assert_ne!(feats & (1 << bit), 0, "feature bit {bit}");
    }
    assert_eq!(feats & (1 << VIRTIO_BLK_F_RO), 0);
    let space = config_space(disk.as_ref(), &cfg);
    let (cap, nq, seg_max, blk) = (space.capacity, space.num_queues, space.seg_max, space.blk_size);
    assert_eq!((cap, nq, seg_max, blk), (3 * 2048, 4, u32::from(QUEUE_SIZE) - 2, 512));
}

#[test]
fn several_queues_share_one_disk() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_file(dir.path(), "disk.raw", MIB, 14);
    let (overlay, _) = qcow2_over_raw(dir.path(), MIB, 15);
    for path in [raw, overlay] {
        let disk = open_disk(&path, DiskFormat::Raw, DiskOptions::default()).unwrap();
        let mut hs = handlers_for_queues(disk, &config().with_queues(2), None).unwrap();
        assert_eq!(hs.len(), 2);
        let ram = ram();
        let mem = ram.memory();
        let mut q0 = TestQueue::at(mem, vm_memory::GuestAddress(0), 0x10_0000);
        let mut q1 = TestQueue::at(mem, vm_memory::GuestAddress(0x8000), 0x80_0000);
        let (w, s_w) = q0.rw(VIRTIO_BLK_T_OUT, 40, &[4096], R);
        q0.write_guest(w[0], &pattern(4096, 200));
        hs[0].process_queue(&mut q0.queue, mem).unwrap();
        let (r, s_r) = q1.rw(VIRTIO_BLK_T_IN, 40, &[4096], W);
        hs[1].process_queue(&mut q1.queue, mem).unwrap();
        assert_eq!((q0.status_at(s_w), q1.status_at(s_r)), (OK, OK));
        assert_eq!(q1.read_guest(r[0], 4096), pattern(4096, 200), "{}", path.display());
    }
}

#[test]
fn throttled_requests_stay_on_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 16);
    // Two operations, then nothing for an hour.
    let rl = RateLimiter::new(None, Some(BucketConfig::new(2, Duration::from_secs(3600)))).unwrap();
    let mut h = handler(&path, false).with_rate_limiter(rl);
    let ram = ram();
    let mut q = TestQueue::new(ram.memory());
    let statuses: Vec<u64> = (0..3).map(|i| q.rw(VIRTIO_BLK_T_IN, i, &[512], W).1).collect();
    assert!(h.process_queue(&mut q.queue, ram.memory()).unwrap());
    assert_eq!(q.used_idx(), 2);
    assert_eq!(q.status_at(statuses[2]), 0xff, "third request not performed");
    let wait = h.throttled_for().expect("throttled");
    assert!(wait > Duration::from_secs(1000));
    assert_eq!(h.stats().throttled, 1);
    // Still throttled: nothing moves.
    assert!(!h.process_queue(&mut q.queue, ram.memory()).unwrap());
    assert_eq!(q.used_idx(), 2);
    // A bytes-only limiter with room for the request lets it through.
    let mut h = handler(&path, false).with_rate_limiter(
        RateLimiter::new(Some(BucketConfig::new(4096, Duration::from_secs(3600))), None).unwrap(),
    );
    h.process_queue(&mut q.queue, ram.memory()).unwrap();
    assert_eq!(q.used_idx(), 3);
    assert_eq!(q.status_at(statuses[2]), OK);
    assert!(h.throttled_for().is_none());
}

#[test]
fn notification_suppression_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 17);
    let mut h = handler(&path, false);
    let ram = ram();
    let mut q = TestQueue::new(ram.memory());
    q.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
    q.rw(VIRTIO_BLK_T_IN, 0, &[512], W);
    assert!(!h.process_queue(&mut q.queue, ram.memory()).unwrap(), "driver asked for none");
    assert_eq!(q.used_idx(), 1);
    // Nothing used: no interrupt either way.
    q.set_avail_flags(0);
    assert!(!h.process_queue(&mut q.queue, ram.memory()).unwrap());
    // EVENT_IDX: used_event = 1 asks for an interrupt when used entry 1 is written.
    q.queue.set_event_idx(true);
    q.set_used_event(1);
    q.rw(VIRTIO_BLK_T_IN, 0, &[512], W);
    assert!(h.process_queue(&mut q.queue, ram.memory()).unwrap());
    q.rw(VIRTIO_BLK_T_IN, 0, &[512], W);
    assert!(!h.process_queue(&mut q.queue, ram.memory()).unwrap(), "used_event already passed");
    assert_eq!(q.used_idx(), 3);
}

/// Malformed chains: (what, chain builder, expected status or None for dropped).
#[test]
fn malformed_chains_get_an_error_status_or_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 18);
    let mut h = handler(&path, false);
    let ram = ram();
    let mut q = TestQueue::new(ram.memory());
    let outside = 1u64 << 40;
    let sectors = (MIB / 512) as u64;
    let mut expect: Vec<(&str, u64, Option<u8>)> = Vec::new();
    let mut add = |q: &mut TestQueue, what, descs: Vec<(u64, u32, u16)>, st: u64, want| {
        q.add_chain(&descs);
        expect.push((what, st, want));
    };

    let h_in = q.header(VIRTIO_BLK_T_IN, 0);
    let (b, s) = (q.alloc(512), q.status());
    add(&mut q, "header writable", vec![(h_in, 16, W), (b, 512, W), (s, 1, W)], s, Some(IOERR));
    let s = q.status();
    add(&mut q, "short header", vec![(h_in, 8, R), (b, 512, W), (s, 1, W)], s, Some(IOERR));
    let s = q.status();
    add(
        &mut q,
        "read into readable buffer",
        vec![(h_in, 16, R), (b, 512, R), (s, 1, W)],
        s,
        Some(IOERR),
    );
    let h_out = q.header(VIRTIO_BLK_T_OUT, 0);
    let s = q.status();
    add(
        &mut q,
        "write from writable buffer",
        vec![(h_out, 16, R), (b, 512, W), (s, 1, W)],
        s,
        Some(IOERR),
    );
    let h_end = q.header(VIRTIO_BLK_T_IN, sectors);
    let s = q.status();
    add(
        &mut q,
        "sector past the end",
        vec![(h_end, 16, R), (b, 512, W), (s, 1, W)],
        s,
        Some(IOERR),
    );
    let h_wrap = q.header(VIRTIO_BLK_T_IN, u64::MAX);
    let s = q.status();
    add(&mut q, "sector overflow", vec![(h_wrap, 16, R), (b, 512, W), (s, 1, W)], s, Some(IOERR));
    let s = q.status();
    add(
        &mut q,
        "length not sector multiple",
        vec![(h_in, 16, R), (b, 500, W), (s, 1, W)],
        s,
        Some(IOERR),
    );
    let s = q.status();
    add(
        &mut q,
        "buffer outside memory",
        vec![(h_in, 16, R), (outside, 512, W), (s, 1, W)],
        s,
        Some(IOERR),
    );
    let s = q.status();
    let end = RAM_SIZE - 256;
    add(
        &mut q,
        "buffer crossing end of memory",
        vec![(h_in, 16, R), (end, 512, W), (s, 1, W)],
        s,
        Some(IOERR),
    );
    let s = q.status();
    add(
        &mut q,
        "huge length",
        vec![(h_in, 16, R), (b, u32::MAX - 64, W), (s, 1, W)],
        s,
        Some(IOERR),
    );
    let s = q.status();
    add(&mut q, "chain over 4 GiB", vec![(h_in, 16, R), (b, u32::MAX, W), (s, 1, W)], s, None);
    let s = q.status();
    add(
        &mut q,
        "header outside memory",
        vec![(outside, 16, R), (b, 512, W), (s, 1, W)],
        s,
        Some(IOERR),
    );
    let s = q.status();
    add(&mut q, "no data", vec![(h_in, 16, R), (s, 1, W)], s, Some(IOERR));
    let h_unk = q.header(0x1234, 0);
    let s = q.status();
    add(&mut q, "unknown type", vec![(h_unk, 16, R), (s, 1, W)], s, Some(UNSUPP));
    let h_scsi = q.header(VIRTIO_BLK_T_SCSI_CMD, 0);
    let s = q.status();
    add(&mut q, "scsi command", vec![(h_scsi, 16, R), (b, 512, R), (s, 1, W)], s, Some(UNSUPP));
    let s = q.status();
    add(&mut q, "status not writable", vec![(h_in, 16, R), (b, 512, W), (s, 1, R)], s, None);
    let s = q.status();
    add(&mut q, "status empty", vec![(h_in, 16, R), (b, 512, W), (s, 0, W)], s, None);
    add(
        &mut q,
        "status outside memory",
        vec![(h_in, 16, R), (b, 512, W), (outside, 1, W)],
        0,
        None,
    );
    add(&mut q, "single descriptor", vec![(h_in, 16, R)], 0, None);
    // A valid request after all that still works.
    let (good, s_good) = q.rw(VIRTIO_BLK_T_IN, 1, &[512], W);
    expect.push(("valid request afterwards", s_good, Some(OK)));

    h.process_queue(&mut q.queue, ram.memory()).unwrap();
    assert_eq!(q.used_idx() as usize, expect.len(), "every chain is returned to the guest");
    for (what, st, want) in &expect {
        if let Some(want) = want {
            assert_eq!(q.status_at(*st), *want, "{what}");
        } else if *st != 0 {
            assert_eq!(q.status_at(*st), 0xff, "{what}: status untouched");
        }
    }
    assert_eq!(q.read_guest(good[0], 512), pattern(MIB, 18)[512..1024]);
    let st = h.stats();
    assert_eq!(st.invalid_requests, 14);
    assert_eq!(st.dropped_chains, 5);
    assert_eq!(std::fs::read(&path).unwrap(), pattern(MIB, 18), "disk untouched");
}

#[test]
fn broken_links_loops_and_bad_segments() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 19);
    let mut h = handler(&path, false);
    let ram = ram();
    let mut q = TestQueue::new(ram.memory());
    let h_in = q.header(VIRTIO_BLK_T_IN, 0);
    let (b, s) = (q.alloc(512), q.status());
    // A loop: 0 -> 1 -> 0 -> ...
    q.add_raw(&[(h_in, 16, R | N, 1), (b, 512, W | N, 0)], 0);
    // A next index outside the queue.
    q.add_raw(&[(h_in, 16, R | N, 1), (b, 512, W | N, 200), (s, 1, W, 0)], 0);
    // An indirect descriptor pointing outside memory, and one with a bad table length.
    let ind = VRING_DESC_F_INDIRECT as u16;
    q.add_raw(&[(1 << 40, 48, ind, 0)], 0);
    q.add_raw(&[(b, 47, ind, 0)], 0);
    // An avail entry naming a descriptor index outside the table.
    q.push_avail(QUEUE_SIZE + 3);
    // Discard with the unmap flag, write-zeroes with an unknown flag, too many segments,
    // a segment past the end, a partial segment.
    let s1 = q.segments(VIRTIO_BLK_T_DISCARD, &[(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]);
    let s2 = q.segments(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 0x80)]);
    let many: Vec<(u64, u32, u32)> = (0..33).map(|i| (i * 8, 8, 0)).collect();
    let s3 = q.segments(VIRTIO_BLK_T_DISCARD, &many);
    let s4 = q.segments(VIRTIO_BLK_T_WRITE_ZEROES, &[(2040, 16, 0)]);
    let h_d = q.header(VIRTIO_BLK_T_DISCARD, 0);
    let (seg, s5) = (q.alloc(16), q.status());
    q.add_chain(&[(h_d, 16, R), (seg, 15, R), (s5, 1, W)]);
    let (_, s_good) = q.rw(VIRTIO_BLK_T_IN, 0, &[512], W);

    h.process_queue(&mut q.queue, ram.memory()).unwrap();
    assert_eq!(
        [s1, s2, s3, s4, s5, s_good].map(|s| q.status_at(s)),
        [UNSUPP, UNSUPP, IOERR, IOERR, IOERR, OK]
    );
    assert_eq!(q.status_at(s), 0xff, "truncated chains are not answered");
    assert!(h.stats().dropped_chains >= 4);
    assert_eq!(std::fs::read(&path).unwrap(), pattern(MIB, 19), "disk untouched");
}

#[test]
fn get_id_fills_short_and_split_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 20);
    let mut h = handler(&path, false);
    let ram = ram();
    let mut q = TestQueue::new(ram.memory());
    let (a, s1) = q.rw(VIRTIO_BLK_T_GET_ID, 0, &[8], W);
    let (b, s2) = q.rw(VIRTIO_BLK_T_GET_ID, 0, &[10, 64], W);
    h.process_queue(&mut q.queue, ram.memory()).unwrap();
    assert_eq!((q.status_at(s1), q.status_at(s2)), (OK, OK));
    assert_eq!(q.read_guest(a[0], 8), b"hv-seria");
    let mut id = q.read_guest(b[0], 10);
    id.extend(q.read_guest(b[1], SERIAL_LEN - 10));
    assert_eq!(id, b"hv-serial-0001\0\0\0\0\0\0");
    assert_eq!((q.used(0).1, q.used(1).1), (9, 21));
}

#[test]
fn backend_errors_become_ioerr() {
    // The file shrinks under the disk: reads past the new end fail in the backend.
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 21);
    let mut h = handler(&path, false);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4096).unwrap();
    let ram = ram();
    let mut q = TestQueue::new(ram.memory());
    let (_, s) = q.rw(VIRTIO_BLK_T_IN, 100, &[512], W);
    h.process_queue(&mut q.queue, ram.memory()).unwrap();
    assert_eq!(q.status_at(s), IOERR);
    assert_eq!(q.used(0).1, 1);
    assert_eq!(h.stats().io_errors, 1);
    assert!(h.last_error().unwrap().contains("read"));
}

#[test]
fn queues_of_one_device_share_its_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 22);
    let disk = open_disk(&path, DiskFormat::Raw, DiskOptions::default()).unwrap();
    // Three operations per hour for the whole device.
    let rl = RateLimiter::new(None, Some(BucketConfig::new(3, Duration::from_secs(3600)))).unwrap();
    let mut hs = handlers_for_queues(disk, &config().with_queues(2), Some(rl)).unwrap();
    let ram = ram();
    let mem = ram.memory();
    let mut q0 = TestQueue::at(mem, vm_memory::GuestAddress(0), 0x10_0000);
    let mut q1 = TestQueue::at(mem, vm_memory::GuestAddress(0x8000), 0x80_0000);
    for i in 0..2 {
        q0.rw(VIRTIO_BLK_T_IN, i, &[512], W);
        q1.rw(VIRTIO_BLK_T_IN, i, &[512], W);
    }
    hs[0].process_queue(&mut q0.queue, mem).unwrap();
    hs[1].process_queue(&mut q1.queue, mem).unwrap();
    assert_eq!((q0.used_idx(), q1.used_idx()), (2, 1));
    assert!(hs[0].throttled_for().is_none());
    assert!(hs[1].throttled_for().is_some());
}

#[test]
fn a_runaway_avail_index_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 23);
    let mut h = handler(&path, false);
    let ram = ram();
    let mem = ram.memory();
    for event_idx in [false, true] {
        let mut q = TestQueue::new(mem);
        q.queue.set_event_idx(event_idx);
        q.rw(VIRTIO_BLK_T_IN, 0, &[512], W);
        // The driver claims 1000 entries in a 64-entry ring.
        q.write_guest(0x1002, &1000u16.to_le_bytes());
        let err = h.process_queue(&mut q.queue, mem).unwrap_err();
        assert!(matches!(err, QueueHandlerError::AvailIndex { avail_idx: 1000, .. }), "{err}");
    }
}
