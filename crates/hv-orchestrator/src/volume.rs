//! Block storage (Cinder's job): volumes and their snapshots as logical volumes of the compute
//! host's volume pool (a logical pool; see [`crate::driver`]), created empty, from an image or
//! from a snapshot (copies); deleted, extended, snapshotted (a copy); attached to a shut-off
//! instance (or at boot) as a `<disk type='volume'>` of that pool, and detached.
//!
//! States: `creating` -> `available` <-> `in-use`, `deleting`, `error` (with the reason in
//! `fault`). An attached volume cannot be deleted; a volume with snapshots cannot either.

use serde::{Deserialize, Serialize};

use crate::compute::instance::{Instance, InstanceStatus, VolumeAttachment};
use hv_storage::pool::Pool;

use crate::driver::{disks, VOLUME_POOL};
use crate::error::{Error, Result};
use crate::events::event;
use crate::ids::{now, uuid, Timestamp};
use crate::image::ImageStatus;
use crate::policy::{authorize, Action, Context};
use crate::quota::Resource as Quota;
use crate::records::{impl_resource, list, load, to_record};
use crate::store::{Kind, Op, QuotaMode, StoreError};
use crate::{check_name, Cloud};

/// Cinder's volume states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeStatus {
    /// Being made.
    Creating,
    /// Ready, not attached.
    Available,
    /// Attached to an instance.
    InUse,
    /// Being deleted.
    Deleting,
    /// Failed (see `fault`).
    Error,
}

impl VolumeStatus {
    /// Cinder's word for it (`in-use`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeStatus::Creating => "creating",
            VolumeStatus::Available => "available",
            VolumeStatus::InUse => "in-use",
            VolumeStatus::Deleting => "deleting",
            VolumeStatus::Error => "error",
        }
    }
}

/// A volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// The owning project.
    pub project_id: String,
    /// Size, GiB.
    pub size_gb: u64,
    /// State.
    pub status: VolumeStatus,
    /// The image it was made from.
    pub image_id: Option<String>,
    /// The snapshot it was made from.
    pub snapshot_id: Option<String>,
    /// Where it is attached.
    pub attachments: Vec<VolumeAttachment>,
    /// Made from an image.
    pub bootable: bool,
    /// Why it is in `error`.
    pub fault: Option<String>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

impl_resource!(Volume, Kind::Volume, "volume", |s| Some(&s.project_id));

/// What a new volume needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewVolume {
    /// Name.
    pub name: String,
    /// Size, GiB (at least the source's).
    pub size_gb: u64,
    /// Fill it from this image.
    pub image_id: Option<String>,
    /// Fill it from this snapshot.
    pub snapshot_id: Option<String>,
}

/// Snapshot states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStatus {
    /// Being made.
    Creating,
    /// Ready.
    Available,
    /// Failed.
    Error,
}

/// A snapshot of a volume (a full copy in the pool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSnapshot {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// The owning project.
    pub project_id: String,
    /// The volume.
    pub volume_id: String,
    /// Size, GiB.
    pub size_gb: u64,
    /// State.
    pub status: SnapshotStatus,
    /// When it was made.
    pub created_at: Timestamp,
}

impl_resource!(VolumeSnapshot, Kind::VolumeSnapshot, "snapshot", |s| Some(&s.project_id));

fn snap_volume(id: &str) -> String {
    format!("snap-{id}")
}

impl Cloud {
    fn volume_dir(&self) -> Result<std::path::PathBuf> {
        self.driver().map(|d| d.state_dir().to_path_buf()).ok_or_else(|| {
            Error::Unsupported("block storage needs a compute driver (its volume pool)".into())
        })
    }

