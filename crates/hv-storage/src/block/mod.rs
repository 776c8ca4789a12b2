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
//! [`open_disk`] (in [`open`]) is the one confined opener: the caller names the format (probing
//! only on request), backing and data files open only where [`Confinement`] allows, and every
//! qcow2 header is checked by hv's own parser before imago reads it:
//!
//! ```no_run
//! use hv_storage::block::{open_disk, DiskFormat, DiskOptions};
//! let disk = open_disk("/var/lib/hv/vm1.img", DiskFormat::Raw, DiskOptions::default()).unwrap();
//! println!("{} bytes", disk.size());
//! ```

pub mod open;
pub mod qcow2;
pub mod raw_sync;
pub mod raw_uring;
pub mod segments;

mod raw_io;
mod refcount_check;

pub(crate) use raw_io::mark_dirty;

use std::fmt::Debug;
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;

pub use crate::format::{ImageFormat, QCOW2_MAGIC};
pub use open::{open_disk, Confinement, DiskFormat};
pub use qcow2::Qcow2Disk;
pub use raw_sync::RawSyncDisk;
pub use raw_uring::RawUringDisk;
pub use segments::{Segment, SegmentDisk, SegmentPath};

/// A slice of hv guest memory as the block backends take it (the bitmap type of
/// [`hv_mem::GuestMemory`], so writes into guest RAM are logged as dirty).
pub type GuestSlice<'a> =
    vm_memory::VolatileSlice<'a, vm_memory::bitmap::BS<'a, vm_memory::bitmap::AtomicBitmap>>;

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
    /// hv's own parser refused a qcow2 header (before imago saw it).
    #[error("{path} has a bad qcow2 header: {reason}")]
    BadHeader {
        /// The image path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The image is in a known format hv does not handle.
    #[error("{path} is in format '{format}', which hv does not handle (raw and qcow2 only)")]
    UnsupportedFormat {
        /// The image path.
        path: PathBuf,
        /// The format found.
        format: &'static str,
    },
    /// A backing file or data file named by an image is not one the caller allowed.
    #[error("{image} names {what} {file}, which may not be opened: {reason}")]
    NotAllowed {
        /// The image whose header names the file.
        image: PathBuf,
        /// `backing file` or `data file`.
        what: &'static str,
        /// The file as named (resolved against the image's directory).
        file: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// A backing file's format is neither stated in the image nor recorded by its pool.
    #[error(
        "{image} names backing file {backing} without a backing format, and no pool records \
         one (hv never probes a backing file)"
    )]
    BackingFormatUnknown {
        /// The image.
        image: PathBuf,
        /// The backing file (resolved).
        backing: PathBuf,
    },
    /// The backing format an image states differs from the one the pool recorded.
    #[error("{image} says backing file {backing} is {stated}, but the pool recorded {recorded}")]
    BackingFormatMismatch {
        /// The image.
        image: PathBuf,
        /// The backing file (resolved).
        backing: PathBuf,
        /// What the image header says.
        stated: ImageFormat,
        /// What the pool recorded.
        recorded: ImageFormat,
    },
    /// A backing chain refers back to one of its own files.
    #[error("{image} has backing file {backing}, which is already in its chain")]
    BackingLoop {
        /// The image.
        image: PathBuf,
        /// The repeated file.
        backing: PathBuf,
    },
    /// A backing chain is deeper than hv follows.
    #[error("the backing chain of {path} is deeper than {max} images")]
    BackingTooDeep {
        /// The top image.
        path: PathBuf,
        /// The limit.
        max: usize,
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

/// How raw disks do their I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// `preadv`/`pwritev` on the calling thread.
    #[default]
    Sync,
    /// io_uring (fails with [`BlockError::UringUnavailable`] where the host lacks it).
    Uring,
}

/// How to open a disk (the format is [`open_disk`]'s own argument).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskOptions {
    /// Refuse writes, discards and write-zeroes; the file is opened read-only.
    pub read_only: bool,
    /// Bypass the host page cache (O_DIRECT).
    pub direct: bool,
    /// The I/O engine for raw disks (qcow2 always goes through imago's synchronous engine).
    pub engine: Engine,
    /// The backing files and external data files a qcow2 image may open (default: none).
    pub confinement: Confinement,
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

    /// The engine's asynchronous interface, if it keeps many requests in flight (io_uring).
    fn as_async(&mut self) -> Option<&mut dyn AsyncBlock> {
        None
    }
}

/// An engine that keeps many reads and writes in flight: the queue handler queues every read
/// and write it pops, submits them together without waiting, and completes each when its tag
/// comes back, in whatever order the host finishes them. The engine signals an eventfd
/// ([`Self::completion_fd`]) when completions arrive, so the handler's owner waits on it with
/// the queues' notifications instead of blocking (Cloud Hypervisor's `engine_uring` model).
pub trait AsyncBlock {
    /// How many more requests can be queued now.
    fn capacity(&self) -> usize;

    /// Requests queued or in flight.
    fn in_flight(&self) -> usize;

    /// Queues a read (or, with `write`, a write) of `bufs` at byte `offset` under `tag`,
    /// without submitting it. `Ok(false)` when this request must go the synchronous way
    /// instead (e.g. an O_DIRECT request that is not aligned); the caller then completes
    /// everything in flight first ([`Self::submit_and_complete`]) and performs it itself.
    ///
    /// # Safety
    ///
    /// The memory `bufs` describe must stay mapped, and untouched by the caller, until
    /// [`Self::complete`] or [`Self::submit_and_complete`] has returned the completion for
    /// `tag`. A read's caller marks the slices dirty once its completion came back successful.
    unsafe fn queue(
        &mut self,
        tag: u64,
        offset: u64,
        bufs: &[GuestSlice<'_>],
        write: bool,
    ) -> Result<bool>;

    /// Hands everything queued to the host (one system call for the batch) without waiting.
    fn submit(&mut self) -> Result<()>;

    /// An eventfd that becomes readable when completions may be waiting: wait on it, then
    /// call [`Self::complete`] (which drains it).
    fn completion_fd(&self) -> RawFd;

    /// Appends `(tag, result)` for every request that finished so far, in completion order,
    /// without waiting (the rest of a short transfer is resubmitted under the same tag). An
    /// `Err` means the engine itself failed (completions already known are still appended).
    fn complete(&mut self, out: &mut Vec<(u64, Result<()>)>) -> Result<()>;

    /// Submits everything queued and waits until every request in flight has completed;
    /// appends `(tag, result)` to `out` for each, in completion order. An `Err` means the
    /// engine itself failed (completions already known are still appended).
    fn submit_and_complete(&mut self, out: &mut Vec<(u64, Result<()>)>) -> Result<()>;
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
