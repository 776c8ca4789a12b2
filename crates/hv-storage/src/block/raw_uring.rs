//! The io_uring raw engine: a raw file or block device read and written through an io_uring
//! (the `io-uring` crate), straight into guest memory, many requests in flight per queue.
//!
//! Each instance (one per virtqueue, see [`BlockBackend::try_clone`]) owns its ring and a
//! table of in-flight requests indexed by tag (the SQE's `user_data`). The queue handler
//! queues every read and write it pops ([`AsyncBlock::queue`]) and submits them with one
//! `io_uring_enter`, without waiting. The ring signals an eventfd registered with it
//! (`IORING_REGISTER_EVENTFD`) for each completion; the device's worker waits on that eventfd
//! beside the queues' notifications and, when it fires, reaps the CQEs and completes each
//! request by the tag it carries, in whatever order the kernel finishes them (Cloud
//! Hypervisor's `engine_uring` is the model). Short transfers are resubmitted for the rest
//! under the same tag.
//!
//! Ownership: a request's iovec array lives in its table slot from the moment its SQE is
//! pushed until the CQE with its tag is reaped; a failed `io_uring_enter` frees nothing (the
//! kernel may hold some SQEs already). If the ring fails for good, the engine refuses further
//! work and, when dropped, leaks the arrays of requests still in flight rather than free
//! memory the kernel may still write; otherwise dropping the engine first waits for every
//! request in flight. CQEs whose tag names no in-flight request are counted and ignored,
//! never taken for another request's completion.
//!
//! Flush is an `IORING_OP_FSYNC` with `DATASYNC`; discard and write-zeroes are
//! `fallocate`/ioctl calls as in the sync engine. Opening checks that the kernel has io_uring
//! and the opcodes used; when it does not (no io_uring, `kernel.io_uring_disabled`, seccomp),
//! opening fails with [`BlockError::UringUnavailable`] and the caller can fall back to
//! [`super::Engine::Sync`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use hv_core::vmm_sys_util::eventfd::EventFd;
use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::raw_io::{advance_iovecs, iovecs, mark_dirty, RawFile};
use super::{check_range, slices_len, AsyncBlock, BlockBackend, BlockError, GuestSlice, Result};

/// Submission queue entries per ring: requests in flight per queue at most.
pub const RING_ENTRIES: u32 = 128;
/// Most iovecs in one submission (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;
/// The tag of the engine's own synchronous requests (flush, and reads and writes made
/// through [`BlockBackend`] directly).
const SYNC_TAG: u64 = u64::MAX;

/// The iovec array of a request.
#[derive(Debug)]
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the pointers describe guest memory (mapped for the VM's life, shared with every
// thread anyway) that the request reads or writes; the array is only touched by the thread
// that owns the engine, and the engine completes every request before it is handed on.
unsafe impl Send for IoVecs {}

/// One request in flight: its iovecs (owned until its CQE is reaped) and progress.
#[derive(Debug)]
struct Slot {
    tag: u64,
    op: Op,
    iovs: IoVecs,
    /// First iovec not yet transferred.
    idx: usize,
    /// Where the request starts and how long it is (for error messages).
    start: u64,
    /// Where the rest of it starts.
    offset: u64,
    len: u64,
    /// Submitted (or pushed) and not yet completed.
    in_kernel: bool,
    /// The final result once known, with its place in completion order.
    result: Option<io::Result<()>>,
    finished_at: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Fsync,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Fsync => "flush",
        }
    }
}

/// A raw disk with I/O through io_uring.
pub struct RawUringDisk {
    raw: RawFile,
    ring: IoUring,
    /// Registered with the ring: readable when CQEs were posted.
    completions: EventFd,
    /// Requests queued or in flight; the SQE's `user_data` is the slot position.
    slots: Vec<Option<Slot>>,
    /// Entries pushed to the SQ but not yet handed to the kernel.
    unsubmitted: usize,
    /// Set when `io_uring_enter` failed for good: no new work.
    broken: Option<io::ErrorKind>,
    /// CQEs that named no in-flight request.
    stray_completions: u64,
    /// Requests finished so far (orders completions).
    finished: u64,
}

impl std::fmt::Debug for RawUringDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawUringDisk")
            .field("raw", &self.raw)
            .field("in_flight", &self.in_flight())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Checks whether this host can run the io_uring engine, without opening a disk.
