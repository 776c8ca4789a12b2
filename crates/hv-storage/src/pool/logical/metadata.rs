//! The volume group metadata and its crash-safe on-disk form.
//!
//! Every PV has two metadata slots after its label. A commit writes the whole metadata, with
//! the next sequence number, into the slot `seq % 2` of every PV and fsyncs each; the slot
//! holding the previous sequence is never touched by that commit, so a crash at any point
//! leaves, somewhere, a valid copy of the old state or of the new. On open, the valid copy with
//! the highest sequence number across all PVs wins (LVM2 keeps two checksummed copies for the
//! same reason). A PV whose label is valid but whose two slots are both invalid is reported as
//! [`MetadataError::Corrupt`], never reinitialised.
//!
//! Slot layout: a 64-byte header, then the JSON body.
//! ```text
//! 0  magic "HVVGMDA1"   8  sequence (u64 LE)   16 body length (u32 LE)   20 body CRC-32C (u32 LE)
//! 24 VG UUID (16 bytes) 40 reserved            60 header CRC-32C of bytes 0..60
//! ```

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::label::SLOT_SIZE;
use crate::pool::crc32c::crc32c;
use crate::pool::def::validate_name;

const MAGIC: &[u8; 8] = b"HVVGMDA1";
/// Size of a slot header.
pub const SLOT_HEADER: usize = 64;

/// What is wrong with a logical pool's on-disk labels or metadata.
#[derive(Debug, Error)]
pub enum MetadataError {
    /// Reading or writing a PV failed.
    #[error("physical volume '{pv}': {source}")]
    Io {
        /// The PV.
        pv: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The device has no PV label (run pool-build).
    #[error("'{pv}' is not a physical volume (no label; run pool-build)")]
    NoLabel {
        /// The device or file.
        pv: PathBuf,
    },
    /// A PV label is damaged.
    #[error("physical volume '{pv}' has a damaged label: {reason}")]
    BadLabel {
        /// The PV.
        pv: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Both metadata copies of a PV are invalid.
    #[error("metadata area of physical volume '{pv}' is corrupt: neither copy is valid (slot 0: {slot0}; slot 1: {slot1})")]
    Corrupt {
        /// The PV.
        pv: PathBuf,
        /// Why slot 0 was rejected.
        slot0: String,
        /// Why slot 1 was rejected.
        slot1: String,
    },
    /// PVs that do not belong together, or metadata that names a missing PV.
    #[error("volume group '{vg}': {reason}")]
    Mismatch {
        /// The volume group.
        vg: String,
        /// What does not match.
        reason: String,
    },
    /// Metadata that decodes but does not describe a consistent volume group.
    #[error("inconsistent metadata: {0}")]
    Inconsistent(String),
    /// The metadata no longer fits in a slot.
    #[error("metadata of {0} bytes does not fit in a metadata slot")]
    TooLarge(usize),
}

/// One physical volume as the metadata records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvMeta {
    /// The PV UUID (hex), as in its label.
    pub uuid: String,
    /// Number of extents on it.
    pub pe_count: u64,
    /// The device path when the VG was built (informational; PVs are found by UUID).
    pub device: PathBuf,
}

/// A run of extents of a logical volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegMeta {
    /// First LV extent covered.
    pub lv_start: u64,
    /// Number of extents.
    pub count: u64,
    /// Index into [`VgMetadata::pvs`].
    pub pv: usize,
    /// First PV extent.
    pub pv_start: u64,
}

/// A logical volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvMeta {
    /// The name.
    pub name: String,
    /// Size in bytes (at most its extents' size).
    pub size: u64,
    /// Its extents, in LV order.
    pub segments: Vec<SegMeta>,
    /// The volume it was snapshotted from, if any (informational: snapshots are full copies).
    pub origin: Option<String>,
}

impl LvMeta {
    /// Number of extents allocated.
    pub fn extents(&self) -> u64 {
        self.segments.iter().map(|s| s.count).sum()
    }
}

/// The volume group metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgMetadata {
    /// The VG name.
    pub vg_name: String,
    /// The VG UUID (hex).
    pub vg_uuid: String,
    /// Commit sequence number, one more at every commit.
    pub seq: u64,
    /// Extent size in bytes.
    pub extent_size: u64,
    /// The PVs, in a fixed order that segments refer to.
    pub pvs: Vec<PvMeta>,
    /// The logical volumes.
    pub lvs: Vec<LvMeta>,
}