    /// Makes a volume in the caller's project, claiming `volumes` and `gigabytes` quota.
    pub fn create_volume(&self, ctx: &Context, new: &NewVolume) -> Result<Volume> {
        authorize(ctx, Action::VolumeCreate)?;
        check_name("volume name", &new.name)?;
        if new.size_gb == 0 || new.size_gb > 16 << 10 {
            return Err(Error::invalid("size", "1..=16384 GiB"));
        }
        if new.image_id.is_some() && new.snapshot_id.is_some() {
            return Err(Error::invalid("source", "an image or a snapshot, not both"));
        }
        let dir = self.volume_dir()?;
        if let Some(i) = &new.image_id {
            let (img, _) = self.load_image(ctx, i)?;
            if img.status != ImageStatus::Active {
                return Err(Error::Conflict {
                    kind: "image",
                    id: i.clone(),
                    reason: "not active".into(),
                });
            }
            // As Cinder: the image's guest-visible bytes must fit, and its min_disk holds.
            let need = img.virtual_size.or(img.size).unwrap_or(0);
            if need > new.size_gb << 30 {
                return Err(Error::invalid(
                    "size",
                    format!(
                        "image virtual size is {}GB and doesn't fit in a volume of size {}GB",
                        need.div_ceil(1 << 30),
                        new.size_gb
                    ),
                ));
            }
            if img.min_disk > new.size_gb {
                return Err(Error::invalid(
                    "size",
                    format!(
                        "volume size {}GB cannot be smaller than the image minDisk size {}GB",
                        new.size_gb, img.min_disk
                    ),
                ));
            }
        }
        let snap = match &new.snapshot_id {
            Some(s) => Some(self.load_snapshot(ctx, s)?.0),
            None => None,
        };
        let t = now();
        let mut v = Volume {
            id: uuid(),
            name: new.name.clone(),
            project_id: ctx.project_id().into(),
            size_gb: new.size_gb.max(snap.as_ref().map_or(0, |s| s.size_gb)),
            status: VolumeStatus::Creating,
            image_id: new.image_id.clone(),
            snapshot_id: new.snapshot_id.clone(),
            attachments: vec![],
            bootable: new.image_id.is_some(),
            fault: None,
            created_at: t,
            updated_at: t,
        };
        self.store()
            .apply(&[
                self.quota_op(
                    ctx.project_id(),
                    &[(Quota::Volumes, 1), (Quota::Gigabytes, v.size_gb as i64)],
                    QuotaMode::Use,
                ),
                Op::Insert(to_record(&v, 1)),
                event(
                    ctx,
                    &v.project_id,
                    "volume.create",
                    "volume",
                    &v.id,
                    serde_json::json!({"size": v.size_gb}),
                ),
            ])
            .map_err(Error::from_store)?;
        let made = match (&new.image_id, &snap) {
            (Some(i), _) => {
                self.image_pool().open_volume(i, false).map_err(Error::from).and_then(|io| {
                    disks::create_volume(
                        &dir,
                        VOLUME_POOL,
                        &v.id,
                        v.size_gb << 30,
                        Some(io.as_ref()),
                    )
                })
            }
            (None, Some(s)) => disks::clone_volume(&dir, VOLUME_POOL, &snap_volume(&s.id), &v.id)
                .and_then(|()| disks::resize_volume(&dir, VOLUME_POOL, &v.id, v.size_gb << 30)),
            (None, None) => disks::create_volume(&dir, VOLUME_POOL, &v.id, v.size_gb << 30, None),
        };
        let (status, fault) = match &made {
            Ok(()) => (VolumeStatus::Available, None),
            Err(e) => (VolumeStatus::Error, Some(e.to_string())),
        };
        v = self.set_volume(&v.id, |v| {
            v.status = status;
            v.fault = fault.clone();
        })?;
        made.map(|()| v)
    }

    fn set_volume(&self, id: &str, f: impl Fn(&mut Volume)) -> Result<Volume> {
        loop {
            let (mut v, version) =
                load::<Volume>(self.store(), id)?.ok_or_else(|| Error::not_found("volume", id))?;
            f(&mut v);
            v.updated_at = now();
            match self.store().apply(&[Op::Update(to_record(&v, version))]) {
                Ok(()) => return Ok(v),
                Err(StoreError::Stale { .. }) => continue,
                Err(e) => return Err(Error::from_store(e)),
            }
        }
    }

    fn load_volume(&self, ctx: &Context, id: &str) -> Result<(Volume, i64)> {
        match load::<Volume>(self.store(), id)? {
            Some((v, ver)) if ctx.owns(&v.project_id) => Ok((v, ver)),
            _ => Err(Error::not_found("volume", id)),
        }
    }

    /// One volume.
    pub fn get_volume(&self, ctx: &Context, id: &str) -> Result<Volume> {
        authorize(ctx, Action::VolumeGet)?;
        Ok(self.load_volume(ctx, id)?.0)
    }

    /// The host file holding a volume's bytes, when the volume pool is a directory pool (a
    /// state directory from before volumes were logical volumes); a logical volume has none
    /// (there is no device-mapper to make `/dev/VG/LV`): use [`Cloud::open_volume`].
    pub fn volume_path(&self, ctx: &Context, id: &str) -> Result<std::path::PathBuf> {
        authorize(ctx, Action::VolumeGet)?;
        let (v, _) = self.load_volume(ctx, id)?;
        let mgr = hv_storage::pool::PoolManager::new(&self.volume_dir()?)?;
        Ok(mgr.open(VOLUME_POOL)?.volume_path(&v.id)?)
    }

