//! Raw-file plumbing shared by the raw engines and the segment backend: opening (O_DIRECT and
//! its alignment), vectored positional I/O into guest slices, O_DIRECT bounce buffers, and
//! discard/write-zeroes on regular files and block devices.

use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vm_memory::bitmap::Bitmap;
use vm_memory::volatile_memory::PtrGuardMut;

use super::{check_range, slices_len, BlockError, GuestSlice, Result};

/// Most iovecs one `preadv`/`pwritev` call takes (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;
/// O_DIRECT alignment for regular files: the largest logical block size in common use, so
/// any file system accepts it.
const FILE_DIRECT_ALIGN: u64 = 4096;
/// Chunk written when zeroes have to be written as data.
const ZERO_CHUNK: usize = 1 << 20;

nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);

/// An open raw file or block device.
#[derive(Debug)]
pub(crate) struct RawFile {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    pub(crate) read_only: bool,
    pub(crate) is_block_device: bool,
    /// Set when opened with O_DIRECT: the offset, length and memory alignment it needs.
    pub(crate) direct_align: Option<u64>,
}

impl RawFile {
    /// Opens `path` for raw I/O.
    pub(crate) fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self> {
        let open_err = |source| BlockError::Open { path: path.to_path_buf(), source };
        let mut opts = OpenOptions::new();
        opts.read(true).write(!read_only);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let mut file = opts.open(path).map_err(open_err)?;
        let is_block_device = file.metadata().map_err(open_err)?.file_type().is_block_device();
        let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        let direct_align = if direct {
            let align = if is_block_device {
                logical_block_size(&file).map_err(open_err)?
            } else {
                FILE_DIRECT_ALIGN
            };
            if size % align != 0 {
                return Err(BlockError::UnalignedSize { size, align });
            }
            Some(align)
        } else {
            None
        };
        Ok(Self { file, path: path.to_path_buf(), size, read_only, is_block_device, direct_align })
    }

    /// Another descriptor for the same file.
    pub(crate) fn try_clone(&self) -> Result<Self> {
        let file = self
            .file
            .try_clone()
            .map_err(|source| BlockError::Open { path: self.path.clone(), source })?;
        Ok(Self { file, path: self.path.clone(), ..*self })
    }

    fn io_err(op: &'static str, offset: u64, len: u64) -> impl FnOnce(io::Error) -> BlockError {
        move |source| BlockError::Io { op, offset, len, source }
    }

    /// The logical block size the device advertises: the O_DIRECT alignment, else 512.
    pub(crate) fn block_size(&self) -> u32 {
        self.direct_align.map_or(512, |a| a as u32)
    }

    /// True when `offset` and every buffer are aligned as O_DIRECT needs (always when buffered).
    pub(crate) fn aligned_for_direct(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> bool {
        let Some(align) = self.direct_align else { return true };
        offset.is_multiple_of(align)
            && bufs.iter().all(|s| {
                (s.ptr_guard().as_ptr() as u64).is_multiple_of(align)
                    && (s.len() as u64).is_multiple_of(align)
            })
    }

    /// Reads into guest slices, bouncing through an aligned buffer when O_DIRECT needs it.
    pub(crate) fn read(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        let len = slices_len(bufs);
        check_range(offset, len, self.size)?;
        if self.aligned_for_direct(offset, bufs) {
            preadv_all(&self.file, offset, bufs).map_err(Self::io_err("read", offset, len))
        } else {
            self.read_bounced(offset, bufs, len)
        }
    }

    /// Writes guest slices, bouncing through an aligned buffer when O_DIRECT needs it.
    pub(crate) fn write(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        let len = slices_len(bufs);
        if self.read_only {
            return Err(BlockError::ReadOnly { op: "write" });
        }
        check_range(offset, len, self.size)?;
        if self.aligned_for_direct(offset, bufs) {
            pwritev_all(&self.file, offset, bufs).map_err(Self::io_err("write", offset, len))
        } else {
            let mut data = vec![0u8; len as usize];
            let mut pos = 0;
            for s in bufs {
                s.copy_to(&mut data[pos..pos + s.len()]);
                pos += s.len();
            }
            self.write_bytes(offset, &data)
        }
    }

    fn window(&self, offset: u64, len: u64) -> (u64, u64) {
        let align = self.direct_align.unwrap_or(1);
        let start = offset / align * align;
        let end = (offset + len).div_ceil(align) * align;
        (start, end)
    }

    fn read_bounced(&self, offset: u64, bufs: &[GuestSlice<'_>], len: u64) -> Result<()> {
        let (start, end) = self.window(offset, len);
        let mut bounce = AlignedBuf::new((end - start) as usize, self.direct_align.unwrap_or(1));
        self.file
            .read_exact_at(bounce.as_mut_slice(), start)
            .map_err(Self::io_err("read", offset, len))?;
        let data = bounce.as_mut_slice();
        let mut pos = (offset - start) as usize;
        for s in bufs {
            s.copy_from(&data[pos..pos + s.len()]);
            s.bitmap().mark_dirty(0, s.len());
            pos += s.len();
        }
        Ok(())
    }

    /// Writes host bytes at `offset`, with a read-modify-write of the edge blocks when O_DIRECT
    /// alignment needs it.
    pub(crate) fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        let (start, end) = self.window(offset, len);
        let mut bounce = AlignedBuf::new((end - start) as usize, self.direct_align.unwrap_or(1));
        if start != offset || end != offset + len {
            self.file
                .read_exact_at(bounce.as_mut_slice(), start)
                .map_err(Self::io_err("write", offset, len))?;
        }
        let from = (offset - start) as usize;
        bounce.as_mut_slice()[from..from + data.len()].copy_from_slice(data);
        self.file
            .write_all_at(bounce.as_mut_slice(), start)
            .map_err(Self::io_err("write", offset, len))
    }

    /// `fdatasync`.
    pub(crate) fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(Self::io_err("flush", 0, 0))
    }