pub fn uring_available() -> Result<()> {
    new_ring().map(drop)
}

fn new_ring() -> Result<IoUring> {
    let ring = IoUring::new(RING_ENTRIES).map_err(|source| BlockError::UringUnavailable {
        reason: "io_uring_setup failed",
        source,
    })?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|source| BlockError::UringUnavailable {
        reason: "cannot probe io_uring opcodes",
        source,
    })?;
    for code in [opcode::Readv::CODE, opcode::Writev::CODE, opcode::Fsync::CODE] {
        if !probe.is_supported(code) {
            return Err(BlockError::UringUnavailable {
                reason: "the kernel's io_uring lacks READV/WRITEV/FSYNC",
                source: io::Error::from(io::ErrorKind::Unsupported),
            });
        }
    }
    Ok(ring)
}

impl RawUringDisk {
    /// Opens the raw file or block device at `path` with a new io_uring.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self> {
        let ring = new_ring()?;
        Self::with_ring(RawFile::open(path, read_only, direct)?, ring)
    }

    fn with_ring(raw: RawFile, ring: IoUring) -> Result<Self> {
        let completions =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| {
                BlockError::UringUnavailable {
                    reason: "cannot make the completion eventfd",
                    source,
                }
            })?;
        ring.submitter().register_eventfd(completions.as_raw_fd()).map_err(|source| {
            BlockError::UringUnavailable {
                reason: "cannot register the completion eventfd",
                source,
            }
        })?;
        let slots = (0..RING_ENTRIES).map(|_| None).collect();
        Ok(Self {
            raw,
            ring,
            completions,
            slots,
            unsubmitted: 0,
            broken: None,
            stray_completions: 0,
            finished: 0,
        })
    }

    /// Requests queued or in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Completions the kernel returned with a tag naming no request (should stay 0).
    pub fn stray_completions(&self) -> u64 {
        self.stray_completions
    }

    fn check_usable(&self) -> io::Result<()> {
        match self.broken {
            Some(kind) => Err(io::Error::new(kind, "the io_uring failed earlier")),
            None => Ok(()),
        }
    }

    /// Takes a free slot for `slot`; the position is the SQE's `user_data`.
    fn insert(&mut self, slot: Slot) -> io::Result<usize> {
        let pos = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| io::Error::other("io_uring has no free request slot"))?;
        self.slots[pos] = Some(slot);
        Ok(pos)
    }

    /// Pushes the SQE for (the rest of) slot `pos`.
    fn push(&mut self, pos: usize) -> io::Result<()> {
        let fd = types::Fd(self.raw.file.as_raw_fd());
        let Some(slot) = self.slots[pos].as_mut() else { return Ok(()) };
        let entry: squeue::Entry = match slot.op {
            Op::Fsync => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
            Op::Read | Op::Write => {
                let cnt = (slot.iovs.0.len() - slot.idx).min(IOV_MAX) as u32;
                let ptr = slot.iovs.0[slot.idx..].as_ptr();
                if slot.op == Op::Write {
                    opcode::Writev::new(fd, ptr, cnt).offset(slot.offset).build()
                } else {
                    opcode::Readv::new(fd, ptr, cnt).offset(slot.offset).build()
                }
            }
        };
        let entry = entry.user_data(pos as u64);
        // SAFETY: the entry points at `slot.iovs` (owned by the slot, which stays in
        // `self.slots` until the CQE with this user_data is reaped: see `reap`) and at guest
        // memory the caller of `queue` promised to keep valid until then.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        slot.in_kernel = true;
        self.unsubmitted += 1;
        Ok(())
    }

    /// Hands every pushed SQE to the kernel and waits for at least `want` completions.
    fn enter(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => {
                    self.unsubmitted = 0;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Completion queue full or out of kernel memory for now: reaping frees room.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(()),
                Err(e) => {
                    // The kernel may have taken some entries: nothing is freed (see the
                    // module doc), the engine just refuses further work.
                    self.broken = Some(e.kind());
                    return Err(e);
                }
            }
        }
    }

    /// Reaps every available CQE, matching each to its slot by tag; resubmits short
    /// transfers. Returns how many slots finished.
    fn reap(&mut self) -> io::Result<usize> {
        let cqes: Vec<(u64, i32)> =
            self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        let mut finished = 0;
        for (user_data, res) in cqes {
            let pos = usize::try_from(user_data).ok().filter(|&p| p < self.slots.len());
            let Some(slot) = pos.and_then(|p| self.slots[p].as_mut()).filter(|s| s.in_kernel)
            else {
                self.stray_completions += 1;
                continue;
            };
            slot.in_kernel = false;
            let pos = pos.expect("checked above");
            self.finished += 1;
            slot.finished_at = self.finished;
            if res < 0 {
                slot.result = Some(Err(io::Error::from_raw_os_error(-res)));
                finished += 1;
                continue;
            }
            let n = res as usize;
            if slot.op == Op::Fsync {
                slot.result = Some(Ok(()));
                finished += 1;
                continue;
            }
            if n == 0 {
                let kind = if slot.op == Op::Write {
                    io::ErrorKind::WriteZero
                } else {
                    io::ErrorKind::UnexpectedEof
                };
                slot.result = Some(Err(io::Error::from(kind)));
                finished += 1;
                continue;
            }
            slot.offset += n as u64;
            slot.idx = advance_iovecs(&mut slot.iovs.0, slot.idx, n);
            if slot.idx >= slot.iovs.0.len() {
                slot.result = Some(Ok(()));
                finished += 1;
            } else {
                self.push(pos)?;
            }
        }
        Ok(finished)
    }

    /// Submits and waits until every slot `which` selects has a result.
    fn run_until(&mut self, which: impl Fn(&Slot) -> bool) -> io::Result<()> {
        loop {
            let waiting = self.slots.iter().flatten().any(|s| which(s) && s.result.is_none());
            if !waiting {
                return Ok(());
            }
            self.check_usable()?;
            self.enter(1)?;
            self.reap()?;
        }
    }

    /// Takes the finished slots `which` selects out: `(tag, op, offset, len, result)`.
    fn take_finished(
        &mut self,
        which: impl Fn(&Slot) -> bool,
    ) -> Vec<(u64, Op, u64, u64, io::Result<()>)> {
        let mut done: Vec<Slot> = Vec::new();
        for s in self.slots.iter_mut() {
            if s.as_ref().is_some_and(|s| which(s) && s.result.is_some() && !s.in_kernel) {
                done.extend(s.take());
            }
        }
        done.sort_by_key(|s| s.finished_at);
        done.into_iter().filter_map(|s| Some((s.tag, s.op, s.start, s.len, s.result?))).collect()
    }

    /// Queues one request (not yet submitted).
    fn queue_slot(&mut self, tag: u64, op: Op, offset: u64, iovs: Vec<libc::iovec>) -> Result<()> {
        let len = iovs.iter().map(|v| v.iov_len as u64).sum();
        let io = |source| BlockError::Io { op: op.name(), offset, len, source };
        self.check_usable().map_err(io)?;
        let slot = Slot {
            tag,
            op,
            iovs: IoVecs(iovs),
            idx: 0,
            start: offset,
            offset,
            len,
            in_kernel: false,
            result: None,
            finished_at: 0,
        };
        let pos = self.insert(slot).map_err(io)?;
        if let Err(e) = self.push(pos) {
            self.slots[pos] = None; // never pushed: nothing in the kernel's hands
            return Err(io(e));
        }
        Ok(())
    }

    /// One request from start to finish on the calling thread.
    fn run_one(&mut self, op: Op, offset: u64, iovs: Vec<libc::iovec>) -> Result<()> {
        let len = iovs.iter().map(|v| v.iov_len as u64).sum();
        self.queue_slot(SYNC_TAG, op, offset, iovs)?;
        // Only this request is waited for: others in flight keep their results for
        // `complete` (their CQEs left the completion eventfd readable).
        let r = self.run_until(is_sync);
        let mut done = self.take_finished(is_sync);
        let io = |source| BlockError::Io { op: op.name(), offset, len, source };
        r.map_err(io)?;
        match done.pop() {
            Some(d) => d.4.map_err(io),
            None => Err(io(io::Error::other("io_uring lost the request"))),
        }
    }

    /// Moves the finished asynchronous requests to `out`.
    fn take_async(&mut self, out: &mut Vec<(u64, Result<()>)>) {
        for (tag, op, offset, len, result) in self.take_finished(|s| !is_sync(s)) {
            out.push((
                tag,
                result.map_err(|source| BlockError::Io { op: op.name(), offset, len, source }),
            ));
        }
    }
}

