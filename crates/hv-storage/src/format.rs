//! Image formats and hv's own qcow2 header check.
//!
//! Probing (what an image file is, read from its first bytes, never from its name) happens only
//! where a caller asks for it: a pool when it first sees a file placed by hand, `open_disk` with
//! [`crate::block::DiskFormat::Auto`]. Everywhere else the format is explicit or recorded.
//!
//! Every qcow2 header is parsed and checked here before the image library (imago) sees the
//! file, so a malformed header is a typed [`FormatError`] naming the file, never a panic inside
//! the library (imago 0.2.6 slices a feature-name table entry without checking its length).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ImageFormat {
    /// Bytes as they are: a raw file, a block device, a logical volume.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
}

impl ImageFormat {
    /// The name qemu-img, virsh and the qcow2 backing-format extension use.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }

    /// The format a qcow2 backing-format extension names (`file` is QEMU's name for raw).
    pub fn from_backing_name(name: &str) -> Option<Self> {
        match name {
            "raw" | "file" => Some(ImageFormat::Raw),
            "qcow2" => Some(ImageFormat::Qcow2),
            _ => None,
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The format of a volume (the same type: pools record it per volume).
pub type VolFormat = ImageFormat;

/// qcow2's magic, `QFI\xfb`.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// qcow2 header extension: backing file format name.
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
/// qcow2 header extension: external data file name.
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// qcow2 header extension: feature name table (48-byte entries).
const EXT_FEATURE_NAMES: u32 = 0x6803_F857;
/// Incompatible feature bits we know: dirty, corrupt, external data file, compression type,
/// extended L2 entries.
const KNOWN_INCOMPATIBLE: u64 = 0b1_1111;

/// Magics of formats we recognise but do not handle, so they are never taken for raw data.
const OTHER_MAGICS: &[(&[u8], &str)] = &[
    (b"QFI", "qcow (version 1)"),
    (b"KDMV", "vmdk"),
    (b"vhdxfile", "vhdx"),
    (b"conectix", "vpc"),
    (b"LUKS\xba\xbe", "luks"),
    (b"WithoutFreeSpace", "parallels"),
    (b"QED\0", "qed"),
];

/// A file whose format could not be determined or is not usable.
#[derive(Debug, Error)]
pub enum FormatError {
    /// Reading the file failed.
    #[error("cannot read image '{path}': {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A qcow2 header that is malformed or uses something we cannot handle.
    #[error("image '{path}' has a bad qcow2 header: {reason}")]
    BadQcow2 {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A known image format that hv does not handle.
    #[error(
        "image '{path}' is in format '{format}', which hv does not handle (raw and qcow2 only)"
    )]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The format found.
        format: &'static str,
    },
}

/// What a qcow2 header says, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    /// 2 or 3.
    pub version: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// The backing file name as stored (relative names are relative to the image).
    pub backing_file: Option<String>,
    /// The backing format extension, if present.
    pub backing_format: Option<ImageFormat>,
    /// The external data file name extension, if present (relative names are relative to the
    /// image).
    pub data_file: Option<String>,
}

/// The result of probing a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probed {
    /// No known magic: raw data of this length.
    Raw {
        /// The file or device length in bytes.
        size: u64,
    },
    /// A valid qcow2 header.
    Qcow2(Qcow2Header),
}

impl Probed {
    /// The volume format.
    pub fn format(&self) -> VolFormat {
        match self {
            Probed::Raw { .. } => VolFormat::Raw,
            Probed::Qcow2(_) => VolFormat::Qcow2,
        }
    }

    /// The virtual size in bytes.
    pub fn capacity(&self) -> u64 {
        match self {
            Probed::Raw { size } => *size,
            Probed::Qcow2(h) => h.size,
        }
    }
}

/// Probes the file at `path`.
pub fn probe_path(path: &Path) -> Result<Probed, FormatError> {
    let io = |source| FormatError::Io { path: path.to_path_buf(), source };
    let mut f = File::open(path).map_err(io)?;
    probe(&mut f, path)
}

