//! Logical pools: LVM's model without device-mapper.
//!
//! A volume group spans physical volumes (files or block devices). Each PV starts with a
//! [`label`] and a two-slot [`metadata`] area; logical volumes are extent maps onto the PVs
//! (extent size 4 MiB by default). Nothing is mapped by the kernel: a logical volume is
//! reached through [`LogicalPool::open_lv`] (an [`LvDevice`]) or [`LogicalPool::lv_segments`].
//!
//! Data is written and fsynced before the metadata that makes it visible is committed: new
//! extents are zeroed (so a new volume never shows an old one's data), snapshot and clone data
//! is copied. Snapshots (a volume created with a backing volume) are full copies made at
//! creation, not copy-on-write: simple and independent of the origin afterwards.

pub mod alloc;
pub mod device;
pub mod label;
pub mod metadata;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use device::{LvDevice, Segment};
use label::{hex, Label, DATA_START, LABEL_SIZE, SLOT_SIZE};
use metadata::{LvMeta, MetadataError, VgMetadata, SLOT_HEADER};

use super::copy;
use super::def::{validate_name, PoolDef, PoolKind};
use super::error::{PoolError, Result};
use super::failpoint;
use super::image::{file_len, VolumeIo};
use super::volume::{VolFormat, VolumeInfo};
use super::{copy_err, Lifecycle, Pool, PoolOp, PoolState};

/// An open PV.
#[derive(Debug)]
struct Pv {
    path: PathBuf,
    file: Arc<File>,
}

/// The loaded volume group of a running pool.
#[derive(Debug)]
struct Vg {
    vg_uuid: [u8; 16],
    /// In the order of `meta.pvs`.
    pvs: Vec<Pv>,
    meta: VgMetadata,
}

/// A logical pool (a volume group).
#[derive(Debug)]
pub struct LogicalPool {
    def: PoolDef,
    life: Lifecycle,
    source_devs: Vec<PathBuf>,
    vg_name: String,
    extent_size: u64,
    vg: Option<Vg>,
}

fn meta_err(pool: &str) -> impl Fn(MetadataError) -> PoolError + '_ {
    move |source| PoolError::Metadata { pool: pool.to_string(), source }
}

fn pv_io(pv: &Path) -> impl FnOnce(std::io::Error) -> MetadataError + '_ {
    move |source| MetadataError::Io { pv: pv.to_path_buf(), source }
}

fn slot_offset(seq: u64) -> u64 {
    LABEL_SIZE + (seq % 2) * SLOT_SIZE
}

impl LogicalPool {
    /// A logical pool for `def` in `state`; a running pool's metadata is loaded now. If that
    /// fails the pool is marked inaccessible (it can still be stopped) and the error returned
    /// by later volume calls.
    pub fn open(def: PoolDef, state: PoolState) -> Result<LogicalPool> {
        let PoolKind::Logical { source_devs, vg_name, extent_size } = &def.kind else {
            return Err(PoolError::Invalid {
                name: def.name.clone(),
                reason: "not a logical pool".into(),
            });
        };
        let mut pool = LogicalPool {
            source_devs: source_devs.clone(),
            vg_name: vg_name.clone(),
            extent_size: *extent_size,
            life: Lifecycle::new(&def.name, state),
            def,
            vg: None,
        };
        if state.is_active() {
            match pool.load() {
                Ok(vg) => {
                    pool.vg = Some(vg);
                    pool.life.set(PoolState::Running);
                }
                Err(_) => pool.life.set(PoolState::Inaccessible),
            }
        }
        Ok(pool)
    }

