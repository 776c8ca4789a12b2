//! The physical volume label: the first 4 KiB of each PV, saying which volume group it belongs
//! to and where its metadata area and data start.
//!
//! ```text
//! 0     magic "HVPVLBL1"        8   version (u32 LE)     12 reserved
//! 16    PV UUID (16 bytes)      32  VG UUID (16 bytes)
//! 48    data start (u64 LE)     56  metadata slot size (u64 LE)
//! 64    VG name length (u16 LE) 66  VG name (up to 200 bytes)
//! 4092  CRC-32C of bytes 0..4092
//! ```
//! The metadata area follows the label: two slots of [`SLOT_SIZE`] bytes (see `metadata`),
//! then the extents from [`DATA_START`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::metadata::MetadataError;
use crate::pool::crc32c::crc32c;

/// Size of the label block.
pub const LABEL_SIZE: u64 = 4096;
/// Size of each of the two metadata slots.
pub const SLOT_SIZE: u64 = 510 * 1024;
/// Where the extents start on every PV (1 MiB, after label and both slots).
pub const DATA_START: u64 = LABEL_SIZE + 2 * SLOT_SIZE;

const MAGIC: &[u8; 8] = b"HVPVLBL1";
const VERSION: u32 = 1;

/// A PV label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// This PV's UUID.
    pub pv_uuid: [u8; 16],
    /// The volume group's UUID.
    pub vg_uuid: [u8; 16],
    /// The volume group's name.
    pub vg_name: String,
}

impl Label {
    /// Encodes the label block.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; LABEL_SIZE as usize];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..32].copy_from_slice(&self.pv_uuid);
        b[32..48].copy_from_slice(&self.vg_uuid);
        b[48..56].copy_from_slice(&DATA_START.to_le_bytes());
        b[56..64].copy_from_slice(&SLOT_SIZE.to_le_bytes());
        let name = self.vg_name.as_bytes();
        b[64..66].copy_from_slice(&(name.len() as u16).to_le_bytes());
        b[66..66 + name.len()].copy_from_slice(name);
        let crc = crc32c(&b[..4092]);
        b[4092..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a label block: `Ok(None)` when there is no label magic (not a PV), an error when
    /// there is one but the block is damaged or from an unknown version.
    pub fn decode(b: &[u8], pv: &Path) -> Result<Option<Label>, MetadataError> {
        if b.len() < LABEL_SIZE as usize || &b[0..8] != MAGIC {
            return Ok(None);
        }
        let bad = |reason: &str| MetadataError::BadLabel {
            pv: pv.to_path_buf(),
            reason: reason.to_string(),
        };
        let crc = u32::from_le_bytes(b[4092..4096].try_into().expect("4 bytes"));
        if crc32c(&b[..4092]) != crc {
            return Err(bad("checksum mismatch"));
        }
        if u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) != VERSION {
            return Err(bad("unknown label version"));
        }
        if u64::from_le_bytes(b[48..56].try_into().expect("8 bytes")) != DATA_START
            || u64::from_le_bytes(b[56..64].try_into().expect("8 bytes")) != SLOT_SIZE
        {
            return Err(bad("unexpected layout"));
        }
        let len = u16::from_le_bytes([b[64], b[65]]) as usize;
        if len == 0 || len > 200 {
            return Err(bad("bad volume group name length"));
        }
        let vg_name = std::str::from_utf8(&b[66..66 + len])
            .map_err(|_| bad("volume group name is not UTF-8"))?
            .to_string();
        Ok(Some(Label {
            pv_uuid: b[16..32].try_into().expect("16 bytes"),
            vg_uuid: b[32..48].try_into().expect("16 bytes"),
            vg_name,
        }))
    }

    /// Reads the label of an open PV.
    pub fn read(file: &File, pv: &Path) -> Result<Option<Label>, MetadataError> {
        let mut b = vec![0u8; LABEL_SIZE as usize];
        match file.read_exact_at(&mut b, 0) {
            Ok(()) => Self::decode(&b, pv),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(source) => Err(MetadataError::Io { pv: pv.to_path_buf(), source }),
        }
    }
}

/// Lower-case hex of a UUID.
pub fn hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}
