//! The [`Pool`] verbs of [`LogicalPool`].

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::label::{hex, Label, DATA_START, LABEL_SIZE, SLOT_SIZE};
use super::metadata::{PvMeta, VgMetadata};
use super::{alloc, meta_err, pv_io, write_slots, LogicalPool, LvDevice, Pv};
use crate::pool::def::{random_bytes, PoolDef};
use crate::pool::error::{PoolError, Result};
use crate::pool::failpoint;
use crate::pool::image::{file_len, VolumeIo};
use crate::pool::volume::{ResizeFlags, VolFormat, VolumeInfo, VolumeSpec};
use crate::pool::{BuildFlags, Pool, PoolInfo, PoolOp, PoolState};

impl LogicalPool {
    fn do_build(&self, flags: BuildFlags) -> Result<()> {
        let me = meta_err(&self.def.name);
        let mut pvs = vec![];
        for path in &self.source_devs {
            let file = self.open_pv(path)?;
            let len = file_len(&file).map_err(|e| me(pv_io(path)(e)))?;
            let pe_count = len.saturating_sub(DATA_START) / self.extent_size;
            if pe_count == 0 {
                return Err(PoolError::Invalid {
                    name: self.def.name.clone(),
                    reason: format!("'{}' ({len} bytes) is too small for one extent after the 1 MiB metadata area", path.display()),
                });
            }
            let mut head = vec![0u8; LABEL_SIZE as usize];
            let got = file.read_at(&mut head, 0).map_err(|e| me(pv_io(path)(e)))?;
            head.truncate(got);
            match Label::read(&file, path) {
                Ok(Some(l)) if l.vg_name != self.vg_name => {
                    return Err(PoolError::PvInUse { pool: self.def.name.clone(), pv: path.clone(), vg: l.vg_name })
                }
                Ok(Some(_)) if !flags.overwrite => {
                    return Err(PoolError::Invalid {
                        name: self.def.name.clone(),
                        reason: format!("'{}' is already a PV of this volume group (pool-build --overwrite rebuilds it, losing its volumes)", path.display()),
                    })
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) if !flags.overwrite && head.iter().any(|&b| b != 0) => {
                    return Err(PoolError::Invalid {
                        name: self.def.name.clone(),
                        reason: format!("'{}' holds data (pool-build --overwrite to use it anyway)", path.display()),
                    })
                }
                Ok(None) | Err(_) => {}
            }
            pvs.push((path.clone(), file, pe_count));
        }
        let vg_uuid = random_bytes::<16>().map_err(|e| me(pv_io(&self.source_devs[0])(e)))?;
        let mut labels = vec![];
        let mut meta = VgMetadata {
            vg_name: self.vg_name.clone(),
            vg_uuid: hex(&vg_uuid),
            seq: 1,
            extent_size: self.extent_size,
            pvs: vec![],
            lvs: vec![],
        };
        for (path, _, pe_count) in &pvs {
            let pv_uuid = random_bytes::<16>().map_err(|e| me(pv_io(path)(e)))?;
            meta.pvs.push(PvMeta {
                uuid: hex(&pv_uuid),
                pe_count: *pe_count,
                device: path.clone(),
            });
            labels.push(Label { pv_uuid, vg_uuid, vg_name: self.vg_name.clone() });
        }
        meta.validate().map_err(&me)?;
        let bytes = meta.encode_slot(&vg_uuid).map_err(&me)?;
        // Per PV: old label off, metadata in, then the label: a valid label always has metadata.
        let opened: Vec<Pv> =
            pvs.into_iter().map(|(path, file, _)| Pv { path, file: file.into() }).collect();
        for (pv, label) in opened.iter().zip(&labels) {
            let io = |e| me(pv_io(&pv.path)(e));
            failpoint::point("logical.build.clear");
            pv.file.write_all_at(&[0u8; LABEL_SIZE as usize], 0).map_err(io)?;
            pv.file.write_all_at(&[0u8; 64], LABEL_SIZE + SLOT_SIZE).map_err(io)?;
            write_slots(std::slice::from_ref(pv), &bytes, 1).map_err(&me)?;
            failpoint::point("logical.build.label");
            pv.file.write_all_at(&label.encode(), 0).map_err(io)?;
            pv.file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    fn do_delete(&self) -> Result<()> {
        let me = meta_err(&self.def.name);
        let vg = self.load()?;
        if !vg.meta.lvs.is_empty() {
            return Err(PoolError::Invalid {
                name: self.def.name.clone(),
                reason: format!(
                    "the volume group still holds {} logical volume(s); delete them first",
                    vg.meta.lvs.len()
                ),
            });
        }
        for pv in &vg.pvs {
            let io = |e| me(pv_io(&pv.path)(e));
            failpoint::point("logical.delete.label");
            pv.file.write_all_at(&[0u8; LABEL_SIZE as usize], 0).map_err(io)?;
            pv.file.write_all_at(&[0u8; 64], LABEL_SIZE).map_err(io)?;
            pv.file.write_all_at(&[0u8; 64], LABEL_SIZE + SLOT_SIZE).map_err(io)?;
            pv.file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    fn resize_lv(&mut self, name: &str, capacity: u64, flags: ResizeFlags) -> Result<()> {
        let pool = self.def.name.clone();
        let ext = self.extent_size;
        let vg = self.vg()?;
        let mut lv = self.lv(vg, name)?.clone();
        if capacity < lv.size && !flags.allow_shrink {
            return Err(PoolError::ShrinkRefused {
                pool,
                volume: name.to_string(),
                current: lv.size,
                requested: capacity,
            });
        }
        if capacity == 0 || capacity > crate::pool::volume::MAX_CAPACITY {
            return Err(PoolError::Invalid {
                name: name.to_string(),
                reason: format!("capacity {capacity} out of range"),
            });
        }
        let have = lv.extents();
        let want = capacity.div_ceil(ext);
        if want > have {
            let prefer = lv.segments.last().map(|s| (s.pv, s.pv_start + s.count));
            let new = alloc::allocate(&vg.meta, have, want - have, prefer)
                .ok_or_else(|| self.no_space(vg, want - have))?;
            alloc::append(&mut lv.segments, new);
        } else {
            alloc::truncate(&mut lv.segments, want);
        }
        let old_size = lv.size;
        lv.size = capacity;
        if capacity > old_size {
            // Zero the grown range (new extents, and the old tail past the former size).
            let dev = LvDevice::new(capacity, true, super::segments_of(vg, &lv));
            let data_err = |source| PoolError::Image {
                pool: pool.clone(),
                volume: name.to_string(),
                what: "zero new extents",
                source,
            };
            failpoint::point("logical.resize.zero");
            dev.write_zeroes(old_size, capacity - old_size).map_err(data_err)?;
            failpoint::point("logical.resize.sync_data");
            dev.flush().map_err(data_err)?;
        }
        self.update(|meta| {
            if let Some(slot) = meta.lvs.iter_mut().find(|l| l.name == lv.name) {
                *slot = lv;
            }
        })
    }
}

impl Pool for LogicalPool {
    fn def(&self) -> &PoolDef {
        &self.def
    }

    fn state(&self) -> PoolState {
        self.life.state()
    }

    fn build(&mut self, flags: BuildFlags) -> Result<()> {
        let before = self.life.begin(PoolOp::Build)?;
        let r = self.do_build(flags);
        self.life.end(PoolOp::Build, before, &r);
        r
    }

    fn start(&mut self) -> Result<()> {
        let before = self.life.begin(PoolOp::Start)?;
        let r = self.load().map(|vg| self.vg = Some(vg));
        self.life.end(PoolOp::Start, before, &r);
        r
    }

    fn stop(&mut self) -> Result<()> {
        let before = self.life.begin(PoolOp::Stop)?;
        self.vg = None;
        let r = Ok(());
        self.life.end(PoolOp::Stop, before, &r);
        r
    }

    fn refresh(&mut self) -> Result<()> {
        let before = self.life.begin(PoolOp::Refresh)?;
        let r = self.load().map(|vg| self.vg = Some(vg));
        self.life.end(PoolOp::Refresh, before, &r);
        if r.is_err() {
            self.vg = None;
            self.life.set(PoolState::Inaccessible);
        }
        r
    }

    fn delete(&mut self) -> Result<()> {
        let before = self.life.begin(PoolOp::Delete)?;
        let r = self.do_delete();
        self.life.end(PoolOp::Delete, before, &r);
        r
    }

    fn info(&self) -> Result<PoolInfo> {
        let mut info = PoolInfo::without_sizes(&self.def, self.state());
        if let Some(vg) = &self.vg {
            let total: u64 = vg.meta.pvs.iter().map(|p| p.pe_count).sum();
            let free = alloc::free_extents(&vg.meta);
            info.capacity = total * self.extent_size;
            info.allocation = (total - free) * self.extent_size;
            info.available = free * self.extent_size;
        }
        Ok(info)
    }

    fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        Ok(self.vg()?.meta.lvs.iter().map(|lv| self.info_of(lv)).collect())
    }

    fn create_volume(&mut self, spec: &VolumeSpec) -> Result<VolumeInfo> {
        self.vg()?;
        if spec.format != VolFormat::Raw {
            return Err(PoolError::Unsupported {
                pool: self.def.name.clone(),
                what: format!("{} volumes (logical volumes are raw)", spec.format),
            });
        }
        let origin_size = match &spec.backing {
            Some(o) => {
                let size = self.lv(self.vg()?, o)?.size;
                if spec.capacity.is_some_and(|c| c < size) {
                    return Err(PoolError::Invalid {
                        name: spec.name.clone(),
                        reason: format!("a snapshot of '{o}' needs at least {size} bytes"),
                    });
                }
                Some(size)
            }
            None => None,
        };
        let size = spec.capacity.or(origin_size).unwrap_or(0);
        self.create_lv(&spec.name, size, spec.backing.as_deref(), true)
    }

    fn delete_volume(&mut self, name: &str) -> Result<()> {
        self.lv(self.vg()?, name)?;
        self.update(|meta| meta.lvs.retain(|l| l.name != name))
    }

    fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        Ok(self.info_of(self.lv(self.vg()?, name)?))
    }

    fn volume_path(&self, name: &str) -> Result<PathBuf> {
        self.lv(self.vg()?, name)?;
        Err(PoolError::NoHostPath { pool: self.def.name.clone(), volume: name.to_string() })
    }

    fn resize_volume(&mut self, name: &str, capacity: u64, flags: ResizeFlags) -> Result<()> {
        self.resize_lv(name, capacity, flags)
    }

    fn clone_volume(&mut self, name: &str, new_name: &str) -> Result<VolumeInfo> {
        let size = self.lv(self.vg()?, name)?.size;
        self.create_lv(new_name, size, Some(name), false)
    }

    fn open_volume(&self, name: &str, writable: bool) -> Result<Box<dyn VolumeIo>> {
        Ok(Box::new(self.open_lv(name, writable)?))
    }

    fn open_disk(
        &self,
        name: &str,
        options: crate::block::DiskOptions,
    ) -> Result<Box<dyn crate::block::BlockBackend>> {
        // Logical volumes are raw extent maps: no header, nothing to probe, no backing file.
        let extents: Vec<crate::block::SegmentPath> = self
            .lv_segments(name)?
            .into_iter()
            .map(|s| crate::block::SegmentPath {
                path: s.pv_path,
                file_offset: s.pv_offset,
                len: s.len,
            })
            .collect();
        let disk =
            crate::block::SegmentDisk::open(&extents, options.read_only).map_err(|source| {
                let (pool, volume) = (self.def.name.clone(), name.to_string());
                PoolError::Open { pool, volume, source: Box::new(source) }
            })?;
        Ok(Box::new(disk))
    }

    fn as_logical(&self) -> Option<&LogicalPool> {
        Some(self)
    }
}
