//! Byte access to a logical volume through its extent map, for guest disks and copies.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::pool::image::{zero_range, VolumeIo};

/// A contiguous piece of a logical volume on one physical volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset in the logical volume.
    pub lv_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The physical volume (file or block device).
    pub pv_path: PathBuf,
    /// Byte offset on the physical volume.
    pub pv_offset: u64,
}

/// A logical volume opened for reading and writing: LV offsets are translated to PV files and
/// offsets through the extent map. A block backend can sit directly on this.
#[derive(Debug, Clone)]
pub struct LvDevice {
    size: u64,
    writable: bool,
    segments: Vec<(Segment, Arc<File>)>,
}

impl LvDevice {
    pub(crate) fn new(size: u64, writable: bool, segments: Vec<(Segment, Arc<File>)>) -> Self {
        LvDevice { size, writable, segments }
    }

    /// The segments of this volume.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().map(|(s, _)| s)
    }

    /// The segments as the block layer takes them (open PV files, byte offsets), for a
    /// guest disk over this volume: `block::SegmentDisk::new(dev.block_segments(), ro)`.
    pub fn block_segments(&self) -> Vec<crate::block::Segment> {
        self.segments
            .iter()
            .map(|(s, f)| crate::block::Segment {
                disk_offset: s.lv_offset,
                len: s.len,
                file: Arc::clone(f),
                file_offset: s.pv_offset,
            })
            .collect()
    }

    /// Calls `f(file, pv_offset, buf_range)` for each piece of `[offset, offset+len)`.
    fn each(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&File, u64, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "range {offset}+{len} is past the end of the logical volume ({} bytes)",
                    self.size
                ),
            ));
        }
        let end = offset + len;
        let first = self.segments.partition_point(|(s, _)| s.lv_offset + s.len <= offset);
        let mut pos = offset;
        for (s, file) in &self.segments[first..] {
            if pos >= end {
                break;
            }
            let seg_end = s.lv_offset + s.len;
            let n = seg_end.min(end) - pos;
            let buf_start = (pos - offset) as usize;
            f(file, s.pv_offset + (pos - s.lv_offset), buf_start..buf_start + n as usize)?;
            pos += n;
        }
        Ok(())
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::PermissionDenied, "logical volume opened read-only"))
        }
    }
}

impl VolumeIo for LvDevice {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.each(offset, buf.len() as u64, |f, off, r| f.read_exact_at(&mut buf[r], off))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        self.each(offset, buf.len() as u64, |f, off, r| f.write_all_at(&buf[r], off))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.each(offset, len, |f, off, r| zero_range(f, off, r.len() as u64))
    }
    fn flush(&self) -> io::Result<()> {
        let mut done: Vec<*const File> = vec![];
        for (_, f) in &self.segments {
            let p = Arc::as_ptr(f);
            if !done.contains(&p) {
                f.sync_data()?;
                done.push(p);
            }
        }
        Ok(())
    }
}
