//! A logical volume as a guest disk: an extent list mapping disk ranges onto ranges of files or
//! block devices (the physical volumes of a logical pool).
//!
//! The pool gives a [`Segment`] list that covers the volume from byte 0 without gaps or
//! overlaps; a request that crosses segments is split and each part goes, vectored, straight
//! between its physical volume and guest RAM.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::raw_io::{discard_range, preadv_all, pwritev_all, unsupported, zero_range_fast};
use super::{check_range, slices_len, BlockBackend, BlockError, GuestSlice, Result};

/// One extent of a logical volume.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Where the extent starts in the volume, in bytes.
    pub disk_offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// The physical volume holding it.
    pub file: Arc<File>,
    /// Where it starts in that physical volume, in bytes.
    pub file_offset: u64,
}

/// One extent of a logical volume named by its physical volume's path, for
/// [`SegmentDisk::open`]: the extents follow each other from disk byte 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentPath {
    /// The physical volume (a file or a block device).
    pub path: PathBuf,
    /// Where the extent starts in it, in bytes.
    pub file_offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

#[derive(Clone, Debug)]
struct Extent {
    seg: Segment,
    is_block_device: bool,
}

/// A logical volume: reads and writes split over its segments.
#[derive(Clone, Debug)]
pub struct SegmentDisk {
    extents: Vec<Extent>,
    size: u64,
    read_only: bool,
}

/// Guest slices covering bytes `[start, start + len)` of the concatenation of `bufs`.
fn sub_slices<'a>(bufs: &[GuestSlice<'a>], start: u64, len: u64) -> Vec<GuestSlice<'a>> {
    let mut out = Vec::new();
    let (mut pos, end) = (0u64, start + len);
    for s in bufs {
        let (s_start, s_end) = (pos, pos + s.len() as u64);
        pos = s_end;
        let (from, to) = (start.max(s_start), end.min(s_end));
        if from < to {
            if let Ok(part) = s.subslice((from - s_start) as usize, (to - from) as usize) {
                out.push(part);
            }
        }
        if pos >= end {
            break;
        }
    }
    out
}

impl SegmentDisk {
    /// Builds a volume from `segments`, which must be sorted, start at 0, be contiguous, and
    /// each have a non-zero length.
    pub fn new(segments: Vec<Segment>, read_only: bool) -> Result<Self> {
        let mut expected = 0u64;
        let mut extents = Vec::with_capacity(segments.len());
        for (index, seg) in segments.into_iter().enumerate() {
            let invalid = |reason| BlockError::InvalidSegments { index, reason };
            if seg.len == 0 {
                return Err(invalid("zero length"));
            }
            if seg.disk_offset != expected {
                return Err(invalid("not contiguous with the previous segment"));
            }
            seg.file_offset.checked_add(seg.len).ok_or(invalid("file range overflows"))?;
            expected = expected.checked_add(seg.len).ok_or(invalid("volume size overflows"))?;
            let is_block_device =
                seg.file.metadata().map(|m| m.file_type().is_block_device()).unwrap_or(false);
            extents.push(Extent { seg, is_block_device });
        }
        Ok(Self { extents, size: expected, read_only })
    }

    /// Opens a volume from extents named by path, in order from disk byte 0: each distinct
    /// physical volume is opened once (read-write unless `read_only`), and every extent must
    /// lie inside its physical volume (a sparse file shorter than the map would read zeroes
    /// where another volume's bytes may later be).
    pub fn open(extents: &[SegmentPath], read_only: bool) -> Result<Self> {
        let mut files: Vec<(&PathBuf, Arc<File>, u64)> = Vec::new();
        let mut segments = Vec::with_capacity(extents.len());
        let mut disk_offset = 0u64;
        for (index, e) in extents.iter().enumerate() {
            let (file, size) = match files.iter().find(|(p, _, _)| **p == e.path) {
                Some((_, f, size)) => (Arc::clone(f), *size),
                None => {
                    let open_err = |source| BlockError::Open { path: e.path.clone(), source };
                    let mut f = std::fs::OpenOptions::new()
                        .read(true)
                        .write(!read_only)
                        .open(&e.path)
                        .map_err(open_err)?;
                    // The end, for a block device as for a file.
                    let size = f.seek(SeekFrom::End(0)).map_err(open_err)?;
                    let f = Arc::new(f);
                    files.push((&e.path, Arc::clone(&f), size));
                    (f, size)
                }
            };
            let invalid = |reason| BlockError::InvalidSegments { index, reason };
            let end = e.file_offset.checked_add(e.len).ok_or(invalid("file range overflows"))?;
            if end > size {
                return Err(invalid("reaches past the end of its physical volume"));
            }
            segments.push(Segment { disk_offset, len: e.len, file, file_offset: e.file_offset });
            disk_offset = disk_offset.checked_add(e.len).ok_or(invalid("volume size overflows"))?;
        }
        Self::new(segments, read_only)
    }