    fn open_pv(&self, path: &Path) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| meta_err(&self.def.name)(pv_io(path)(e)))
    }

    /// Reads labels and metadata of all source devices; repairs PVs whose newest copy is older
    /// than the winner.
    fn load(&self) -> Result<Vg> {
        let me = meta_err(&self.def.name);
        let mut found: Vec<(PathBuf, File, Label)> = vec![];
        for path in &self.source_devs {
            let file = self.open_pv(path)?;
            let label = Label::read(&file, path)
                .map_err(&me)?
                .ok_or_else(|| me(MetadataError::NoLabel { pv: path.clone() }))?;
            if label.vg_name != self.vg_name {
                return Err(PoolError::PvInUse {
                    pool: self.def.name.clone(),
                    pv: path.clone(),
                    vg: label.vg_name,
                });
            }
            if let Some((p0, _, l0)) = found.first() {
                if l0.vg_uuid != label.vg_uuid {
                    return Err(me(MetadataError::Mismatch {
                        vg: self.vg_name.clone(),
                        reason: format!(
                            "'{}' and '{}' carry different VG UUIDs",
                            p0.display(),
                            path.display()
                        ),
                    }));
                }
            }
            found.push((path.clone(), file, label));
        }
        let vg_uuid = found[0].2.vg_uuid;
        // Best copy per PV, then the winner across PVs.
        let mut best: Option<VgMetadata> = None;
        let mut per_pv_seq = vec![];
        for (path, file, _) in &found {
            let mut copies = vec![];
            let mut why = vec![];
            for slot in 0..2u64 {
                let mut buf = vec![0u8; SLOT_SIZE as usize];
                file.read_exact_at(&mut buf, LABEL_SIZE + slot * SLOT_SIZE)
                    .map_err(|e| me(pv_io(path)(e)))?;
                match VgMetadata::decode_slot(&buf, &vg_uuid) {
                    Ok(m) if m.seq % 2 == slot => {
                        copies.push(m);
                        why.push("valid".to_string());
                    }
                    Ok(_) => why.push("sequence number in the wrong slot".to_string()),
                    Err(e) => why.push(e),
                }
            }
            let Some(m) = copies.into_iter().max_by_key(|m| m.seq) else {
                return Err(me(MetadataError::Corrupt {
                    pv: path.clone(),
                    slot0: why.first().cloned().unwrap_or_default(),
                    slot1: why.get(1).cloned().unwrap_or_default(),
                }));
            };
            per_pv_seq.push(m.seq);
            if best.as_ref().is_none_or(|b| m.seq > b.seq) {
                best = Some(m);
            }
        }
        let meta = best.expect("at least one PV");
        if meta.vg_name != self.vg_name || meta.extent_size != self.extent_size {
            return Err(me(MetadataError::Mismatch {
                vg: self.vg_name.clone(),
                reason: format!(
                    "on-disk VG is '{}' with {} byte extents; the definition says '{}' with {}",
                    meta.vg_name, meta.extent_size, self.vg_name, self.extent_size
                ),
            }));
        }
        let mut pvs = vec![];
        for pm in &meta.pvs {
            let Some(i) = found.iter().position(|(_, _, l)| hex(&l.pv_uuid) == pm.uuid) else {
                return Err(me(MetadataError::Mismatch {
                    vg: self.vg_name.clone(),
                    reason: format!(
                        "PV {} (last seen at '{}') is not among the source devices",
                        pm.uuid,
                        pm.device.display()
                    ),
                }));
            };
            let (path, file, _) = found.swap_remove(i);
            if file_len(&file).map_err(|e| me(pv_io(&path)(e)))?
                < DATA_START + pm.pe_count * meta.extent_size
            {
                return Err(me(MetadataError::Mismatch {
                    vg: self.vg_name.clone(),
                    reason: format!(
                        "'{}' is smaller than its {} extents",
                        path.display(),
                        pm.pe_count
                    ),
                }));
            }
            pvs.push(Pv { path, file: Arc::new(file) });
        }
        if let Some((path, _, _)) = found.first() {
            return Err(me(MetadataError::Mismatch {
                vg: self.vg_name.clone(),
                reason: format!(
                    "'{}' carries this VG's label but is not in its metadata",
                    path.display()
                ),
            }));
        }
        let mut vg = Vg { vg_uuid, pvs, meta };
        if per_pv_seq.iter().any(|&s| s != vg.meta.seq) {
            // A commit was cut short: bring every PV to the winner with a fresh commit.
            let m = vg.meta.clone();
            commit(&mut vg, m).map_err(&me)?;
        }
        Ok(vg)
    }

    fn vg(&self) -> Result<&Vg> {
        self.life.require(PoolOp::Volumes)?;
        self.vg.as_ref().ok_or_else(|| PoolError::BadState {
            pool: self.def.name.clone(),
            op: PoolOp::Volumes,
            state: self.state(),
        })
    }

    fn vg_mut(&mut self) -> Result<&mut Vg> {
        self.vg()?;
        Ok(self.vg.as_mut().expect("checked"))
    }

    fn lv<'a>(&self, vg: &'a Vg, name: &str) -> Result<&'a LvMeta> {
        vg.meta.lvs.iter().find(|l| l.name == name).ok_or_else(|| PoolError::VolumeNotFound {
            pool: self.def.name.clone(),
            volume: name.to_string(),
        })
    }

    /// The byte segments of logical volume `name`, in LV order.
    pub fn lv_segments(&self, name: &str) -> Result<Vec<Segment>> {
        let vg = self.vg()?;
        let lv = self.lv(vg, name)?;
        Ok(segments_of(vg, lv).into_iter().map(|(s, _)| s).collect())
    }

    /// Opens logical volume `name` for byte access.
    pub fn open_lv(&self, name: &str, writable: bool) -> Result<LvDevice> {
        let vg = self.vg()?;
        let lv = self.lv(vg, name)?;
        Ok(LvDevice::new(lv.size, writable, segments_of(vg, lv)))
    }

    /// The committed metadata (for tests and tools).
    pub fn metadata(&self) -> Result<&VgMetadata> {
        Ok(&self.vg()?.meta)
    }

    fn info_of(&self, lv: &LvMeta) -> VolumeInfo {
        VolumeInfo {
            name: lv.name.clone(),
            path: None,
            key: format!("{}/{}", self.vg_name, lv.name),
            format: VolFormat::Raw,
            capacity: lv.size,
            allocation: lv.extents() * self.extent_size,
            backing: lv.origin.clone(),
        }
    }

    fn no_space(&self, vg: &Vg, needed_extents: u64) -> PoolError {
        PoolError::NoSpace {
            pool: self.def.name.clone(),
            needed: needed_extents * self.extent_size,
            available: alloc::free_extents(&vg.meta) * self.extent_size,
        }
    }

    /// Creates an LV of `size` bytes, optionally a copy of `origin` (an LV of this pool),
    /// recorded as its origin when `snapshot`.
    fn create_lv(
        &mut self,
        name: &str,
        size: u64,
        origin: Option<&str>,
        snapshot: bool,
    ) -> Result<VolumeInfo> {
        validate_name("volume", name)?;
        let pool = self.def.name.clone();
        let vg = self.vg()?;
        if vg.meta.lvs.iter().any(|l| l.name == name) {
            return Err(PoolError::VolumeExists { pool, volume: name.to_string() });
        }
        let src = match origin {
            Some(o) => Some(self.open_lv(o, false)?),
            None => None,
        };
        let count = size.div_ceil(self.extent_size);
        let segments =
            alloc::allocate(&vg.meta, 0, count, None).ok_or_else(|| self.no_space(vg, count))?;
        let lv = LvMeta {
            name: name.to_string(),
            size,
            segments,
            origin: origin.filter(|_| snapshot).map(str::to_string),
        };
        // Data first: zero the extents, copy the origin, make it durable.
        let dev = LvDevice::new(count * self.extent_size, true, segments_of(vg, &lv));
        let data_err = |source| PoolError::Image {
            pool: pool.clone(),
            volume: name.to_string(),
            what: "prepare extents",
            source,
        };
        failpoint::point("logical.create.zero");
        dev.write_zeroes(0, dev.size()).map_err(data_err)?;
        if let Some(src) = &src {
            copy::copy(src, &dev, &mut |_, _| {}).map_err(|e| copy_err(&pool, name, e, size))?;
        }
        failpoint::point("logical.create.sync_data");
        dev.flush().map_err(data_err)?;
        let info = self.info_of(&lv);
        self.update(|meta| {
            meta.lvs.push(lv);
            meta.lvs.sort_by(|a, b| a.name.cmp(&b.name));
        })?;
        Ok(info)
    }

    /// Commits a change to the metadata. If writing fails part-way, the PVs may disagree until
    /// the next load, so the pool turns inaccessible until a refresh reloads (and repairs) it.
    fn update(&mut self, change: impl FnOnce(&mut VgMetadata)) -> Result<()> {
        let pool = self.def.name.clone();
        let vg = self.vg_mut()?;
        let mut meta = vg.meta.clone();
        change(&mut meta);
        let r = commit(vg, meta);
        if let Err(MetadataError::Io { .. }) = r {
            self.vg = None;
            self.life.set(PoolState::Inaccessible);
        }
        r.map_err(meta_err(&pool))
    }
}