/// Probes an open file or device (`path` is only for messages).
pub fn probe<R: Read + Seek>(f: &mut R, path: &Path) -> Result<Probed, FormatError> {
    let io = |source| FormatError::Io { path: path.to_path_buf(), source };
    let len = f.seek(SeekFrom::End(0)).map_err(io)?;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut head = vec![0u8; 4096.min(len) as usize];
    f.read_exact(&mut head).map_err(io)?;
    if head.starts_with(&QCOW2_MAGIC) {
        let mut backing = vec![];
        let h = parse_qcow2_header(&head, len, |off, n| {
            backing = vec![0u8; n];
            f.seek(SeekFrom::Start(off))?;
            f.read_exact(&mut backing)?;
            Ok(backing.clone())
        });
        return h.map(Probed::Qcow2).map_err(|reason| match reason {
            HeaderIssue::Io(source) => FormatError::Io { path: path.to_path_buf(), source },
            HeaderIssue::Bad(reason) => FormatError::BadQcow2 { path: path.to_path_buf(), reason },
        });
    }
    for (magic, format) in OTHER_MAGICS {
        if head.starts_with(magic) {
            return Err(FormatError::Unsupported { path: path.to_path_buf(), format });
        }
    }
    Ok(Probed::Raw { size: len })
}

enum HeaderIssue {
    Io(io::Error),
    Bad(String),
}

