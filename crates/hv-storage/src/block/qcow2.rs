//! The qcow2 backend, over the `imago` crate (synchronous build): the one qcow2 wrapper, for
//! guest disks ([`BlockBackend`]) and pool volume access ([`VolumeIo`]) alike.
//!
//! It is opened only through the confined opener ([`super::open`]), which has checked every
//! header of the chain with hv's own parser and hands imago a gate that opens exactly the
//! validated backing and data files. The image named by the caller is opened read-write
//! (unless read-only is asked for); backing files read-only. Guest buffers are
//! handed to imago as I/O vectors over guest memory, so data clusters move disk <-> guest RAM
//! without a copy; imago marks the guest pages dirty when it reads into them.
//!
//! Instances cloned for other queues share one `FormatAccess` behind a read-write lock: reads,
//! writes and write-zeroes share it, discards (which may invalidate in-flight cluster mappings)
//! take it exclusively.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};

use super::open::ChainGate;
use super::{check_range, slices_len, BlockBackend, BlockError, GuestSlice, Result};
use crate::pool::image::VolumeIo;

type Image = FormatAccess<imago::file::File>;

/// A qcow2 image (with its backing chain) as a guest disk.
#[derive(Clone)]
pub struct Qcow2Disk {
    image: Arc<RwLock<Image>>,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

impl std::fmt::Debug for Qcow2Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Disk")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Qcow2Disk {
    /// Opens the qcow2 image at `path` with its validated chain (see [`super::open`]).
    pub(crate) fn open_gated(
        path: &Path,
        read_only: bool,
        direct: bool,
        gate: ChainGate,
    ) -> Result<Self> {
        let qcow2 = guarded(|| {
            // The top image is opened explicitly (not through the gate, which only knows the
            // chain below it).
            let opts = StorageOpenOptions::new().filename(path).write(!read_only).direct(direct);
            let file = <imago::file::File as Storage>::open(opts)?;
            Qcow2::<imago::file::File>::builder(file)
                .write(!read_only)
                .storage_open_options(StorageOpenOptions::new().direct(direct))
                .open(gate)
        })
        .map_err(|source| BlockError::Qcow2Open { path: path.to_path_buf(), source })?;
        let image = FormatAccess::new(qcow2);
        let size = image.size();
        Ok(Self { image: Arc::new(RwLock::new(image)), path: path.to_path_buf(), size, read_only })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Grows the virtual size to `new_size` (new space reads as zeroes).
    pub fn grow(&mut self, new_size: u64) -> io::Result<()> {
        let image = self.exclusive();
        guarded(|| {
            image.resize_grow(new_size, imago::format::PreallocateMode::Zero)?;
            image.flush()
        })?;
        drop(image);
        self.size = new_size;
        Ok(())
    }

    fn shared(&self) -> RwLockReadGuard<'_, Image> {
        self.image.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn exclusive(&self) -> RwLockWriteGuard<'_, Image> {
        self.image.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn writable(&self, op: &'static str) -> Result<()> {
        if self.read_only {
            Err(BlockError::ReadOnly { op })
        } else {
            Ok(())
        }
    }
}

/// Runs an imago call, turning a panic inside it into an `InvalidData` error. This is only a
/// second line: under `panic=abort` nothing unwinds, so the defence is hv's header check
/// ([`crate::format`]) before imago parses anything (imago 0.2.6 slices a short feature-name
/// table entry without a length check).
fn guarded<T>(f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(io::Error::new(io::ErrorKind::InvalidData, "qcow2 metadata could not be parsed"))
    })
}

fn io_err(op: &'static str, offset: u64, len: u64) -> impl FnOnce(io::Error) -> BlockError {
    move |source| BlockError::Io { op, offset, len, source }
}

impl BlockBackend for Qcow2Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_vectored(&mut self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        let len = slices_len(bufs);
        check_range(offset, len, self.size)?;
        // The guard keeps the guest memory mapped and marks it dirty when dropped.
        let (iov, _guard) = IoVectorMut::from_volatile_slice(bufs);
        guarded(|| self.shared().readv(iov, offset)).map_err(io_err("read", offset, len))
    }

    fn write_vectored(&mut self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        self.writable("write")?;
        let len = slices_len(bufs);
        check_range(offset, len, self.size)?;
        let (iov, _guard) = IoVector::from_volatile_slice(bufs);
        guarded(|| self.shared().writev(iov, offset)).map_err(io_err("write", offset, len))
    }

    fn flush(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let image = self.shared();
        guarded(|| image.flush().and_then(|()| image.sync())).map_err(io_err("flush", 0, 0))
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.writable("discard")?;
        check_range(offset, len, self.size)?;
        match guarded(|| self.exclusive().discard_to_any(offset, len)) {
            Ok(()) => Ok(()),
            // Discard is a hint; an image that cannot discard keeps its data.
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
            Err(e) => Err(io_err("discard", offset, len)(e)),
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.writable("write-zeroes")?;
        check_range(offset, len, self.size)?;
        guarded(|| {
            if unmap {
                self.exclusive().discard_to_zero(offset, len)
            } else {
                self.shared().write_zeroes(offset, len)
            }
        })
        .map_err(io_err("write-zeroes", offset, len))
    }

    fn try_clone(&self) -> Result<Box<dyn BlockBackend>> {
        Ok(Box::new(self.clone()))
    }
}

impl VolumeIo for Qcow2Disk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len() as u64, self.size).map_err(io::Error::other)?;
        guarded(|| self.shared().read(buf, offset))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable("write").map_err(io::Error::other)?;
        check_range(offset, buf.len() as u64, self.size).map_err(io::Error::other)?;
        guarded(|| self.shared().write(buf, offset))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable("write-zeroes").map_err(io::Error::other)?;
        check_range(offset, len, self.size).map_err(io::Error::other)?;
        guarded(|| self.shared().write_zeroes(offset, len))
    }
    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        let image = self.shared();
        guarded(|| image.flush().and_then(|()| image.sync()))
    }
}