fn is_sync(slot: &Slot) -> bool {
    slot.tag == SYNC_TAG
}

impl Drop for RawUringDisk {
    fn drop(&mut self) {
        // The kernel must not write into memory after its owner got it back: wait for what is
        // in flight, unless the ring failed (then waiting may never end).
        if self.broken.is_none() {
            let _ = self.run_until(|_| true);
        }
        // Arrays the kernel may still read after a failed enter are leaked, never freed.
        for slot in self.slots.iter_mut().filter_map(Option::take) {
            if slot.in_kernel {
                std::mem::forget(slot.iovs);
            }
        }
    }
}

impl AsyncBlock for RawUringDisk {
    fn capacity(&self) -> usize {
        self.slots.len() - self.in_flight()
    }

    fn in_flight(&self) -> usize {
        RawUringDisk::in_flight(self)
    }

    unsafe fn queue(
        &mut self,
        tag: u64,
        offset: u64,
        bufs: &[GuestSlice<'_>],
        write: bool,
    ) -> Result<bool> {
        if tag == SYNC_TAG
            || (write && self.raw.read_only)
            || !self.raw.aligned_for_direct(offset, bufs)
        {
            return Ok(false);
        }
        check_range(offset, slices_len(bufs), self.raw.size)?;
        let (iovs, _guards) = iovecs(bufs);
        self.queue_slot(tag, if write { Op::Write } else { Op::Read }, offset, iovs)?;
        Ok(true)
    }

    fn submit(&mut self) -> Result<()> {
        let r = if self.unsubmitted > 0 {
            self.check_usable().and_then(|()| self.enter(0))
        } else {
            Ok(())
        };
        r.map_err(|source| BlockError::Io { op: "submit", offset: 0, len: 0, source })
    }

    fn completion_fd(&self) -> RawFd {
        self.completions.as_raw_fd()
    }

    fn complete(&mut self, out: &mut Vec<(u64, Result<()>)>) -> Result<()> {
        // Drained before reaping: a CQE posted after the reap makes it readable again.
        let _ = self.completions.read();
        let r = self.reap().and_then(|_| {
            // Short transfers pushed again by reap go to the kernel now.
            if self.unsubmitted > 0 {
                self.check_usable()?;
                self.enter(0)?;
            }
            Ok(())
        });
        self.take_async(out);
        r.map_err(|source| BlockError::Io { op: "complete", offset: 0, len: 0, source })
    }

    fn submit_and_complete(&mut self, out: &mut Vec<(u64, Result<()>)>) -> Result<()> {
        let r = self.run_until(|s| !is_sync(s));
        self.take_async(out);
        r.map_err(|source| BlockError::Io { op: "submit", offset: 0, len: 0, source })
    }
}

impl BlockBackend for RawUringDisk {
    fn size(&self) -> u64 {
        self.raw.size
    }