impl VgMetadata {
    /// Checks that the metadata describes a consistent volume group: valid names, segments
    /// that tile each LV and lie on their PV, no extent used twice.
    pub fn validate(&self) -> Result<(), MetadataError> {
        let bad = |s: String| Err(MetadataError::Inconsistent(s));
        if !self.extent_size.is_power_of_two() || !(64 << 10..=1 << 30).contains(&self.extent_size)
        {
            return bad(format!("extent size {}", self.extent_size));
        }
        if self.pvs.is_empty() || self.pvs.len() > 256 {
            return bad(format!("{} physical volumes", self.pvs.len()));
        }
        let mut names = BTreeSet::new();
        let mut used: Vec<Vec<(u64, u64)>> = vec![vec![]; self.pvs.len()];
        for lv in &self.lvs {
            if validate_name("volume", &lv.name).is_err() || !names.insert(lv.name.as_str()) {
                return bad(format!("bad or repeated volume name '{}'", lv.name));
            }
            let mut next = 0u64;
            for s in &lv.segments {
                let Some(pv) = self.pvs.get(s.pv) else {
                    return bad(format!("'{}' names PV #{}", lv.name, s.pv));
                };
                let end = s.pv_start.checked_add(s.count);
                if s.count == 0 || s.lv_start != next || end.is_none_or(|e| e > pv.pe_count) {
                    return bad(format!("bad segment {s:?} of '{}'", lv.name));
                }
                next += s.count;
                used[s.pv].push((s.pv_start, s.count));
            }
            let bytes = next.checked_mul(self.extent_size);
            if lv.size == 0 || bytes.is_none_or(|b| lv.size > b || b - lv.size >= self.extent_size)
            {
                return bad(format!(
                    "size {} of '{}' does not match its {next} extents",
                    lv.size, lv.name
                ));
            }
        }
        for (i, runs) in used.iter_mut().enumerate() {
            runs.sort();
            if runs.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
                return bad(format!("an extent of PV #{i} is used twice"));
            }
        }
        Ok(())
    }

    /// Encodes the slot image (header and body) of this metadata.
    pub fn encode_slot(&self, vg_uuid: &[u8; 16]) -> Result<Vec<u8>, MetadataError> {
        let body = serde_json::to_vec(self).expect("metadata serialises");
        if body.len() > SLOT_SIZE as usize - SLOT_HEADER {
            return Err(MetadataError::TooLarge(body.len()));
        }
        let mut b = vec![0u8; SLOT_HEADER];
        b[0..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..20].copy_from_slice(&(body.len() as u32).to_le_bytes());
        b[20..24].copy_from_slice(&crc32c(&body).to_le_bytes());
        b[24..40].copy_from_slice(vg_uuid);
        let crc = crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&body);
        Ok(b)
    }

    /// Decodes a slot (`buf` is the slot's bytes, at least the header). `Err` says why the copy
    /// is not valid.
    pub fn decode_slot(buf: &[u8], vg_uuid: &[u8; 16]) -> Result<VgMetadata, String> {
        if buf.len() < SLOT_HEADER {
            return Err("short slot".into());
        }
        if &buf[0..8] != MAGIC {
            return Err("no metadata magic".into());
        }
        let le32 = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
        if crc32c(&buf[..60]) != le32(60) {
            return Err("header checksum mismatch".into());
        }
        if &buf[24..40] != vg_uuid {
            return Err("belongs to another volume group".into());
        }
        let seq = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
        let len = le32(16) as usize;
        if len > SLOT_SIZE as usize - SLOT_HEADER || SLOT_HEADER + len > buf.len() {
            return Err(format!("body length {len} out of range"));
        }
        let body = &buf[SLOT_HEADER..SLOT_HEADER + len];
        if crc32c(body) != le32(20) {
            return Err("body checksum mismatch".into());
        }
        let meta: VgMetadata =
            serde_json::from_slice(body).map_err(|e| format!("body does not parse: {e}"))?;
        if meta.seq != seq {
            return Err("sequence numbers of header and body differ".into());
        }
        if meta.vg_uuid != super::label::hex(vg_uuid) {
            return Err("body names another volume group".into());
        }
        meta.validate().map_err(|e| e.to_string())?;
        Ok(meta)
    }
}
