//! The io_uring engine as an asynchronous engine: many requests in flight on one ring,
//! completions matched to their requests by tag whatever order they arrive in, an error
//! reported for the request that failed and no other; and the queue handler submitting a
//! whole batch of guest requests without waiting, then completing them when the ring's
//! completion eventfd fires.

mod blk_common;

use blk_common::*;
use hv_storage::block::raw_uring::{uring_available, RING_ENTRIES};
use hv_storage::block::{
    AsyncBlock, BlockBackend, BlockError, DiskOptions, Engine, GuestSlice, RawUringDisk,
};
use hv_storage::virtio_blk::{BlockConfig, BlockQueueHandler};
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const MIB: usize = 1 << 20;

fn slice(mem: &hv_mem::GuestMemory, addr: u64, len: usize) -> GuestSlice<'_> {
    mem.get_slice(GuestAddress(addr), len).unwrap()
}

fn uring(path: &std::path::Path) -> RawUringDisk {
    RawUringDisk::open(path, false, false).unwrap()
}

#[test]
fn a_full_ring_of_reads_and_writes_completes_each_by_its_tag() {
    hv_test_support::require!(uring_available().is_ok(), "io_uring is not available");
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", 4 * MIB, 21);
    let mut disk = uring(&path);
    let ram = ram();
    let mem = ram.memory();
    let n = RING_ENTRIES as u64;
    let new_data = pattern(4096, 99);
    // Tags far from slot positions, in descending order: matching must go by tag.
    for i in 0..n {
        let buf = [slice(mem, 0x10_0000 + i * 4096, 4096)];
        let write = i % 4 == 3;
        if write {
            mem.write_slice(&new_data, GuestAddress(0x10_0000 + i * 4096)).unwrap();
        }
        // SAFETY: the guest RAM outlives the completions reaped below.
        let queued = unsafe { disk.queue(1000 - i, i * 8192, &buf, write) }.unwrap();
        assert!(queued);
    }
    assert_eq!(disk.in_flight(), n as usize);
    assert_eq!(disk.capacity(), 0, "the ring is full");
    let mut done = Vec::new();
    disk.submit_and_complete(&mut done).unwrap();
    let mut tags: Vec<u64> = done.iter().map(|d| d.0).collect();
    tags.sort_unstable();
    assert_eq!(tags, (1000 - n + 1..=1000).collect::<Vec<_>>(), "each tag exactly once");
    assert!(done.iter().all(|d| d.1.is_ok()));
    assert_eq!(disk.in_flight(), 0);
    let file = std::fs::read(&path).unwrap();
    let orig = pattern(4 * MIB, 21);
    for i in 0..n as usize {
        let at = i * 8192;
        if i % 4 == 3 {
            assert_eq!(file[at..at + 4096], new_data[..], "write {i}");
        } else {
            let mut got = vec![0u8; 4096];
            mem.read_slice(&mut got, GuestAddress(0x10_0000 + i as u64 * 4096)).unwrap();
            assert_eq!(got, orig[at..at + 4096], "read {i}");
        }
    }
    assert_eq!(disk.stray_completions(), 0);
}

#[test]
fn a_request_split_over_several_submissions_completes_after_later_ones() {
    hv_test_support::require!(uring_available().is_ok(), "io_uring is not available");
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", 4 * MIB, 22);
    let mut disk = uring(&path);
    let ram = ram();
    let mem = ram.memory();
    // 1500 buffers of 512 bytes: more iovecs than one submission takes (1024), so the kernel
    // finishes it in two rounds, after the small read queued behind it.
    let big: Vec<GuestSlice<'_>> =
        (0..1500u64).map(|i| slice(mem, 0x10_0000 + i * 1024, 512)).collect();
    let small = [slice(mem, 0x80_0000, 4096)];
    // SAFETY: the guest RAM outlives the completions reaped below.
    unsafe {
        assert!(disk.queue(7, 0, &big, false).unwrap());
        assert!(disk.queue(3, 2 * MIB as u64, &small, false).unwrap());
    }
    let mut done = Vec::new();
    disk.submit_and_complete(&mut done).unwrap();
    let order: Vec<u64> = done.iter().map(|d| d.0).collect();
    assert_eq!(order, [3, 7], "completed out of submission order");
    let orig = pattern(4 * MIB, 22);
    for i in [0usize, 1023, 1024, 1499] {
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(0x10_0000 + i as u64 * 1024)).unwrap();
        assert_eq!(got, orig[i * 512..(i + 1) * 512], "buffer {i} of the split request");
    }
    let mut got = vec![0u8; 4096];
    mem.read_slice(&mut got, GuestAddress(0x80_0000)).unwrap();
    assert_eq!(got, orig[2 * MIB..2 * MIB + 4096]);
}

