//! Disks on the compute host: two hv-storage pools in the host's state directory,
//! registered with its [`PoolManager`] so hv-host resolves `<disk type='volume'>` sources in
//! them with the format the pool recorded (never a probe of guest-written bytes).
//!
//! - [`INSTANCE_POOL`]: instance root disks, one qcow2 overlay `<instance id>` each, and the
//!   base copies of images they are overlays of, `base-<image id>`.
//! - [`VOLUME_POOL`]: block-storage volumes and their snapshots, as logical volumes of a
//!   logical pool (a volume group, as Cinder's LVM driver keeps them) on the physical volumes
//!   of [`ComputeConfig::volume_pvs`], by default one sparse file in the state directory
//!   ([`super::VOLUME_PV_FILE`], like devstack's backing file). With no device-mapper there is
//!   no `/dev/VG/LV`: hvd hands hv-vmm each volume's extent map and hv-vmm reads and writes
//!   the physical volumes directly. A state directory whose volume pool was made as a directory
//!   pool (before volumes were logical) keeps it.
//!
//! A root disk is a qcow2 overlay, as Nova's libvirt driver makes them: its backing file is
//! the host's base copy of the image, volume `base-<image id>` of [`INSTANCE_POOL`] (the image's
//! guest-visible bytes, raw and sparse), made once per image per host and shared by every
//! instance of that image on the host. The guest reads the base through its overlay and writes
//! into the overlay only (hv-vmm opens the chain read-only below the overlay; hvd hands it
//! `backing_files=on` only after the pool has validated the chain). The overlay's virtual size
//! is the flavor's root disk (or the image's size if larger). Deleting an instance deletes its
//! overlay, then the base if no other overlay uses it (the pool refuses to delete a volume that
//! backs another); a base is independent of the image service, so deleting the image does not
//! touch running instances. A base is used only once its marker (`base-ready/<image id>`) says
//! it was copied completely and synced; a base without one (a crash mid-copy) is remade.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hv_storage::pool::{
    Pool, PoolDef, PoolError, PoolKind, PoolManager, PoolState, ResizeFlags, VolFormat, VolumeIo,
    VolumeSpec,
};

use super::ComputeConfig;
use crate::error::{Error, Result};

/// The pool of instance root disks.
pub const INSTANCE_POOL: &str = "hv-instances";
/// The pool of volumes and volume snapshots.
pub const VOLUME_POOL: &str = "hv-volumes";

/// Directory (in the state directory) of the markers of complete base copies.
const BASE_READY_DIR: &str = "base-ready";

/// Serialises making and deleting bases with making and deleting the overlays on them, so a
/// base is never deleted between its check and a new overlay on it.
static BASES: Mutex<()> = Mutex::new(());

/// The base volume of image `image_id` in [`INSTANCE_POOL`].
pub fn base_volume(image_id: &str) -> String {
    format!("base-{image_id}")
}

/// Copy unit.
const CHUNK: usize = 1 << 20;

/// Defines, builds and starts both pools if needed.
pub(crate) fn ensure_pools(cfg: &ComputeConfig) -> Result<()> {
    let state_dir = &cfg.state_dir;
    let mgr = PoolManager::new(state_dir)?;
    if mgr.get(INSTANCE_POOL).is_err() {
        mgr.define(PoolDef::dir(INSTANCE_POOL, state_dir.join("instances")).build()?)?;
    }
    if mgr.get(VOLUME_POOL).is_err() {
        mgr.define(volume_pool_def(cfg)?)?;
    }
    for name in [INSTANCE_POOL, VOLUME_POOL] {
        let mut p = mgr.open(name)?;
        if p.state() != PoolState::Inactive {
            continue;
        }
        match &p.def().kind {
            PoolKind::Dir { target } => {
                if !target.is_dir() {
                    p.build(Default::default())?;
                }
                p.start()?;
            }
            // Unlabelled PVs (a crash between define and build) are built first; build refuses
            // PVs holding anything, so only a fresh pool is made here.
            PoolKind::Logical { .. } => {
                if let Err(e) = p.start() {
                    p.build(Default::default()).map_err(|_| e)?;
                    p.start()?;
                }
            }
        }
    }
    Ok(())
}

