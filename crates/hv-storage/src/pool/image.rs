//! Byte-level access to a volume's virtual disk, whatever its format, and qcow2 creation.
//!
//! [`VolumeIo`] is what upload, download, clone and wipe use; raw files go straight to the
//! file, qcow2 images through the one confined qcow2 wrapper ([`crate::block::Qcow2Disk`],
//! opened by [`crate::block::open`]), logical volumes through their extent map
//! (`logical::LvDevice`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Storage,
    StorageOpenOptions,
};
use nix::fcntl::{fallocate, FallocateFlags};

/// Reads and writes a volume's guest-visible bytes.
pub trait VolumeIo {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset` (must lie within the size).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset` (must lie within the size).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes `[offset, offset+len)` read as zeroes, freeing space where the format can.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes written data durable.
    fn flush(&self) -> io::Result<()>;
}

/// A raw file or block device.
pub struct RawIo {
    file: File,
    size: u64,
}

impl RawIo {
    /// Opens `path` (the size is the file or device length).
    pub fn open(path: &Path, writable: bool) -> io::Result<RawIo> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let size = file_len(&file)?;
        Ok(RawIo { file, size })
    }

    /// Wraps an open file with a known size (a window on a device is handled by the caller).
    pub fn from_file(file: File, size: u64) -> RawIo {
        RawIo { file, size }
    }
}

/// The length of a file or block device (block devices report 0 in `st_size`).
pub fn file_len(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(len)
}

fn check_bounds(size: u64, offset: u64, len: u64) -> io::Result<()> {
    if offset.checked_add(len).is_some_and(|end| end <= size) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("range {offset}+{len} is past the end of the volume ({size} bytes)"),
        ))
    }
}

/// Zeroes a range of a file: punches a hole (keeping the file's size and sparseness), or
/// writes zeroes where the file system or device cannot punch.
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    if fallocate(file, flags, offset as i64, len as i64).is_ok() {
        return Ok(());
    }
    let zeroes = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeroes.len() as u64) as usize;
        file.write_all_at(&zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

impl VolumeIo for RawIo {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_bounds(self.size, offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_bounds(self.size, offset, buf.len() as u64)?;
        self.file.write_all_at(buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        check_bounds(self.size, offset, len)?;
        zero_range(&self.file, offset, len)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// Formats the (new, empty) file `path` as a qcow2 image of `size` bytes, optionally over a
/// backing file (its name as stored in the header, and its format).
pub fn create_qcow2(path: &Path, size: u64, backing: Option<(&str, &str)>) -> io::Result<()> {
    let storage =
        <ImagoFile as Storage>::open(StorageOpenOptions::new().filename(path).write(true))?;
    let mut builder = Qcow2::<ImagoFile>::create_builder(storage).size(size);
    if let Some((file, format)) = backing {
        builder = builder.backing(file.to_string(), format.to_string());
    }
    builder.create()?;
    File::open(path)?.sync_all()
}

/// Opens a raw image through imago (used by tests that compare imago's view with ours).
pub fn open_raw_imago(path: &Path) -> io::Result<FormatAccess<ImagoFile>> {
    let file = <ImagoFile as Storage>::open(StorageOpenOptions::new().filename(path))?;
    let raw = Raw::<ImagoFile>::builder(file).open(DenyImplicitOpenGate::default())?;
    Ok(FormatAccess::new(raw))
}