    /// The parts of `[offset, offset + len)`: (extent, offset in its file, offset into the
    /// request, length).
    fn parts(&self, offset: u64, len: u64) -> impl Iterator<Item = (&Extent, u64, u64, u64)> {
        let end = offset + len;
        let first = self.extents.partition_point(|e| e.seg.disk_offset + e.seg.len <= offset);
        self.extents[first..].iter().map_while(move |e| {
            let (s, e_end) = (e.seg.disk_offset, e.seg.disk_offset + e.seg.len);
            if s >= end {
                return None;
            }
            let from = offset.max(s);
            let to = end.min(e_end);
            Some((e, e.seg.file_offset + (from - s), from - offset, to - from))
        })
    }

    fn rw(&self, offset: u64, bufs: &[GuestSlice<'_>], write: bool) -> Result<()> {
        let len = slices_len(bufs);
        check_range(offset, len, self.size)?;
        let op = if write { "write" } else { "read" };
        for (ext, file_off, req_off, part_len) in self.parts(offset, len) {
            let part = sub_slices(bufs, req_off, part_len);
            let res = if write {
                pwritev_all(&ext.seg.file, file_off, &part)
            } else {
                preadv_all(&ext.seg.file, file_off, &part)
            };
            res.map_err(|source| BlockError::Io {
                op,
                offset: offset + req_off,
                len: part_len,
                source,
            })?;
        }
        Ok(())
    }

    fn writable(&self, op: &'static str) -> Result<()> {
        if self.read_only {
            Err(BlockError::ReadOnly { op })
        } else {
            Ok(())
        }
    }
}

impl BlockBackend for SegmentDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_vectored(&mut self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        self.rw(offset, bufs, false)
    }

    fn write_vectored(&mut self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        self.writable("write")?;
        self.rw(offset, bufs, true)
    }

    fn flush(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let mut synced: Vec<*const File> = Vec::new();
        for e in &self.extents {
            let ptr = Arc::as_ptr(&e.seg.file);
            if synced.contains(&ptr) {
                continue;
            }
            synced.push(ptr);
            e.seg.file.sync_data().map_err(|source| BlockError::Io {
                op: "flush",
                offset: e.seg.disk_offset,
                len: e.seg.len,
                source,
            })?;
        }
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.writable("discard")?;
        check_range(offset, len, self.size)?;
        for (ext, file_off, req_off, part_len) in self.parts(offset, len) {
            match discard_range(&ext.seg.file, ext.is_block_device, file_off, part_len) {
                Ok(()) => {}
                Err(e) if unsupported(e) => {}
                Err(e) => {
                    return Err(BlockError::Io {
                        op: "discard",
                        offset: offset + req_off,
                        len: part_len,
                        source: e.into(),
                    })
                }
            }
        }
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.writable("write-zeroes")?;
        check_range(offset, len, self.size)?;
        for (ext, file_off, req_off, part_len) in self.parts(offset, len) {
            let io_err = |source| BlockError::Io {
                op: "write-zeroes",
                offset: offset + req_off,
                len: part_len,
                source,
            };
            match zero_range_fast(&ext.seg.file, ext.is_block_device, file_off, part_len, unmap) {
                Ok(()) => {}
                Err(e) if unsupported(e) => {
                    write_zero_data(&ext.seg.file, file_off, part_len).map_err(io_err)?
                }
                Err(e) => return Err(io_err(e.into())),
            }
        }
        Ok(())
    }

    fn try_clone(&self) -> Result<Box<dyn BlockBackend>> {
        Ok(Box::new(self.clone()))
    }
}

fn write_zero_data(file: &File, mut offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 1 << 20;
    let zeroes = vec![0u8; CHUNK.min(len) as usize];
    let end = offset + len;
    while offset < end {
        let n = (end - offset).min(CHUNK) as usize;
        file.write_all_at(&zeroes[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}