impl From<io::Error> for HeaderIssue {
    fn from(e: io::Error) -> Self {
        HeaderIssue::Io(e)
    }
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Parses and checks a qcow2 header from the file's first bytes (`head`, up to 4 KiB) and the
/// file length; `read_at(offset, len)` fetches the backing file name.
fn parse_qcow2_header(
    head: &[u8],
    file_len: u64,
    mut read_at: impl FnMut(u64, usize) -> io::Result<Vec<u8>>,
) -> Result<Qcow2Header, HeaderIssue> {
    let bad = |s: &str| HeaderIssue::Bad(s.to_string());
    if head.len() < 72 {
        return Err(bad("the file is shorter than a qcow2 header"));
    }
    let version = be32(head, 4);
    if version != 2 && version != 3 {
        return Err(HeaderIssue::Bad(format!("unsupported version {version}")));
    }
    let backing_offset = be64(head, 8);
    let backing_len = be32(head, 16) as usize;
    let cluster_bits = be32(head, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(HeaderIssue::Bad(format!("cluster bits {cluster_bits} outside 9..=21")));
    }
    let cluster_size = 1u64 << cluster_bits;
    let size = be64(head, 24);
    if size > crate::pool::volume::MAX_CAPACITY {
        return Err(HeaderIssue::Bad(format!("virtual size {size} is too large")));
    }
    if be32(head, 32) != 0 {
        return Err(bad("encrypted images are not supported"));
    }
    let l1_size = be32(head, 36) as u64;
    let l1_offset = be64(head, 40);
    let reftable_offset = be64(head, 48);
    let reftable_clusters = be32(head, 56) as u64;
    // Each L1 entry covers cluster_size/8 clusters of cluster_size bytes.
    let l2_entries = cluster_size / 8;
    let needed_l1 = size.div_ceil(cluster_size).div_ceil(l2_entries);
    if l1_size < needed_l1 || l1_size > (32 << 20) / 8 {
        return Err(HeaderIssue::Bad(format!(
            "L1 table size {l1_size} does not fit virtual size {size}"
        )));
    }
    for (what, off) in [("L1 table", l1_offset), ("refcount table", reftable_offset)] {
        if off % cluster_size != 0 {
            return Err(HeaderIssue::Bad(format!("{what} offset {off:#x} is not cluster aligned")));
        }
        if off >= file_len.max(1) && !(what == "L1 table" && l1_size == 0) {
            return Err(HeaderIssue::Bad(format!(
                "{what} offset {off:#x} is past the end of the file"
            )));
        }
    }
    if reftable_clusters == 0 || reftable_clusters > (8 << 20) >> cluster_bits.min(23) {
        return Err(HeaderIssue::Bad(format!("refcount table of {reftable_clusters} clusters")));
    }
    let mut header_len = 72usize;
    if version == 3 {
        if head.len() < 104 {
            return Err(bad("the file is shorter than a version 3 header"));
        }
        let incompatible = be64(head, 72);
        if incompatible & !KNOWN_INCOMPATIBLE != 0 {
            return Err(HeaderIssue::Bad(format!(
                "unknown incompatible features {incompatible:#x}"
            )));
        }
        if incompatible & 0b10 != 0 {
            return Err(bad("the image is marked corrupt"));
        }
        let refcount_order = be32(head, 96);
        if refcount_order > 6 {
            return Err(HeaderIssue::Bad(format!("refcount order {refcount_order} above 6")));
        }
        header_len = be32(head, 100) as usize;
        if header_len < 104 || !header_len.is_multiple_of(8) || header_len > head.len() {
            return Err(HeaderIssue::Bad(format!("header length {header_len}")));
        }
    }
    // Header extensions, up to the end of the first cluster (or what we have read of it).
    let mut backing_format = None;
    let mut data_file = None;
    let mut pos = header_len;
    let limit = head.len().min(cluster_size as usize);
    loop {
        if pos + 8 > limit {
            return Err(bad("header extensions run past the first cluster"));
        }
        let ty = be32(head, pos);
        let len = be32(head, pos + 4) as usize;
        pos += 8;
        if ty == 0 {
            break;
        }
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= limit)
            .ok_or_else(|| bad("a header extension runs past the first cluster"))?;
        match ty {
            EXT_BACKING_FORMAT => {
                let s = std::str::from_utf8(&head[pos..end])
                    .map_err(|_| bad("backing format is not UTF-8"))?;
                backing_format = Some(ImageFormat::from_backing_name(s).ok_or_else(|| {
                    HeaderIssue::Bad(format!("backing format '{s}' is not raw or qcow2"))
                })?);
            }
            EXT_DATA_FILE => {
                let s = std::str::from_utf8(&head[pos..end])
                    .map_err(|_| bad("data file name is not UTF-8"))?;
                if s.is_empty() || s.contains('\0') {
                    return Err(bad("data file name is empty or contains a NUL byte"));
                }
                data_file = Some(s.to_string());
            }
            // imago 0.2.6 slices each 48-byte entry as `entry[2..]` without checking its
            // length (qcow2/metadata.rs:1027): a table whose length is not a whole number of
            // entries would panic it.
            EXT_FEATURE_NAMES if !len.is_multiple_of(48) => {
                return Err(HeaderIssue::Bad(format!(
                    "feature name table of {len} bytes is not a whole number of 48-byte entries"
                )))
            }
            _ => {}
        }
        pos = end.next_multiple_of(8);
    }
    let backing_file = if backing_offset != 0 {
        if backing_len == 0 || backing_len > 1023 {
            return Err(HeaderIssue::Bad(format!(
                "backing file name length {backing_len} outside 1..=1023"
            )));
        }
        if backing_offset >= cluster_size || backing_offset + backing_len as u64 > file_len {
            return Err(bad("backing file name lies outside the header cluster"));
        }
        let raw = read_at(backing_offset, backing_len)?;
        let s = String::from_utf8(raw).map_err(|_| bad("backing file name is not UTF-8"))?;
        if s.contains('\0') {
            return Err(bad("backing file name contains a NUL byte"));
        }
        Some(s)
    } else {
        None
    };
    if backing_format.is_some() && backing_file.is_none() {
        return Err(bad("a backing format without a backing file"));
    }
    Ok(Qcow2Header { version, size, cluster_bits, backing_file, backing_format, data_file })
}
