//! Streaming data into, out of and between volumes, in 1 MiB chunks, with progress.
//! All-zero chunks become `write_zeroes`, so sparse images stay sparse.

use std::io::{self, Read, Write};

use super::image::VolumeIo;
use super::volume::Progress;

/// Chunk size of all copies.
pub const CHUNK: usize = 1 << 20;

/// Why a copy stopped.
#[derive(Debug)]
pub enum CopyError {
    /// An I/O error on either side.
    Io(io::Error),
    /// The source holds more bytes than the destination volume.
    TooMuchData,
}

impl From<io::Error> for CopyError {
    fn from(e: io::Error) -> Self {
        CopyError::Io(e)
    }
}

fn is_zero(buf: &[u8]) -> bool {
    buf.iter().all(|&b| b == 0)
}

/// Reads as much as possible into `buf` (short only at end of stream).
fn fill(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes the stream `src` into `dst` from offset 0; returns the bytes written. `total` is the
/// expected length for progress (0 if unknown). The rest of the volume is left as it was.
pub fn upload(
    dst: &dyn VolumeIo,
    src: &mut dyn Read,
    total: u64,
    progress: Progress<'_>,
) -> Result<u64, CopyError> {
    let size = dst.size();
    if total > size {
        return Err(CopyError::TooMuchData);
    }
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        let n = fill(src, &mut buf)?;
        if n == 0 {
            break;
        }
        if off + n as u64 > size {
            return Err(CopyError::TooMuchData);
        }
        if is_zero(&buf[..n]) {
            dst.write_zeroes(off, n as u64)?;
        } else {
            dst.write_at(&buf[..n], off)?;
        }
        off += n as u64;
        progress(off, total.max(off));
    }
    dst.flush()?;
    Ok(off)
}

/// Writes the whole virtual disk of `src` to `dst`; returns the bytes written.
pub fn download(
    src: &dyn VolumeIo,
    dst: &mut dyn Write,
    progress: Progress<'_>,
) -> Result<u64, CopyError> {
    let size = src.size();
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(CHUNK as u64) as usize;
        src.read_at(&mut buf[..n], off)?;
        dst.write_all(&buf[..n])?;
        off += n as u64;
        progress(off, size);
    }
    dst.flush()?;
    Ok(off)
}

/// Copies `src`'s virtual disk into `dst`, which must read as zeroes and be at least as large;
/// all-zero chunks are skipped.
pub fn copy(
    src: &dyn VolumeIo,
    dst: &dyn VolumeIo,
    progress: Progress<'_>,
) -> Result<u64, CopyError> {
    let size = src.size();
    if size > dst.size() {
        return Err(CopyError::TooMuchData);
    }
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(CHUNK as u64) as usize;
        src.read_at(&mut buf[..n], off)?;
        if !is_zero(&buf[..n]) {
            dst.write_at(&buf[..n], off)?;
        }
        off += n as u64;
        progress(off, size);
    }
    dst.flush()?;
    Ok(off)
}

/// Makes the whole volume read as zeroes (virsh `vol-wipe`, the zero algorithm).
pub fn wipe(dst: &dyn VolumeIo) -> io::Result<()> {
    let size = dst.size();
    let mut off = 0u64;
    // In 64 MiB steps, so a huge qcow2 wipe does not build one giant request.
    while off < size {
        let n = (size - off).min(64 << 20);
        dst.write_zeroes(off, n)?;
        off += n;
    }
    dst.flush()
}
