//! Block backends: where a guest disk's bytes live.
//!
//! Every backend implements [`BlockBackend`]: reads and writes at a byte offset straight between
//! the disk and guest RAM (vectored over [`GuestSlice`]s, no bounce buffer unless O_DIRECT
//! alignment needs one), flush, discard, write-zeroes, size and a read-only flag. Formats and
//! I/O engines are separate files:
//!
//! - [`raw_sync`]: a raw file or block device with `preadv`/`pwritev` (O_DIRECT optional).
//! - [`raw_uring`]: a raw file or block device through io_uring.
//! - [`qcow2`]: a qcow2 image (with its backing chain, read-only) through `imago`.
//! - [`segments`]: a logical volume, an extent list over files or block devices.
//!
//! [`open_disk`] probes the format from the file's first bytes (never from the name) and picks
//! the engine:
//!
//! ```no_run
//! use hv_storage::block::{open_disk, DiskOptions};
//! let disk = open_disk("/var/lib/hv/vm1.img", DiskOptions::default()).unwrap();
//! println!("{} bytes", disk.size());
//! ```

pub mod qcow2;
pub mod raw_sync;
pub mod raw_uring;
pub mod segments;

mod raw_io;

use std::fmt::Debug;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use qcow2::Qcow2Disk;
pub use raw_sync::RawSyncDisk;
pub use raw_uring::RawUringDisk;
pub use segments::{Segment, SegmentDisk};

/// A slice of hv guest memory as the block backends take it (the bitmap type of
/// [`hv_mem::GuestMemory`], so writes into guest RAM are logged as dirty).
pub type GuestSlice<'a> =
    vm_memory::VolatileSlice<'a, vm_memory::bitmap::BS<'a, vm_memory::bitmap::AtomicBitmap>>;

/// The qcow2 magic, `QFI\xfb`, at offset 0 of every qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Errors from block backends.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image file could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The image's first bytes could not be read to probe its format.
    #[error("cannot probe the format of {path}: {source}")]
    Probe {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// imago refused to open the qcow2 image or its backing chain.
    #[error("cannot open qcow2 image {path}: {source}")]
    Qcow2Open {
        /// The image path.
        path: PathBuf,
        /// imago's error.
        #[source]
        source: io::Error,
    },
    /// An access reaches past the end of the disk.
    #[error("access at offset {offset:#x}, {len} bytes, is outside the disk ({size} bytes)")]
    OutOfRange {
        /// Byte offset of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Disk size in bytes.
        size: u64,
    },
    /// A write, discard or write-zeroes on a disk opened read-only.
    #[error("{op} refused: the disk is read-only")]
    ReadOnly {
        /// The refused operation.
        op: &'static str,
    },
    /// The host I/O failed.
    #[error("{op} at offset {offset:#x}, {len} bytes, failed: {source}")]
    Io {
        /// The operation (read, write, flush, discard, write-zeroes).
        op: &'static str,
        /// Byte offset of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// The OS or imago error.
        #[source]
        source: io::Error,
    },
    /// io_uring cannot be used on this host (kernel without it, disabled by sysctl, seccomp,
    /// or an opcode we need missing).
    #[error("io_uring is not available: {reason}: {source}")]
    UringUnavailable {
        /// What was missing.
        reason: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// O_DIRECT needs the disk size to be a multiple of the I/O alignment.
    #[error("disk size {size} is not a multiple of the O_DIRECT alignment {align}")]
    UnalignedSize {
        /// Disk size in bytes.
        size: u64,
        /// Required alignment in bytes.
        align: u64,
    },
    /// The image does not have the format the caller pinned.
    #[error("{path} was expected to be {expected:?} but looks like {probed:?}")]
    FormatMismatch {
        /// The image path.
        path: PathBuf,
        /// The format asked for.
        expected: ImageFormat,
        /// The format found.
        probed: ImageFormat,
    },
    /// A segment list is not a valid logical volume map.
    #[error("invalid segment list: segment {index}: {reason}")]
    InvalidSegments {
        /// Index of the offending segment.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Result type of the block backends.
pub type Result<T> = std::result::Result<T, BlockError>;

/// Image formats [`open_disk`] recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// Bytes as they are: a raw file or a block device.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
}

/// How raw disks do their I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// `preadv`/`pwritev` on the calling thread.
    #[default]
    Sync,
    /// io_uring (fails with [`BlockError::UringUnavailable`] where the host lacks it).
    Uring,
}

/// How to open a disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskOptions {
    /// Refuse writes, discards and write-zeroes; the file is opened read-only.
    pub read_only: bool,
    /// Bypass the host page cache (O_DIRECT).
    pub direct: bool,
    /// The I/O engine for raw disks (qcow2 always goes through imago's synchronous engine).
    pub engine: Engine,
    /// The format the caller knows the image has (e.g. recorded by the pool when the volume
    /// was created). `None` probes it from the file's first bytes.
    ///
    /// Probing is only safe for images whose first sector no guest could write: a guest on a
    /// raw disk can write a qcow2 header naming any host file as its backing file, and a
    /// later probing open would then show that file to the guest. Pin `Raw` for raw volumes.
    pub format: Option<ImageFormat>,
}