    /// Discards a range (hole punch on files, BLKDISCARD on block devices). Hosts that cannot
    /// discard ignore it: discard is a hint.
    pub(crate) fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(BlockError::ReadOnly { op: "discard" });
        }
        check_range(offset, len, self.size)?;
        match discard_range(&self.file, self.is_block_device, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if unsupported(e) => Ok(()),
            Err(e) => {
                Err(BlockError::Io { op: "discard", offset, len, source: io::Error::from(e) })
            }
        }
    }

    /// Makes a range read as zeroes: hole punch (with `unmap`) or FALLOC_FL_ZERO_RANGE on files,
    /// BLKZEROOUT on block devices, writing zeroes where none of these works.
    pub(crate) fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        if self.read_only {
            return Err(BlockError::ReadOnly { op: "write-zeroes" });
        }
        check_range(offset, len, self.size)?;
        match zero_range_fast(&self.file, self.is_block_device, offset, len, unmap) {
            Ok(()) => Ok(()),
            Err(e) if unsupported(e) => self.write_zeroes_as_data(offset, len),
            Err(e) => {
                Err(BlockError::Io { op: "write-zeroes", offset, len, source: io::Error::from(e) })
            }
        }
    }

    fn write_zeroes_as_data(&self, mut offset: u64, len: u64) -> Result<()> {
        let end = offset + len;
        let zeroes = AlignedBuf::new(ZERO_CHUNK, self.direct_align.unwrap_or(1).max(1));
        while offset < end {
            let n = (end - offset).min(ZERO_CHUNK as u64) as usize;
            self.write_bytes(offset, &zeroes.as_slice()[..n])?;
            offset += n as u64;
        }
        Ok(())
    }
}

/// Discards a range: BLKDISCARD on a block device, a hole punch on a file.
pub(crate) fn discard_range(file: &File, is_blk: bool, offset: u64, len: u64) -> nix::Result<()> {
    if is_blk {
        // SAFETY: the fd is a block device we hold open; the argument is a valid [u64; 2].
        unsafe { blkdiscard(file.as_raw_fd(), &[offset, len]) }.map(drop)
    } else {
        punch_hole(file, offset, len)
    }
}

/// Zeroes a range without writing data: BLKZEROOUT on a block device, a hole punch (`unmap`)
/// or FALLOC_FL_ZERO_RANGE on a file. An [`unsupported`] error means "write zeroes as data".
pub(crate) fn zero_range_fast(
    file: &File,
    is_blk: bool,
    offset: u64,
    len: u64,
    unmap: bool,
) -> nix::Result<()> {
    if is_blk {
        // SAFETY: the fd is a block device we hold open; the argument is a valid [u64; 2].
        unsafe { blkzeroout(file.as_raw_fd(), &[offset, len]) }.map(drop)
    } else if unmap {
        punch_hole(file, offset, len).or_else(|_| zero_range(file, offset, len))
    } else {
        zero_range(file, offset, len)
    }
}

/// True for errors that mean "this file or kernel cannot do that", as opposed to I/O errors.
pub(crate) fn unsupported(e: nix::Error) -> bool {
    matches!(
        e,
        nix::Error::EOPNOTSUPP | nix::Error::ENOTTY | nix::Error::EINVAL | nix::Error::ENOSYS
    )
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> nix::Result<()> {
    let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(nix::Error::EINVAL);
    };
    // SAFETY: fallocate on an fd we own changes only the file, never our memory.
    let ret = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, l) };
    nix::Error::result(ret).map(drop)
}

