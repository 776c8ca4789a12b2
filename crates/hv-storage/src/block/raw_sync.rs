//! The synchronous raw engine: a raw file or block device read and written with
//! `preadv`/`pwritev` straight into guest memory on the calling thread.
//!
//! With O_DIRECT the kernel needs offsets, lengths and buffer addresses aligned to the logical
//! block size (BLKSSZGET for block devices, 4096 for files); requests that are not aligned go
//! through an aligned bounce buffer, with a read-modify-write of the edge blocks for writes.

use std::path::Path;

use super::raw_io::RawFile;
use super::{BlockBackend, GuestSlice, Result};

/// A raw disk with synchronous positional I/O.
#[derive(Debug)]
pub struct RawSyncDisk {
    raw: RawFile,
}

impl RawSyncDisk {
    /// Opens the raw file or block device at `path`.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self> {
        Ok(Self { raw: RawFile::open(path, read_only, direct)? })
    }

    /// True when opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.raw.direct_align.is_some()
    }
}

impl BlockBackend for RawSyncDisk {
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
        self.raw.read(offset, bufs)
    }

    fn write_vectored(&mut self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        self.raw.write(offset, bufs)
    }

    fn flush(&mut self) -> Result<()> {
        self.raw.flush()
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.raw.discard(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.raw.write_zeroes(offset, len, unmap)
    }

    fn try_clone(&self) -> Result<Box<dyn BlockBackend>> {
        Ok(Box::new(Self { raw: self.raw.try_clone()? }))
    }
}