/// The volume pool's definition: a logical pool on the configured PVs, or on a sparse file in
/// the state directory (made here when missing).
fn volume_pool_def(cfg: &ComputeConfig) -> Result<PoolDef> {
    let pvs = if cfg.volume_pvs.is_empty() {
        let pv = cfg.state_dir.join(super::VOLUME_PV_FILE);
        if !pv.exists() {
            fs::create_dir_all(&cfg.state_dir).map_err(io_err("create", &cfg.state_dir))?;
            let tmp = cfg.state_dir.join(format!("{}.tmp", super::VOLUME_PV_FILE));
            File::create(&tmp)
                .and_then(|f| f.set_len(cfg.volume_pv_size).and_then(|()| f.sync_all()))
                .map_err(io_err("make the volume PV file", &tmp))?;
            fs::rename(&tmp, &pv).map_err(io_err("rename", &tmp))?;
        }
        vec![pv]
    } else {
        cfg.volume_pvs.clone()
    };
    Ok(PoolDef::logical(VOLUME_POOL, pvs).build()?)
}

/// Makes volume `name` in `pool`: `capacity` bytes, raw, filled with `src`'s bytes when given.
pub(crate) fn create_volume(
    state_dir: &Path,
    pool: &str,
    name: &str,
    capacity: u64,
    src: Option<&dyn VolumeIo>,
) -> Result<()> {
    let mgr = PoolManager::new(state_dir)?;
    let mut p = mgr.open(pool)?;
    let capacity = capacity.max(src.map_or(0, |s| s.size()));
    let spec = VolumeSpec::builder(name).format(VolFormat::Raw).capacity(capacity).build()?;
    p.create_volume(&spec)?;
    if let Some(src) = src {
        let dst = p.open_volume(name, true)?;
        if let Err(e) = copy(src, dst.as_ref()) {
            drop(dst);
            let _ = p.delete_volume(name);
            return Err(e);
        }
    }
    Ok(())
}

/// Copies `src` into `dst` from offset 0, skipping zero chunks (the destination is new and
/// reads as zeroes there already).
fn copy(src: &dyn VolumeIo, dst: &dyn VolumeIo) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let size = src.size();
    let mut off = 0u64;
    let io = |source| Error::Io { what: "copy into", path: "a volume".into(), source };
    while off < size {
        let n = (size - off).min(CHUNK as u64) as usize;
        src.read_at(&mut buf[..n], off).map_err(io)?;
        if buf[..n].iter().any(|b| *b != 0) {
            dst.write_at(&buf[..n], off).map_err(io)?;
        }
        off += n as u64;
    }
    dst.flush().map_err(io)
}

/// Copies volume `from` of `pool` into a new volume `to` of the same pool.
pub(crate) fn clone_volume(state_dir: &Path, pool: &str, from: &str, to: &str) -> Result<()> {
    let mgr = PoolManager::new(state_dir)?;
    let mut p = mgr.open(pool)?;
    p.clone_volume(from, to)?;
    Ok(())
}

/// Grows volume `name` to `capacity` bytes.
pub(crate) fn resize_volume(state_dir: &Path, pool: &str, name: &str, capacity: u64) -> Result<()> {
    let mgr = PoolManager::new(state_dir)?;
    let mut p = mgr.open(pool)?;
    p.resize_volume(name, capacity, ResizeFlags::default())?;
    Ok(())
}

/// Deletes volume `name` (a volume already gone is fine).
pub(crate) fn delete_volume(state_dir: &Path, pool: &str, name: &str) -> Result<()> {
    let mgr = PoolManager::new(state_dir)?;
    let mut p = mgr.open(pool)?;
    if p.volume_info(name).is_err() {
        return Ok(());
    }
    p.delete_volume(name)?;
    Ok(())
}

fn marker(state_dir: &Path, image_id: &str) -> PathBuf {
    state_dir.join(BASE_READY_DIR).join(image_id)
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |source| Error::Io { what, path, source }
}

