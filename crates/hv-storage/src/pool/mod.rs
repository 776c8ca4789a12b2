//! Storage pools and volumes in libvirt's model.
//!
//! A [`PoolManager`] keeps pool definitions in a state directory (as libvirt keeps pool XML)
//! and opens pools by name. A pool is a [`Pool`]: a [`DirPool`] (a directory, a file per
//! volume, raw or qcow2) or a [`LogicalPool`] (a volume group over physical volumes, logical
//! volumes as extent maps, crash-safe metadata). Every operation is checked against the pool's
//! [`PoolState`] first (see [`lifecycle`]).
//!
//! ```no_run
//! use hv_storage::pool::{PoolDef, PoolManager, Pool, VolFormat, VolumeSpec};
//! # fn main() -> Result<(), hv_storage::pool::PoolError> {
//! let mgr = PoolManager::new("/var/lib/hv")?;
//! mgr.define(PoolDef::dir("images", "/var/lib/hv/images").build()?)?;
//! let mut pool = mgr.open("images")?;
//! pool.build(Default::default())?;
//! pool.start()?;
//! pool.create_volume(&VolumeSpec::builder("base").format(VolFormat::Qcow2).capacity(1 << 30).build()?)?;
//! // A thin copy-on-write overlay over the base image:
//! pool.create_volume(&VolumeSpec::builder("vm1").format(VolFormat::Qcow2).backing("base").build()?)?;
//! # Ok(()) }
//! ```

use std::io::{Read, Write};
use std::path::PathBuf;

pub mod copy;
pub mod crc32c;
pub mod def;
pub mod dir;
pub mod error;
pub mod failpoint;
pub mod image;
pub mod lifecycle;
pub mod logical;
pub mod manager;
pub mod persist;
pub mod record;
pub mod size;
pub mod volume;

pub use crate::format;
pub use def::{PoolDef, PoolDefBuilder, PoolKind};
pub use dir::DirPool;
pub use error::{PoolError, Result};
pub use image::VolumeIo;
pub use lifecycle::{PoolOp, PoolState};
pub use logical::{LogicalPool, LvDevice, Segment};
pub use manager::{ManagedPool, PoolManager};
pub use volume::{Progress, ResizeFlags, VolFormat, VolumeInfo, VolumeSpec, VolumeSpecBuilder};

/// What `pool-info` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    /// The pool name.
    pub name: String,
    /// Its UUID.
    pub uuid: String,
    /// Its state.
    pub state: PoolState,
    /// Total bytes (0 when inactive).
    pub capacity: u64,
    /// Bytes in use (0 when inactive).
    pub allocation: u64,
    /// Bytes free for new volumes (0 when inactive).
    pub available: u64,
}

impl PoolInfo {
    /// The info of pool `def` in `state`, with the sizes still to be filled in (zero, as for an
    /// inactive pool).
    pub fn without_sizes(def: &PoolDef, state: PoolState) -> Self {
        Self {
            name: def.name.clone(),
            uuid: def.uuid.clone(),
            state,
            capacity: 0,
            allocation: 0,
            available: 0,
        }
    }
}

/// How to build a pool (virsh `pool-build` flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildFlags {
    /// Relabel physical volumes that carry this pool's own, earlier label (`--overwrite`).
    /// A PV of another volume group is refused even then.
    pub overwrite: bool,
}

/// A storage pool with libvirt's verbs. Definition and undefinition are on [`PoolManager`].
pub trait Pool {
    /// The definition.
    fn def(&self) -> &PoolDef;
    /// The pool name.
    fn name(&self) -> &str {
        &self.def().name
    }
    /// The current state.
    fn state(&self) -> PoolState;
    /// Makes the underlying storage (virsh `pool-build`): the directory, or PV labels and the
    /// volume group metadata. The pool must be inactive.
    fn build(&mut self, flags: BuildFlags) -> Result<()>;
    /// Activates the pool (virsh `pool-start`).
    fn start(&mut self) -> Result<()>;
    /// Deactivates the pool (virsh `pool-destroy`); volumes and data stay.
    fn stop(&mut self) -> Result<()>;
    /// Rescans the storage (virsh `pool-refresh`).
    fn refresh(&mut self) -> Result<()>;
    /// Removes the underlying storage (virsh `pool-delete`); the pool must be inactive and
    /// hold no volumes.
    fn delete(&mut self) -> Result<()>;
    /// Sizes and state.
    fn info(&self) -> Result<PoolInfo>;
    /// The volumes, sorted by name.
    fn list_volumes(&self) -> Result<Vec<VolumeInfo>>;
    /// Creates a volume; an existing volume of that name is an error, never overwritten.
    fn create_volume(&mut self, spec: &VolumeSpec) -> Result<VolumeInfo>;
    /// Deletes a volume (refused while another volume uses it as backing).
    fn delete_volume(&mut self, name: &str) -> Result<()>;
    /// What `vol-info` shows.
    fn volume_info(&self, name: &str) -> Result<VolumeInfo>;
    /// The host path of a volume (logical volumes have none: [`PoolError::NoHostPath`]).
    fn volume_path(&self, name: &str) -> Result<PathBuf>;
    /// Sets a volume's capacity. Shrinking needs `flags.allow_shrink`.
    fn resize_volume(&mut self, name: &str, capacity: u64, flags: ResizeFlags) -> Result<()>;
    /// Makes `new_name` a full, independent copy of `name` (same format and capacity).
    fn clone_volume(&mut self, name: &str, new_name: &str) -> Result<VolumeInfo>;
    /// Opens a volume's guest-visible bytes.
    fn open_volume(&self, name: &str, writable: bool) -> Result<Box<dyn VolumeIo>>;
    /// Opens a volume as a VM disk, in its recorded format, its backing chain confined to
    /// this pool's volumes (`options.confinement` is replaced by the pool's).
    fn open_disk(
        &self,
        name: &str,
        options: crate::block::DiskOptions,
    ) -> Result<Box<dyn crate::block::BlockBackend>>;
    /// The logical pool behind this pool, if it is one.
    fn as_logical(&self) -> Option<&LogicalPool> {
        None
    }