    fn read_only(&self) -> bool {
        self.raw.read_only
    }

    fn block_size(&self) -> u32 {
        self.raw.block_size()
    }

    fn read_vectored(&mut self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        if !self.raw.aligned_for_direct(offset, bufs) {
            return self.raw.read(offset, bufs);
        }
        check_range(offset, slices_len(bufs), self.raw.size)?;
        let (iovs, _guards) = iovecs(bufs);
        self.run_one(Op::Read, offset, iovs)?;
        mark_dirty(bufs);
        Ok(())
    }

    fn write_vectored(&mut self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        if self.raw.read_only || !self.raw.aligned_for_direct(offset, bufs) {
            return self.raw.write(offset, bufs);
        }
        check_range(offset, slices_len(bufs), self.raw.size)?;
        let (iovs, _guards) = iovecs(bufs);
        self.run_one(Op::Write, offset, iovs)
    }

    fn flush(&mut self) -> Result<()> {
        if self.raw.read_only {
            return Ok(());
        }
        self.run_one(Op::Fsync, 0, Vec::new())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.raw.discard(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.raw.write_zeroes(offset, len, unmap)
    }

    fn try_clone(&self) -> Result<Box<dyn BlockBackend>> {
        Ok(Box::new(Self::with_ring(self.raw.try_clone()?, new_ring()?)?))
    }

    fn as_async(&mut self) -> Option<&mut dyn AsyncBlock> {
        Some(self)
    }
}