/// Makes instance `id`'s root disk: a qcow2 overlay of `capacity` bytes (at least the image's
/// size) over the host's base copy of image `image_id`, which is made from `image` first if
/// this host has none yet.
pub(crate) fn create_root_disk(
    state_dir: &Path,
    image_id: &str,
    id: &str,
    capacity: u64,
    image: &dyn VolumeIo,
) -> Result<()> {
    let _guard = BASES.lock().unwrap_or_else(|e| e.into_inner());
    let base = base_volume(image_id);
    let ready = marker(state_dir, image_id);
    let mgr = PoolManager::new(state_dir)?;
    let exists = mgr.open(INSTANCE_POOL)?.volume_info(&base).is_ok();
    if !(exists && ready.is_file()) {
        if exists {
            // A copy a crash cut short (nothing is made over a base before its marker).
            delete_volume(state_dir, INSTANCE_POOL, &base)?;
        }
        create_volume(state_dir, INSTANCE_POOL, &base, image.size(), Some(image))?;
        let dir = state_dir.join(BASE_READY_DIR);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        File::create(&ready)
            .and_then(|f| f.sync_all())
            .map_err(io_err("write base marker", &ready))?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err("sync", &dir))?;
    }
    let mut p = mgr.open(INSTANCE_POOL)?;
    let size = p.volume_info(&base)?.capacity;
    let spec = VolumeSpec::builder(id)
        .format(VolFormat::Qcow2)
        .backing(base.as_str())
        .backing_format(VolFormat::Raw)
        .capacity(capacity.max(size))
        .build()?;
    p.create_volume(&spec)?;
    Ok(())
}