    /// Writes `src` into the volume from offset 0 (virsh `vol-upload`): the guest-visible
    /// content, whatever the volume's format. `len` is the expected length for progress and an
    /// early size check (0 if unknown). Returns the bytes written.
    fn upload_volume(
        &mut self,
        name: &str,
        src: &mut dyn Read,
        len: u64,
        progress: Progress<'_>,
    ) -> Result<u64> {
        let io = self.open_volume(name, true)?;
        copy::upload(io.as_ref(), src, len, progress)
            .map_err(|e| copy_err(self.name(), name, e, io.size()))
    }

    /// Writes the volume's whole guest-visible content to `dst` (virsh `vol-download`).
    fn download_volume(
        &self,
        name: &str,
        dst: &mut dyn Write,
        progress: Progress<'_>,
    ) -> Result<u64> {
        let io = self.open_volume(name, false)?;
        copy::download(io.as_ref(), dst, progress)
            .map_err(|e| copy_err(self.name(), name, e, io.size()))
    }

    /// Makes the volume read as zeroes (virsh `vol-wipe`).
    fn wipe_volume(&mut self, name: &str) -> Result<()> {
        let io = self.open_volume(name, true)?;
        copy::wipe(io.as_ref()).map_err(|source| PoolError::Image {
            pool: self.name().to_string(),
            volume: name.to_string(),
            what: "wipe",
            source,
        })
    }
}

pub(crate) fn copy_err(pool: &str, volume: &str, e: copy::CopyError, capacity: u64) -> PoolError {
    match e {
        copy::CopyError::TooMuchData => {
            PoolError::TooMuchData { pool: pool.to_string(), volume: volume.to_string(), capacity }
        }
        copy::CopyError::Io(source) => PoolError::Image {
            pool: pool.to_string(),
            volume: volume.to_string(),
            what: "copy data",
            source,
        },
    }
}

/// Tracks a pool's [`PoolState`] and enforces the transitions of [`lifecycle`].
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pool: String,
    state: PoolState,
}

impl Lifecycle {
    /// Starts in `state`.
    pub fn new(pool: &str, state: PoolState) -> Self {
        Lifecycle { pool: pool.to_string(), state }
    }

    /// The current state.
    pub fn state(&self) -> PoolState {
        self.state
    }

    fn refuse(&self, op: PoolOp) -> PoolError {
        PoolError::BadState { pool: self.pool.clone(), op, state: self.state }
    }

    /// Fails unless `op` is allowed now.
    pub fn require(&self, op: PoolOp) -> Result<()> {
        self.state.check(op).map(|_| ()).ok_or_else(|| self.refuse(op))
    }

    /// Enters `op`'s transient state; returns the state to go back to on failure.
    pub fn begin(&mut self, op: PoolOp) -> Result<PoolState> {
        let during = self.state.check(op).ok_or_else(|| self.refuse(op))?;
        let before = self.state;
        self.state = during;
        Ok(before)
    }

    /// Ends `op` begun from `before`: the state after success, or `before` after a failure.
    pub fn end<T>(&mut self, op: PoolOp, before: PoolState, result: &Result<T>) {
        self.state = match result {
            Ok(_) => before.after(op).unwrap_or(before),
            Err(_) => before,
        };
    }

    /// Forces a state (a refresh that found the storage gone marks the pool inaccessible).
    pub fn set(&mut self, state: PoolState) {
        self.state = state;
    }
}
