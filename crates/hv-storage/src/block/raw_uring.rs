//! The io_uring raw engine: a raw file or block device read and written through an io_uring
//! (the `io-uring` crate), straight into guest memory.
//!
//! Each instance (one per virtqueue, see [`BlockBackend::try_clone`]) owns its ring. A request
//! is submitted and reaped before the call returns, so the guest-memory borrows stay simple;
//! short transfers are resubmitted for the rest. Flush is an `IORING_OP_FSYNC` with
//! `DATASYNC`; discard and write-zeroes are `fallocate`/ioctl calls as in the sync engine.
//!
//! Opening checks that the kernel has io_uring and the opcodes used; when it does not (no
//! io_uring, `kernel.io_uring_disabled`, seccomp), opening fails with
//! [`BlockError::UringUnavailable`] and the caller can fall back to [`super::Engine::Sync`].

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use io_uring::{opcode, types, IoUring, Probe};

use super::raw_io::{advance_iovecs, iovecs, mark_dirty, RawFile};
use super::{check_range, slices_len, BlockBackend, BlockError, GuestSlice, Result};

/// Submission queue entries per ring (one request is in flight at a time per instance).
const RING_ENTRIES: u32 = 16;
/// Most iovecs in one submission (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// A raw disk with I/O through io_uring.
pub struct RawUringDisk {
    raw: RawFile,
    ring: IoUring,
}

impl std::fmt::Debug for RawUringDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawUringDisk").field("raw", &self.raw).finish_non_exhaustive()
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
        Ok(Self { raw: RawFile::open(path, read_only, direct)?, ring })
    }

    /// Submits one entry and waits for its completion; returns the result (bytes or 0).
    fn run(&mut self, entry: io_uring::squeue::Entry) -> io::Result<usize> {
        // SAFETY: every buffer the entry points to (iovec array and the guest memory it
        // describes) is borrowed by our caller until this function has reaped the completion.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Some(cqe) = self.ring.completion().next() {
                let res = cqe.result();
                return if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                };
            }
        }
    }

    fn rw(&mut self, mut offset: u64, bufs: &[GuestSlice<'_>], write: bool) -> io::Result<()> {
        let (mut iovs, _guards) = iovecs(bufs);
        let mut idx = advance_iovecs(&mut iovs, 0, 0);
        let fd = types::Fd(self.raw.file.as_raw_fd());
        while idx < iovs.len() {
            let cnt = (iovs.len() - idx).min(IOV_MAX) as u32;
            let ptr = iovs[idx..].as_ptr();
            let entry = if write {
                opcode::Writev::new(fd, ptr, cnt).offset(offset).build()
            } else {
                opcode::Readv::new(fd, ptr, cnt).offset(offset).build()
            };
            let n = match self.run(entry) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(io::Error::from(if write {
                    io::ErrorKind::WriteZero
                } else {
                    io::ErrorKind::UnexpectedEof
                }));
            }
            offset += n as u64;
            idx = advance_iovecs(&mut iovs, idx, n);
        }
        Ok(())
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
        let len = slices_len(bufs);
        check_range(offset, len, self.raw.size)?;
        self.rw(offset, bufs, false).map_err(|source| BlockError::Io {
            op: "read",
            offset,
            len,
            source,
        })?;
        mark_dirty(bufs);
        Ok(())
    }

    fn write_vectored(&mut self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        if self.raw.read_only || !self.raw.aligned_for_direct(offset, bufs) {
            return self.raw.write(offset, bufs);
        }
        let len = slices_len(bufs);
        check_range(offset, len, self.raw.size)?;
        self.rw(offset, bufs, true).map_err(|source| BlockError::Io {
            op: "write",
            offset,
            len,
            source,
        })
    }

    fn flush(&mut self) -> Result<()> {
        if self.raw.read_only {
            return Ok(());
        }
        let fd = types::Fd(self.raw.file.as_raw_fd());
        let entry = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build();
        self.run(entry).map(drop).map_err(|source| BlockError::Io {
            op: "flush",
            offset: 0,
            len: 0,
            source,
        })
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.raw.discard(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.raw.write_zeroes(offset, len, unmap)
    }

    fn try_clone(&self) -> Result<Box<dyn BlockBackend>> {
        Ok(Box::new(Self { raw: self.raw.try_clone()?, ring: new_ring()? }))
    }
}