    /// A volume's bytes, read-only, through the volume pool (for an operator's or a test's
    /// look at what a guest wrote).
    pub fn open_volume(
        &self,
        ctx: &Context,
        id: &str,
    ) -> Result<Box<dyn hv_storage::pool::VolumeIo>> {
        authorize(ctx, Action::VolumeGet)?;
        let (v, _) = self.load_volume(ctx, id)?;
        let mgr = hv_storage::pool::PoolManager::new(&self.volume_dir()?)?;
        Ok(mgr.open(VOLUME_POOL)?.open_volume(&v.id, false)?)
    }

    /// The caller's volumes.
    pub fn list_volumes(&self, ctx: &Context) -> Result<Vec<Volume>> {
        authorize(ctx, Action::VolumeList)?;
        Ok(list::<Volume>(self.store(), ctx.list_scope(), None)?
            .into_iter()
            .map(|(v, _)| v)
            .collect())
    }

    /// Deletes a volume that is not attached and has no snapshots.
    pub fn delete_volume(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::VolumeDelete)?;
        let (v, version) = self.load_volume(ctx, id)?;
        let conflict =
            |reason: &str| Error::Conflict { kind: "volume", id: id.into(), reason: reason.into() };
        if !v.attachments.is_empty() || v.status == VolumeStatus::InUse {
            return Err(conflict("it is attached"));
        }
        if list::<VolumeSnapshot>(self.store(), Some(&v.project_id), None)?
            .iter()
            .any(|(s, _)| s.volume_id == id)
        {
            return Err(conflict("it has snapshots"));
        }
        let mut deleting = v.clone();
        deleting.status = VolumeStatus::Deleting;
        self.store()
            .apply(&[Op::Update(to_record(&deleting, version))])
            .map_err(crate::network::stale("volume", id))?;
        disks::delete_volume(&self.volume_dir()?, VOLUME_POOL, id)?;
        self.store()
            .apply(&[
                Op::Delete(Kind::Volume, id.into()),
                self.quota_op(
                    &v.project_id,
                    &[(Quota::Volumes, 1), (Quota::Gigabytes, v.size_gb as i64)],
                    QuotaMode::Release,
                ),
                event(ctx, &v.project_id, "volume.delete", "volume", id, serde_json::json!({})),
            ])
            .map_err(Error::from_store)
    }

    /// Grows an available volume to `size_gb` (claiming the extra gigabytes).
    pub fn extend_volume(&self, ctx: &Context, id: &str, size_gb: u64) -> Result<Volume> {
        authorize(ctx, Action::VolumeUpdate)?;
        let (v, version) = self.load_volume(ctx, id)?;
        if v.status != VolumeStatus::Available {
            return Err(Error::Conflict {
                kind: "volume",
                id: id.into(),
                reason: "only an available volume can be extended".into(),
            });
        }
        if size_gb <= v.size_gb || size_gb > 16 << 10 {
            return Err(Error::invalid(
                "new_size",
                format!("must be above {} and at most 16384", v.size_gb),
            ));
        }
        let mut grown = v.clone();
        grown.size_gb = size_gb;
        grown.updated_at = now();
        self.store()
            .apply(&[
                self.quota_op(
                    &v.project_id,
                    &[(Quota::Gigabytes, (size_gb - v.size_gb) as i64)],
                    QuotaMode::Use,
                ),
                Op::Update(to_record(&grown, version)),
                event(
                    ctx,
                    &v.project_id,
                    "volume.extend",
                    "volume",
                    id,
                    serde_json::json!({"size": size_gb}),
                ),
            ])
            .map_err(|e| match e {
                StoreError::Stale { .. } => crate::network::stale("volume", id)(e),
                e => Error::from_store(e),
            })?;
        disks::resize_volume(&self.volume_dir()?, VOLUME_POOL, id, size_gb << 30)?;
        Ok(grown)
    }

    /// Snapshots a volume (a copy in the pool; it counts against `gigabytes`), as Cinder at
    /// API 3.0: an `available` volume, or with `force` an `in-use` one too. A volume in use
    /// by a running instance is copied with the instance paused, so the copy is one point in
    /// time (what the guest had written then, as if the power had failed: crash-consistent,
    /// as Cinder's LVM snapshot of an attached volume); the instance runs on after.
    pub fn create_snapshot(
        &self,
        ctx: &Context,
        volume_id: &str,
        name: &str,
        force: bool,
    ) -> Result<VolumeSnapshot> {
        authorize(ctx, Action::SnapshotCreate)?;
        check_name("snapshot name", name)?;
        let (v, _) = self.load_volume(ctx, volume_id)?;
        let allowed =
            v.status == VolumeStatus::Available || (force && v.status == VolumeStatus::InUse);
        if !allowed {
            // Cinder's InvalidVolume (400), in its words.
            return Err(Error::Invalid {
                field: "volume_id",
                reason: format!(
                    "Volume {} status must be available, but current status is: {}{}",
                    v.id,
                    v.status.as_str(),
                    if v.status == VolumeStatus::InUse {
                        " (pass force to snapshot it)"
                    } else {
                        ""
                    }
                ),
            });
        }
        let Some(driver) = self.driver() else { return self.snapshot_volume(ctx, &v, name) };
        // The running instances it is attached to, paused for the copy; every one paused is
        // resumed, whatever failed on the way.
        let mut paused = vec![];
        let mut made = Ok(());
        for a in &v.attachments {
            let inst = match load::<Instance>(self.store(), &a.server_id) {
                Ok(Some((inst, _))) => inst,
                Ok(None) => continue,
                Err(e) => {
                    made = Err(e);
                    break;
                }
            };
            if inst.status == InstanceStatus::Active {
                let domain = inst.domain.clone();
                if let Err(e) = driver.call(move |h| async move { h.suspend(&domain).await }) {
                    made = Err(e);
                    break;
                }
                paused.push(inst.domain);
            }
        }
        let made = made.and_then(|()| self.snapshot_volume(ctx, &v, name));
        let mut resumed = Ok(());
        for domain in paused {
            if let Err(e) = driver.call(move |h| async move { h.resume(&domain).await }) {
                resumed = resumed.and(Err(e));
            }
        }
        let s = made?;
        resumed.map(|()| s)
    }

    /// Copies volume `v` into a new snapshot and records it.
    fn snapshot_volume(&self, ctx: &Context, v: &Volume, name: &str) -> Result<VolumeSnapshot> {
        let s = VolumeSnapshot {
            id: uuid(),
            name: name.into(),
            project_id: v.project_id.clone(),
            volume_id: v.id.clone(),
            size_gb: v.size_gb,
            status: SnapshotStatus::Available,
            created_at: now(),
        };
        disks::clone_volume(&self.volume_dir()?, VOLUME_POOL, &v.id, &snap_volume(&s.id))?;
        let r = self.store().apply(&[
            self.quota_op(&v.project_id, &[(Quota::Gigabytes, s.size_gb as i64)], QuotaMode::Use),
            Op::Insert(to_record(&s, 1)),
            event(
                ctx,
                &v.project_id,
                "snapshot.create",
                "snapshot",
                &s.id,
                serde_json::json!({"volume": v.id}),
            ),
        ]);
        if let Err(e) = r {
            let _ = disks::delete_volume(&self.volume_dir()?, VOLUME_POOL, &snap_volume(&s.id));
            return Err(Error::from_store(e));
        }
        Ok(s)
    }

    fn load_snapshot(&self, ctx: &Context, id: &str) -> Result<(VolumeSnapshot, i64)> {
        match load::<VolumeSnapshot>(self.store(), id)? {
            Some((s, v)) if ctx.owns(&s.project_id) => Ok((s, v)),
            _ => Err(Error::not_found("snapshot", id)),
        }
    }

    /// One snapshot.
    pub fn get_snapshot(&self, ctx: &Context, id: &str) -> Result<VolumeSnapshot> {
        authorize(ctx, Action::SnapshotGet)?;
        Ok(self.load_snapshot(ctx, id)?.0)
    }

    /// The caller's snapshots.
    pub fn list_snapshots(&self, ctx: &Context) -> Result<Vec<VolumeSnapshot>> {
        authorize(ctx, Action::SnapshotList)?;
        Ok(list::<VolumeSnapshot>(self.store(), ctx.list_scope(), None)?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    /// Deletes a snapshot.
    pub fn delete_snapshot(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::SnapshotDelete)?;
        let (s, _) = self.load_snapshot(ctx, id)?;
        disks::delete_volume(&self.volume_dir()?, VOLUME_POOL, &snap_volume(id))?;
        self.store()
            .apply(&[
                Op::Delete(Kind::VolumeSnapshot, id.into()),
                self.quota_op(
                    &s.project_id,
                    &[(Quota::Gigabytes, s.size_gb as i64)],
                    QuotaMode::Release,
                ),
                event(ctx, &s.project_id, "snapshot.delete", "snapshot", id, serde_json::json!({})),
            ])
            .map_err(Error::from_store)
    }

    /// Checks a volume of the caller's project can be attached (it is available).
    pub(crate) fn check_volume_attachable(&self, ctx: &Context, id: &str) -> Result<()> {
        let (v, _) = self.load_volume(ctx, id)?;
        if v.status != VolumeStatus::Available {
            return Err(Error::Conflict {
                kind: "volume",
                id: id.into(),
                reason: format!("it is {:?}, not available", v.status),
            });
        }
        Ok(())
    }

    /// Attaches an available volume to an instance that is shut off (or being built); it is
    /// there at the instance's next start, as the next `vdX`.
    pub fn attach_volume(
        &self,
        ctx: &Context,
        instance_id: &str,
        volume_id: &str,
    ) -> Result<VolumeAttachment> {
        authorize(ctx, Action::VolumeAttach)?;
        let (inst, iv) = match load::<Instance>(self.store(), instance_id)? {
            Some((i, v)) if ctx.owns(&i.project_id) => (i, v),
            _ => return Err(Error::not_found("instance", instance_id)),
        };
        if !matches!(inst.status, InstanceStatus::Shutoff | InstanceStatus::Build) {
            return Err(Error::Conflict {
                kind: "instance",
                id: instance_id.into(),
                reason: "volumes attach to a shut-off instance here (hv-host has no disk hotplug)"
                    .into(),
            });
        }
        let (mut v, vv) = self.load_volume(ctx, volume_id)?;
        if v.status != VolumeStatus::Available || v.project_id != inst.project_id {
            return Err(Error::Conflict {
                kind: "volume",
                id: volume_id.into(),
                reason: "it is not available".into(),
            });
        }
        let root = u8::from(
            load::<crate::image::Image>(self.store(), &inst.image_id)?
                .is_some_and(|(i, _)| i.disk_format != crate::image::DiskFormat::Aki),
        );
        let n = inst.volumes.len() as u8 + root;
        if n >= 26 {
            return Err(Error::invalid("volume", "no free device name"));
        }
        let a = VolumeAttachment {
            volume_id: v.id.clone(),
            server_id: inst.id.clone(),
            device: format!("/dev/vd{}", (b'a' + n) as char),
        };
        let mut inst = inst;
        inst.volumes.push(a.clone());
        inst.updated_at = now();
        v.status = VolumeStatus::InUse;
        v.attachments = vec![a.clone()];
        v.updated_at = now();
        self.store()
            .apply(&[
                Op::Update(to_record(&inst, iv)),
                Op::Update(to_record(&v, vv)),
                event(
                    ctx,
                    &v.project_id,
                    "volume.attach",
                    "volume",
                    &v.id,
                    serde_json::json!({"server": inst.id, "device": a.device}),
                ),
            ])
            .map_err(crate::network::stale("volume", volume_id))?;
        Ok(a)
    }

    /// Detaches a volume from a shut-off instance.
    pub fn detach_volume(&self, ctx: &Context, instance_id: &str, volume_id: &str) -> Result<()> {
        authorize(ctx, Action::VolumeDetach)?;
        let (mut inst, iv) = match load::<Instance>(self.store(), instance_id)? {
            Some((i, v)) if ctx.owns(&i.project_id) => (i, v),
            _ => return Err(Error::not_found("instance", instance_id)),
        };
        if !inst.volumes.iter().any(|a| a.volume_id == volume_id) {
            return Err(Error::not_found("volume attachment", volume_id));
        }
        if !matches!(inst.status, InstanceStatus::Shutoff | InstanceStatus::Error) {
            return Err(Error::Conflict {
                kind: "instance",
                id: instance_id.into(),
                reason: "volumes detach from a shut-off instance here".into(),
            });
        }
        inst.volumes.retain(|a| a.volume_id != volume_id);
        inst.updated_at = now();
        self.store()
            .apply(&[
                Op::Update(to_record(&inst, iv)),
                event(
                    ctx,
                    &inst.project_id,
                    "volume.detach",
                    "volume",
                    volume_id,
                    serde_json::json!({"server": instance_id}),
                ),
            ])
            .map_err(crate::network::stale("instance", instance_id))?;
        self.release_volume(volume_id)
    }

    /// Marks a volume available again (its instance let go of it).
    pub(crate) fn release_volume(&self, volume_id: &str) -> Result<()> {
        if load::<Volume>(self.store(), volume_id)?.is_none() {
            return Ok(());
        }
        self.set_volume(volume_id, |v| {
            v.attachments.clear();
            v.status = VolumeStatus::Available;
        })
        .map(drop)
    }
}