/// Deletes instance `id`'s root disk (gone already is fine), then the base it was made over
/// when no other instance's overlay uses it any more.
pub(crate) fn delete_root_disk(state_dir: &Path, id: &str) -> Result<()> {
    let _guard = BASES.lock().unwrap_or_else(|e| e.into_inner());
    let mgr = PoolManager::new(state_dir)?;
    let mut p = mgr.open(INSTANCE_POOL)?;
    let Ok(info) = p.volume_info(id) else { return Ok(()) };
    p.delete_volume(id)?;
    let Some(backing) = info.backing else { return Ok(()) };
    let Some(base) = Path::new(&backing).file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let Some(image_id) = base.strip_prefix("base-") else { return Ok(()) };
    match p.delete_volume(base) {
        Ok(()) => {}
        // Another instance's overlay still uses it.
        Err(PoolError::VolumeInUse { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let ready = marker(state_dir, image_id);
    match fs::remove_file(&ready) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_err("remove base marker", &ready)(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A 4 MiB image (a volume of the volume pool standing in for the image pool's).
    fn image(state: &Path, seed: u8) -> (Box<dyn VolumeIo>, Vec<u8>) {
        let bytes: Vec<u8> = (0..4 * MIB).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let name = format!("image-{seed}");
        create_volume(state, VOLUME_POOL, &name, 4 * MIB, None).unwrap();
        let p = PoolManager::new(state).unwrap().open(VOLUME_POOL).unwrap();
        p.open_volume(&name, true).unwrap().write_at(&bytes, 0).unwrap();
        (p.open_volume(&name, false).unwrap(), bytes)
    }

    fn read(state: &Path, name: &str, len: usize) -> Vec<u8> {
        let p = PoolManager::new(state).unwrap().open(INSTANCE_POOL).unwrap();
        let io = p.open_volume(name, false).unwrap();
        let mut b = vec![0u8; len];
        io.read_at(&mut b, 0).unwrap();
        b
    }

    /// Makes both pools in `state`, the volume pool on a 256 MiB sparse file.
    fn pools(state: &Path) {
        let cfg = ComputeConfig { volume_pv_size: 256 * MIB, ..ComputeConfig::new(state, "/none") };
        ensure_pools(&cfg).unwrap();
    }

    fn info(state: &Path, name: &str) -> Option<hv_storage::pool::VolumeInfo> {
        PoolManager::new(state).unwrap().open(INSTANCE_POOL).unwrap().volume_info(name).ok()
    }

    #[test]
    fn overlays_share_one_base_that_goes_with_the_last_of_them() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        pools(&state);
        let (img, bytes) = image(&state, 3);
        create_root_disk(&state, "img1", "vm1", 64 * MIB, img.as_ref()).unwrap();
        create_root_disk(&state, "img1", "vm2", MIB, img.as_ref()).unwrap();
        // One base; each overlay reads as the image, at the flavor's size (or the image's if
        // larger); the overlays hold (almost) nothing.
        let base = info(&state, "base-img1").unwrap();
        assert_eq!((base.format, base.capacity), (VolFormat::Raw, 4 * MIB));
        for (vm, size) in [("vm1", 64 * MIB), ("vm2", 4 * MIB)] {
            let i = info(&state, vm).unwrap();
            assert_eq!((i.format, i.capacity), (VolFormat::Qcow2, size), "{vm}");
            assert_eq!(i.backing.as_deref().map(Path::new), base.path.as_deref(), "{vm}");
            assert!(i.allocation < MIB, "{vm}: {} bytes", i.allocation);
            assert!(read(&state, vm, bytes.len()) == bytes, "{vm} does not read as the image");
        }
        delete_root_disk(&state, "vm1").unwrap();
        assert!(info(&state, "vm1").is_none());
        assert!(info(&state, "base-img1").is_some(), "the base went while vm2 uses it");
        delete_root_disk(&state, "vm1").unwrap(); // gone already: fine
        delete_root_disk(&state, "vm2").unwrap();
        assert!(info(&state, "base-img1").is_none(), "the base outlived its last overlay");
        assert!(!marker(&state, "img1").exists());
    }

    #[test]
    fn a_base_cut_short_by_a_crash_is_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        pools(&state);
        let (img, bytes) = image(&state, 5);
        // A base volume without its marker: a copy that never finished (zeroes here).
        create_volume(&state, INSTANCE_POOL, "base-img2", 4 * MIB, None).unwrap();
        create_root_disk(&state, "img2", "vm", 8 * MIB, img.as_ref()).unwrap();
        assert!(marker(&state, "img2").is_file());
        assert!(read(&state, "vm", bytes.len()) == bytes, "the half-made base was used");
    }

    #[test]
    fn volumes_are_logical_volumes_on_a_sparse_pv_file_and_an_old_dir_pool_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        pools(&state);
        let pv = state.join(super::super::VOLUME_PV_FILE);
        assert_eq!(fs::metadata(&pv).unwrap().len(), 256 * MIB);
        create_volume(&state, VOLUME_POOL, "v", 8 * MIB, None).unwrap();
        let p = PoolManager::new(&state).unwrap().open(VOLUME_POOL).unwrap();
        let segs = p.as_logical().expect("a logical pool").lv_segments("v").unwrap();
        assert!(segs.iter().all(|s| s.pv_path == pv), "{segs:?}");
        drop(p);
        // Opening again (a restarted compute service) keeps the pool and its volume.
        pools(&state);
        let p = PoolManager::new(&state).unwrap().open(VOLUME_POOL).unwrap();
        assert_eq!(p.volume_info("v").unwrap().capacity, 8 * MIB);

        // A state directory made when the volume pool was a directory pool keeps using it.
        let old = tmp.path().join("old");
        let mgr = PoolManager::new(&old).unwrap();
        mgr.define(PoolDef::dir(VOLUME_POOL, old.join("volumes")).build().unwrap()).unwrap();
        pools(&old);
        let p = PoolManager::new(&old).unwrap().open(VOLUME_POOL).unwrap();
        assert!(matches!(p.def().kind, PoolKind::Dir { .. }));
        drop(p);
        assert!(!old.join(super::super::VOLUME_PV_FILE).exists());
        create_volume(&old, VOLUME_POOL, "v", MIB, None).unwrap();
        assert!(old.join("volumes").join("v").is_file());
    }
}