/// Deallocates a range of a regular file, keeping its size; the range then reads as zeroes.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> nix::Result<()> {
    fallocate(file, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
}

/// Zeroes a range of a regular file with allocated (unwritten) extents.
pub(crate) fn zero_range(file: &File, offset: u64, len: u64) -> nix::Result<()> {
    fallocate(file, libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
}

fn logical_block_size(file: &File) -> io::Result<u64> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one c_int through the pointer, which points to `size`.
    unsafe { blksszget(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
    Ok(u64::try_from(size).unwrap_or(512).max(512))
}

/// Builds iovecs over guest slices, with the guards that keep the pointers valid (with plain
/// mmap-backed memory the guards are just the pointers; with Xen grant mappings they hold the
/// mapping). Keep the guards alive until the I/O has completed.
pub(crate) fn iovecs(bufs: &[GuestSlice<'_>]) -> (Vec<libc::iovec>, Vec<PtrGuardMut>) {
    let guards: Vec<PtrGuardMut> = bufs.iter().map(|s| s.ptr_guard_mut()).collect();
    let iovs = guards
        .iter()
        .map(|g| libc::iovec { iov_base: g.as_ptr().cast(), iov_len: g.len() })
        .collect();
    (iovs, guards)
}

/// Marks guest slices dirty after the host wrote into them through raw pointers.
pub(crate) fn mark_dirty(bufs: &[GuestSlice<'_>]) {
    for s in bufs {
        s.bitmap().mark_dirty(0, s.len());
    }
}

/// Advances an iovec list past `n` bytes that were transferred; returns the new start index.
pub(crate) fn advance_iovecs(iovs: &mut [libc::iovec], mut idx: usize, mut n: usize) -> usize {
    while n > 0 && idx < iovs.len() {
        let l = iovs[idx].iov_len;
        if n >= l {
            n -= l;
            idx += 1;
        } else {
            // SAFETY: n < iov_len, so the new base stays inside the same buffer.
            iovs[idx].iov_base = unsafe { iovs[idx].iov_base.cast::<u8>().add(n) }.cast();
            iovs[idx].iov_len -= n;
            n = 0;
        }
    }
    while idx < iovs.len() && iovs[idx].iov_len == 0 {
        idx += 1;
    }
    idx
}

fn rw_all(file: &File, mut offset: u64, bufs: &[GuestSlice<'_>], write: bool) -> io::Result<()> {
    let (mut iovs, _guards) = iovecs(bufs);
    let mut idx = advance_iovecs(&mut iovs, 0, 0);
    while idx < iovs.len() {
        let cnt = (iovs.len() - idx).min(IOV_MAX);
        let off =
            i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let ptr = iovs[idx..].as_ptr();
        // SAFETY: the iovecs point into guest memory borrowed through `bufs` for this whole call
        // (each within its slice's bounds); the kernel accesses only those ranges.
        let ret = unsafe {
            if write {
                libc::pwritev(file.as_raw_fd(), ptr, cnt as libc::c_int, off)
            } else {
                libc::preadv(file.as_raw_fd(), ptr, cnt as libc::c_int, off)
            }
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if ret == 0 {
            return Err(io::Error::from(if write {
                io::ErrorKind::WriteZero
            } else {
                io::ErrorKind::UnexpectedEof
            }));
        }
        offset += ret as u64;
        idx = advance_iovecs(&mut iovs, idx, ret as usize);
    }
    Ok(())
}

/// `preadv` until every slice is filled; marks them dirty.
pub(crate) fn preadv_all(file: &File, offset: u64, bufs: &[GuestSlice<'_>]) -> io::Result<()> {
    rw_all(file, offset, bufs, false)?;
    mark_dirty(bufs);
    Ok(())
}

/// `pwritev` until every slice is written.
pub(crate) fn pwritev_all(file: &File, offset: u64, bufs: &[GuestSlice<'_>]) -> io::Result<()> {
    rw_all(file, offset, bufs, true)
}

/// A zeroed heap buffer with a chosen alignment (for O_DIRECT).
pub(crate) struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
    layout: Layout,
}

impl AlignedBuf {
    /// `len` zero bytes aligned to `align` (a power of two).
    pub(crate) fn new(len: usize, align: u64) -> Self {
        let layout = Layout::from_size_align(len.max(1), align.max(1) as usize)
            .expect("alignment is a power of two and the size is bounded");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Self { ptr, len, layout }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of at least len initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with exactly this layout and is freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}
