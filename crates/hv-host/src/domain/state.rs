//! Domain states and transitions, libvirt's (`virDomainState`), in one table.
//!
//! ```text
//!             start / restore                suspend
//!  ShutOff ---------------------> Running -----------> Paused
//!     ^  ^                          |  ^  <------------   |
//!     |  |   destroy / shutdown /   |  |     resume       |
//!     |  +--- save / migrate -------+  +-- reboot         |
//!     |                             |                     |
//!     +-------- destroy ------------+---------------------+
//!                                   | VMM died / guest crashed
//!                                   v
//!                                Crashed --destroy--> ShutOff
//! ```
//!
//! [`DomainState::apply`] is the only place that says which operation is allowed in which
//! state and which state it leads to; callers never assign a state by hand.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A domain's state as virsh prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DomainState {
    /// Defined, no VMM process (`shut off`).
    ShutOff,
    /// Its VMM runs the guest.
    Running,
    /// Its VMM holds the guest paused.
    Paused,
    /// The guest or its VMM died on its own; kept for inspection until destroyed.
    Crashed,
}

impl DomainState {
    /// virsh's spelling (`shut off`, `running`, `paused`, `crashed`).
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::ShutOff => "shut off",
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::Crashed => "crashed",
        }
    }

    /// Whether a VMM process exists for the domain in this state.
    pub fn is_active(self) -> bool {
        matches!(self, DomainState::Running | DomainState::Paused)
    }

    /// The state `op` leads to from this one, or why it is not allowed here.
    pub fn apply(self, op: DomainOp) -> Result<DomainState, TransitionError> {
        use DomainOp as O;
        use DomainState as S;
        let next = match (self, op) {
            (S::ShutOff | S::Crashed, O::Start | O::Restore) => S::Running,
            (S::ShutOff | S::Crashed, O::Undefine) => self,
            (S::ShutOff | S::Crashed, O::EditDefinition) => self,
            (S::Running, O::Suspend) => S::Paused,
            (S::Paused, O::Resume) => S::Running,
            (S::Running, O::Reboot) => S::Running,
            (S::Running | S::Paused, O::Shutdown | O::Save | O::MigrateOut) => S::ShutOff,
            (S::Running | S::Paused | S::Crashed, O::Destroy) => S::ShutOff,
            (S::Running | S::Paused, O::GuestPoweredOff) => S::ShutOff,
            (S::Running | S::Paused, O::VmmDied | O::GuestCrashed) => S::Crashed,
            (S::ShutOff, O::MigrateIn) => S::Running,
            _ => return Err(TransitionError { state: self, op }),
        };
        Ok(next)
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that changes a domain's state: a user's verb or an event from its VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DomainOp {
    /// `virsh start`.
    Start,
    /// `virsh shutdown` (the guest acknowledged, or the timeout forced it).
    Shutdown,
    /// `virsh destroy`.
    Destroy,
    /// `virsh reboot`.
    Reboot,
    /// `virsh suspend`.
    Suspend,
    /// `virsh resume`.
    Resume,
    /// `virsh save`.
    Save,
    /// `virsh restore`.
    Restore,
    /// `virsh undefine`.
    Undefine,
    /// `attach-disk`/`detach-disk`/re-`define` of the definition.
    EditDefinition,
    /// The domain left for another host.
    MigrateOut,
    /// The domain arrived from another host.
    MigrateIn,
    /// The guest powered itself off.
    GuestPoweredOff,
    /// The guest crashed (its VMM reported it).
    GuestCrashed,
    /// The VMM process exited or was killed without the guest stopping.
    VmmDied,
}

impl fmt::Display for DomainOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainOp::Start => "start",
            DomainOp::Shutdown => "shut down",
            DomainOp::Destroy => "destroy",
            DomainOp::Reboot => "reboot",
            DomainOp::Suspend => "suspend",
            DomainOp::Resume => "resume",
            DomainOp::Save => "save",
            DomainOp::Restore => "restore",
            DomainOp::Undefine => "undefine",
            DomainOp::EditDefinition => "change the definition of",
            DomainOp::MigrateOut => "migrate",
            DomainOp::MigrateIn => "receive",
            DomainOp::GuestPoweredOff => "power off",
            DomainOp::GuestCrashed => "crash",
            DomainOp::VmmDied => "lose the VMM of",
        })
    }
}

/// Why a domain is in its state (virsh `domstate --reason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StateReason {
    /// Never started, or stopped normally.
    Unknown,
    /// Booted by a user.
    Booted,
    /// Restored from a saved state.
    Restored,
    /// Arrived by migration.
    Migrated,
    /// Paused by a user.
    User,
    /// Stopped by a user (`destroy`).
    Destroyed,
    /// The guest shut itself down.
    Shutdown,
    /// Saved to a file.
    Saved,
    /// The guest crashed or its VMM died, with what was known.
    Crashed(String),
}

impl fmt::Display for StateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateReason::Unknown => f.write_str("unknown"),
            StateReason::Booted => f.write_str("booted"),
            StateReason::Restored => f.write_str("restored"),
            StateReason::Migrated => f.write_str("migrated"),
            StateReason::User => f.write_str("user"),
            StateReason::Destroyed => f.write_str("destroyed"),
            StateReason::Shutdown => f.write_str("shutdown"),
            StateReason::Saved => f.write_str("saved"),
            StateReason::Crashed(why) => write!(f, "crashed: {why}"),
        }
    }
}

/// An operation that is not allowed in the domain's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {op} a domain that is {state}")]
pub struct TransitionError {
    /// The state the domain was in.
    pub state: DomainState,
    /// What was asked.
    pub op: DomainOp,
}

#[cfg(test)]
mod tests {
    use super::{DomainOp as O, DomainState as S};

    #[test]
    fn lifecycle_table() {
        assert_eq!(S::ShutOff.apply(O::Start), Ok(S::Running));
        assert_eq!(S::Running.apply(O::Suspend), Ok(S::Paused));
        assert_eq!(S::Paused.apply(O::Resume), Ok(S::Running));
        assert_eq!(S::Paused.apply(O::Destroy), Ok(S::ShutOff));
        assert_eq!(S::Running.apply(O::VmmDied), Ok(S::Crashed));
        assert_eq!(S::Crashed.apply(O::Destroy), Ok(S::ShutOff));
        assert_eq!(S::Crashed.apply(O::Start), Ok(S::Running));
        assert_eq!(S::Running.apply(O::Save), Ok(S::ShutOff));
        assert_eq!(S::ShutOff.apply(O::Restore), Ok(S::Running));
    }

    #[test]
    fn refused_transitions_name_state_and_verb() {
        let e = S::Running.apply(O::Start).unwrap_err();
        assert_eq!(e.to_string(), "cannot start a domain that is running");
        assert!(S::Running.apply(O::Undefine).is_err());
        assert!(S::ShutOff.apply(O::Suspend).is_err());
        assert!(S::Paused.apply(O::Suspend).is_err());
        assert!(S::ShutOff.apply(O::Destroy).is_err());
        assert!(S::Running.apply(O::EditDefinition).is_err());
    }
}