#[test]
fn an_error_is_reported_for_the_request_that_failed_and_no_other() {
    hv_test_support::require!(uring_available().is_ok(), "io_uring is not available");
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", 4 * MIB, 23);
    let mut disk = uring(&path);
    // The file shrinks under the open disk: a read past the new end finds nothing.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(MIB as u64).unwrap();
    let ram = ram();
    let mem = ram.memory();
    let offsets = [0u64, 3 * MIB as u64, 4096, 8192];
    for (i, off) in offsets.iter().enumerate() {
        let buf = [slice(mem, 0x10_0000 + i as u64 * 4096, 4096)];
        // SAFETY: the guest RAM outlives the completions reaped below.
        assert!(unsafe { disk.queue(i as u64 + 10, *off, &buf, false) }.unwrap());
    }
    let mut done = Vec::new();
    disk.submit_and_complete(&mut done).unwrap();
    assert_eq!(done.len(), 4);
    for (tag, r) in &done {
        if *tag == 11 {
            assert!(
                matches!(r, Err(BlockError::Io { op: "read", offset, .. }) if *offset == 3 * MIB as u64),
                "{r:?}"
            );
        } else {
            assert!(r.is_ok(), "tag {tag}: {r:?}");
        }
    }
    // The engine is still usable afterwards.
    let buf = [slice(mem, 0x20_0000, 512)];
    disk.read_vectored(512, &buf).unwrap();
}

#[test]
fn the_queue_handler_completes_a_batch_through_the_ring() {
    hv_test_support::require!(uring_available().is_ok(), "io_uring is not available");
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", 2 * MIB, 24);
    let opts = DiskOptions { engine: Engine::Uring, ..Default::default() };
    let disk = hv_storage::block::open_disk(&path, Default::default(), opts).unwrap();
    let config = BlockConfig { queue_size: QUEUE_SIZE, ..BlockConfig::default() };
    let mut h = BlockQueueHandler::new(disk, &config);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(MIB as u64).unwrap();
    let ram = ram();
    let mut q = TestQueue::new(ram.memory());
    // 20 reads in one pass (3 descriptors each: the 64-entry table is nearly full); the one
    // past the (shrunk) end fails alone.
    let reqs: Vec<(u64, Vec<u64>, u64)> = (0..20u64)
        .map(|i| {
            let sector = if i == 17 { 3000 } else { i * 16 };
            let (bufs, status) = q.rw(VIRTIO_BLK_T_IN, sector, &[4096], W);
            (sector, bufs, status)
        })
        .collect();
    // Submitted, not waited for: what is used now is what the ring finished already.
    let mut interrupts = u32::from(h.process_queue(&mut q.queue, ram.memory()).unwrap());
    let fd = h.completion_fd().expect("an io_uring engine has a completion eventfd");
    while q.used_idx() < 20 {
        assert!(h.in_flight() > 0, "requests lost: {} used", q.used_idx());
        assert!(wait_readable(fd), "no completion came for {} requests", h.in_flight());
        interrupts += u32::from(h.process_completions(&mut q.queue, ram.memory()).unwrap());
    }
    assert!(interrupts >= 1);
    assert_eq!(h.in_flight(), 0);
    let orig = pattern(2 * MIB, 24);
    for (i, (sector, bufs, status)) in reqs.iter().enumerate() {
        if i == 17 {
            assert_eq!(q.status_at(*status), VIRTIO_BLK_S_IOERR as u8);
        } else {
            assert_eq!(q.status_at(*status), VIRTIO_BLK_S_OK as u8, "request {i}");
            let at = *sector as usize * 512;
            assert_eq!(q.read_guest(bufs[0], 4096), orig[at..at + 4096], "request {i}");
        }
    }
    let st = h.stats();
    assert_eq!((st.requests, st.io_errors, st.read_bytes), (20, 1, 19 * 4096));
}

/// Waits (at most 10 s, a bound for a broken engine, not a timing) for `fd` to be readable.
fn wait_readable(fd: std::os::fd::RawFd) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, 10_000) == 1 }
}
