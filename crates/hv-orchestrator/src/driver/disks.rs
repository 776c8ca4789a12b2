//! Disks on the compute host: two hv-storage directory pools in the host's state directory,
//! registered with its [`PoolManager`] so hv-host resolves `<disk type='volume'>` sources in
//! them with the format the pool recorded (never a probe of guest-written bytes).
//!
//! - [`INSTANCE_POOL`]: instance root disks, one volume `<instance id>` each.
//! - [`VOLUME_POOL`]: block-storage volumes and their snapshots. A directory pool stands in for
//!   the logical pool the issue names: hv-storage's logical volumes have no host file, and
//!   hv-vmm opens files (device-mapper is missing on these hosts, so no kernel LVM either).
//!
//! A root disk is a full copy of the image's guest-visible bytes (zero blocks skipped, so the
//! file stays sparse), not a qcow2 overlay: hv-vmm opens qcow2 disks with no backing file
//! allowed (its `backing_files` option is refused), so an overlay would not open.

use std::path::Path;

use hv_storage::pool::{
    Pool, PoolDef, PoolManager, PoolState, ResizeFlags, VolFormat, VolumeIo, VolumeSpec,
};

use crate::error::{Error, Result};

/// The pool of instance root disks.
pub const INSTANCE_POOL: &str = "hv-instances";
/// The pool of volumes and volume snapshots.
pub const VOLUME_POOL: &str = "hv-volumes";

/// Copy unit.
const CHUNK: usize = 1 << 20;

/// Defines, builds and starts both pools if needed.
pub(crate) fn ensure_pools(state_dir: &Path) -> Result<()> {
    let mgr = PoolManager::new(state_dir)?;
    for (name, dir) in [(INSTANCE_POOL, "instances"), (VOLUME_POOL, "volumes")] {
        if mgr.get(name).is_err() {
            mgr.define(PoolDef::dir(name, state_dir.join(dir)).build()?)?;
        }
        let mut p = mgr.open(name)?;
        if p.state() == PoolState::Inactive {
            if !state_dir.join(dir).is_dir() {
                p.build(Default::default())?;
            }
            p.start()?;
        }
    }
    Ok(())
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