/// A guest disk: bytes at offsets, moved directly between the disk and guest RAM.
///
/// Methods take `&mut self` so an engine can keep per-queue state (an io_uring, a bounce
/// buffer) without locks; each virtqueue gets its own instance through
/// [`try_clone`](Self::try_clone).
pub trait BlockBackend: Send + Debug {
    /// The disk size in bytes.
    fn size(&self) -> u64;

    /// True when writes are refused.
    fn read_only(&self) -> bool;

    /// The smallest I/O unit the backend handles without read-modify-write (512, or the
    /// O_DIRECT alignment); a device advertises it as its block size.
    fn block_size(&self) -> u32 {
        512
    }

    /// Fills `bufs`, in order, from the disk starting at byte `offset`.
    fn read_vectored(&mut self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()>;

    /// Writes `bufs`, in order, to the disk starting at byte `offset`.
    fn write_vectored(&mut self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()>;

    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<()>;

    /// Tells the storage that `[offset, offset + len)` is unused; its contents become
    /// unspecified (zero on files that support hole punching).
    fn discard(&mut self, offset: u64, len: u64) -> Result<()>;

    /// Makes `[offset, offset + len)` read as zeroes; with `unmap` the space may be deallocated.
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<()>;

    /// Another handle on the same disk, for another queue.
    fn try_clone(&self) -> Result<Box<dyn BlockBackend>>;
}

/// Checks that `[offset, offset + len)` lies inside a disk of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange { offset, len, size }),
    }
}

/// Total length of a slice list.
pub fn slices_len(bufs: &[GuestSlice<'_>]) -> u64 {
    bufs.iter().map(|s| s.len() as u64).sum()
}

/// Reads the format from the first bytes of `file` (qcow2 by its magic, anything else raw).
pub fn probe_format(file: &File) -> io::Result<ImageFormat> {
    let mut magic = [0u8; 4];
    let mut reader = file;
    let mut got = 0;
    // `Read for &File` reads at the current position; probe before any other use.
    while got < magic.len() {
        match reader.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(if got == 4 && magic == QCOW2_MAGIC { ImageFormat::Qcow2 } else { ImageFormat::Raw })
}

/// Probes the format of the image at `path` from its first bytes.
pub fn probe_path(path: &Path) -> Result<ImageFormat> {
    let file =
        File::open(path).map_err(|source| BlockError::Open { path: path.to_path_buf(), source })?;
    probe_format(&file).map_err(|source| BlockError::Probe { path: path.to_path_buf(), source })
}

/// Opens a guest disk: probes its format from its contents (checked against
/// [`DiskOptions::format`] when the caller pins one) and opens it with the engine `options`
/// asks for.
pub fn open_disk(path: impl AsRef<Path>, options: DiskOptions) -> Result<Box<dyn BlockBackend>> {
    let path = path.as_ref();
    let probed = probe_path(path)?;
    let format = match options.format {
        None => probed,
        // A raw image may legitimately start with anything, the qcow2 magic included.
        Some(ImageFormat::Raw) => ImageFormat::Raw,
        Some(expected) if expected == probed => expected,
        Some(expected) => {
            return Err(BlockError::FormatMismatch { path: path.to_path_buf(), expected, probed })
        }
    };
    Ok(match format {
        ImageFormat::Qcow2 => Box::new(Qcow2Disk::open(path, options.read_only, options.direct)?),
        ImageFormat::Raw => match options.engine {
            Engine::Sync => Box::new(RawSyncDisk::open(path, options.read_only, options.direct)?),
            Engine::Uring => Box::new(RawUringDisk::open(path, options.read_only, options.direct)?),
        },
    })
}
