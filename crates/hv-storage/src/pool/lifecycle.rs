//! The pool lifecycle as an explicit state machine, libvirt's pool states.
//!
//! ```text
//!              build                       start
//!  Inactive ----------> Building --done--> Inactive ---------> Running <--+
//!     ^  |                                                      |   |     | refresh
//!     |  +--delete--> Deleting --done--> Inactive               |   +-----+
//!     |                                                         |
//!     +-------------------------- stop (destroy) ---------------+
//!                                                Running --refresh (target gone)--> Inaccessible
//! ```
//!
//! Every pool operation asks [`PoolState::check`] first; the table there is the only place that
//! says which operation is allowed in which state.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of a storage pool (libvirt's `virStoragePoolState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    /// Defined but not started: its volumes cannot be used.
    Inactive,
    /// Its storage is being built (transient).
    Building,
    /// Started: volumes can be listed, created and used.
    Running,
    /// Started, but its storage went away (found by a refresh); stop it or refresh again.
    Inaccessible,
    /// Its storage is being deleted (transient).
    Deleting,
}

/// An operation on a pool, checked against its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolOp {
    /// Make the underlying storage (directory, PV labels).
    Build,
    /// Activate the pool.
    Start,
    /// Deactivate the pool (virsh `pool-destroy`).
    Stop,
    /// Rescan volumes and sizes.
    Refresh,
    /// Remove the underlying storage.
    Delete,
    /// Remove the definition.
    Undefine,
    /// Anything on volumes: list, create, delete, resize, read, write.
    Volumes,
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolState::Inactive => "inactive",
            PoolState::Building => "building",
            PoolState::Running => "running",
            PoolState::Inaccessible => "inaccessible",
            PoolState::Deleting => "deleting",
        })
    }
}

impl fmt::Display for PoolOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolOp::Build => "build",
            PoolOp::Start => "start",
            PoolOp::Stop => "stop",
            PoolOp::Refresh => "refresh",
            PoolOp::Delete => "delete",
            PoolOp::Undefine => "undefine",
            PoolOp::Volumes => "use volumes of",
        })
    }
}

impl PoolState {
    /// The state an allowed operation moves to while it runs (`Some`), or `None` if `op` is not
    /// allowed in this state. [`PoolState::after`] gives the state once it has succeeded.
    pub fn check(self, op: PoolOp) -> Option<PoolState> {
        use PoolOp as O;
        use PoolState as S;
        match (self, op) {
            (S::Inactive, O::Build) => Some(S::Building),
            (S::Inactive, O::Start) => Some(S::Running),
            (S::Inactive, O::Delete) => Some(S::Deleting),
            (S::Inactive, O::Undefine) => Some(S::Inactive),
            (S::Running | S::Inaccessible, O::Stop) => Some(S::Inactive),
            (S::Running | S::Inaccessible, O::Refresh) => Some(S::Running),
            (S::Running, O::Volumes) => Some(S::Running),
            _ => None,
        }
    }

    /// The state after `op` succeeded from this state (transient states settle).
    pub fn after(self, op: PoolOp) -> Option<PoolState> {
        self.check(op).map(|s| match s {
            PoolState::Building | PoolState::Deleting => PoolState::Inactive,
            s => s,
        })
    }

    /// True when the pool is started (libvirt's "active").
    pub fn is_active(self) -> bool {
        matches!(self, PoolState::Running | PoolState::Inaccessible)
    }
}

#[cfg(test)]
mod tests {
    use super::{PoolOp as O, PoolState as S};

    #[test]
    fn transitions() {
        assert_eq!(S::Inactive.after(O::Start), Some(S::Running));
        assert_eq!(S::Inactive.after(O::Build), Some(S::Inactive));
        assert_eq!(S::Inactive.check(O::Build), Some(S::Building));
        assert_eq!(S::Running.after(O::Stop), Some(S::Inactive));
        assert_eq!(S::Running.check(O::Start), None);
        assert_eq!(S::Running.check(O::Delete), None);
        assert_eq!(S::Running.check(O::Undefine), None);
        assert_eq!(S::Inactive.check(O::Volumes), None);
        assert_eq!(S::Inaccessible.check(O::Volumes), None);
        assert_eq!(S::Inaccessible.after(O::Refresh), Some(S::Running));
        assert_eq!(S::Building.check(O::Start), None);
    }
}
