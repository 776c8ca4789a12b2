//! Errors of the pool and volume API. Each names the pool, volume or path it is about.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::format::FormatError;
use super::lifecycle::{PoolOp, PoolState};
use super::logical::metadata::MetadataError;

/// What went wrong in a pool or volume operation.
#[derive(Debug, Error)]
pub enum PoolError {
    /// A pool or volume name that cannot be used.
    #[error("invalid {what} name '{name}': {reason}")]
    InvalidName {
        /// "pool" or "volume".
        what: &'static str,
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A definition or volume specification that does not hold together.
    #[error("invalid definition of '{name}': {reason}")]
    Invalid {
        /// The pool or volume.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A pool with this name is already defined.
    #[error("pool '{0}' is already defined")]
    PoolExists(String),
    /// No pool with this name is defined.
    #[error("pool '{0}' is not defined")]
    PoolNotFound(String),
    /// The operation is not allowed in the pool's current state.
    #[error("cannot {op} pool '{pool}': it is {state}")]
    BadState {
        /// The pool.
        pool: String,
        /// The operation refused.
        op: PoolOp,
        /// The state it is in.
        state: PoolState,
    },
    /// A volume with this name already exists (nothing was overwritten).
    #[error("volume '{volume}' already exists in pool '{pool}'")]
    VolumeExists {
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
    },
    /// The volume backs another volume (deleting it would break that one).
    #[error("volume '{volume}' in pool '{pool}' is the backing volume of '{user}'")]
    VolumeInUse {
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
        /// A volume that uses it.
        user: String,
    },
    /// No volume with this name exists in the pool.
    #[error("volume '{volume}' not found in pool '{pool}'")]
    VolumeNotFound {
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
    },
    /// A system call on a file failed.
    #[error("{op} '{path}': {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The image library failed on a volume (qcow2 or raw access).
    #[error("volume '{volume}' in pool '{pool}': {what}: {source}")]
    Image {
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
        /// What was being done.
        what: &'static str,
        /// The error from the image layer.
        #[source]
        source: io::Error,
    },
    /// An image file whose format could not be read.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The pool type cannot do this.
    #[error("pool '{pool}': {what} is not supported")]
    Unsupported {
        /// The pool.
        pool: String,
        /// What was asked.
        what: String,
    },
    /// Shrinking was asked without allowing it (virsh `--shrink`), or is impossible.
    #[error("volume '{volume}' in pool '{pool}': shrinking from {current} to {requested} bytes needs the shrink flag")]
    ShrinkRefused {
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
        /// Current capacity.
        current: u64,
        /// Requested capacity.
        requested: u64,
    },
    /// Not enough free space in the pool.
    #[error("pool '{pool}': not enough space: {needed} bytes needed, {available} available")]
    NoSpace {
        /// The pool.
        pool: String,
        /// Bytes asked for.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// More data than the volume holds.
    #[error("volume '{volume}' in pool '{pool}': data exceeds its capacity of {capacity} bytes")]
    TooMuchData {
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
        /// Its capacity.
        capacity: u64,
    },
    /// Deleting a pool directory that still holds files is refused.
    #[error("pool '{pool}': directory '{path}' is not empty; delete its volumes first")]
    NotEmpty {
        /// The pool.
        pool: String,
        /// The directory.
        path: PathBuf,
    },
    /// A physical volume carries the label of another volume group.
    #[error("pool '{pool}': physical volume '{pv}' belongs to volume group '{vg}'")]
    PvInUse {
        /// The pool.
        pool: String,
        /// The device or file.
        pv: PathBuf,
        /// The volume group it belongs to.
        vg: String,
    },
    /// The logical pool's on-disk metadata is unusable.
    #[error("pool '{pool}': {source}")]
    Metadata {
        /// The pool.
        pool: String,
        /// What is wrong with it.
        #[source]
        source: MetadataError,
    },
    /// A definition or state file in the state directory could not be read.
    #[error("state file '{path}' is corrupt: {source}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// Another process has the pool open and did not let go in time.
    #[error("pool '{pool}' is in use by another process{}", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Busy {
        /// The pool.
        pool: String,
        /// The process holding it, if known.
        holder: Option<u32>,
    },
    /// The confined opener refused or failed to open a volume (a backing file outside the
    /// pool, a bad qcow2 header, ...).
    #[error("volume '{volume}' in pool '{pool}': {source}")]
    Open {
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
        /// What the opener said.
        #[source]
        source: Box<crate::block::BlockError>,
    },
    /// A logical volume has no host path (there is no device-mapper to make one).
    #[error("volume '{volume}' in pool '{pool}' has no host path: open it through the pool (logical volumes are extent maps)")]
    NoHostPath {
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
    },
}

/// Result of pool operations.
pub type Result<T, E = PoolError> = std::result::Result<T, E>;

/// Builds a `map_err` closure for I/O errors on a path.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> PoolError {
    let path = path.into();
    move |source| PoolError::Io { op, path, source }
}