/// The byte segments of `lv` with the PV files.
fn segments_of(vg: &Vg, lv: &LvMeta) -> Vec<(Segment, Arc<File>)> {
    let ext = vg.meta.extent_size;
    let mut out = vec![];
    for s in &lv.segments {
        let lv_offset = s.lv_start * ext;
        if lv_offset >= lv.size {
            break;
        }
        let len = (s.count * ext).min(lv.size - lv_offset);
        let pv = &vg.pvs[s.pv];
        let seg = Segment {
            lv_offset,
            len,
            pv_path: pv.path.clone(),
            pv_offset: DATA_START + s.pv_start * ext,
        };
        out.push((seg, pv.file.clone()));
    }
    out
}

/// Commits `meta` as the next sequence number on every PV (see [`metadata`]).
fn commit(vg: &mut Vg, mut meta: VgMetadata) -> Result<(), MetadataError> {
    meta.seq = vg.meta.seq + 1;
    meta.validate()?;
    let bytes = meta.encode_slot(&vg.vg_uuid)?;
    write_slots(&vg.pvs, &bytes, meta.seq)?;
    vg.meta = meta;
    Ok(())
}

/// Writes a slot image for sequence `seq` to every PV, each fsynced before the next.
fn write_slots(pvs: &[Pv], bytes: &[u8], seq: u64) -> Result<(), MetadataError> {
    let off = slot_offset(seq);
    let half = bytes.len().min(SLOT_HEADER + 512);
    for pv in pvs {
        failpoint::point("logical.meta.write");
        pv.file.write_all_at(&bytes[..half], off).map_err(pv_io(&pv.path))?;
        failpoint::point("logical.meta.torn_write");
        pv.file.write_all_at(&bytes[half..], off + half as u64).map_err(pv_io(&pv.path))?;
        failpoint::point("logical.meta.fsync");
        pv.file.sync_data().map_err(pv_io(&pv.path))?;
    }
    Ok(())
}

mod pool_impl;
