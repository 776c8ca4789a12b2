//! The VM lifecycle as one explicit state machine, and how a VM ends.
//!
//! [`VmState::allows`] is the single table of allowed transitions: `Created` -> `Running` <->
//! `Paused` -> `Stopped`; every [`crate::Vm`] operation checks it. [`ExitReason`] says how a
//! VM stopped. `Control` is the run state the owner and the vCPU threads share: it parks vCPUs
//! while paused, records the first outcome and kicks every vCPU out of `KVM_RUN` then.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use kvm_bindings::{kvm_regs, kvm_sregs};

use crate::vcpu::Kicker;

/// Where a VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Built, vCPUs not started.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked outside KVM_RUN.
    Paused,
    /// The VM has an outcome; vCPU threads are ending or ended.
    Stopped,
}

/// The lifecycle operations checked against [`VmState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Start the vCPUs.
    Start,
    /// Park the vCPUs.
    Pause,
    /// Unpark them.
    Resume,
    /// Ask the guest to power off.
    Shutdown,
    /// Stop the VM at once.
    Kill,
}

impl VmState {
    /// The single table of allowed transitions.
    pub fn allows(self, op: Op) -> bool {
        use {Op::*, VmState::*};
        matches!(
            (self, op),
            (Created, Start)
                | (Running, Pause)
                | (Paused, Resume)
                | (Running | Paused, Shutdown)
                | (Created | Running | Paused, Kill)
        )
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
        })
    }
}

/// Why a guest crashed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrashReason {
    /// A triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM could not emulate an instruction (bytes as KVM reported them, possibly empty).
    EmulationFailure {
        /// The instruction bytes.
        insn: Vec<u8>,
    },
    /// Another KVM internal error.
    InternalError {
        /// KVM's suberror code.
        suberror: u32,
    },
    /// VM entry failed.
    FailEntry {
        /// The hardware entry failure reason.
        reason: u64,
    },
    /// The guest reported a panic (pvpanic or a crash system event).
    GuestPanic,
    /// An exit hv does not expect from a guest.
    UnexpectedExit(String),
}

/// What a crash left behind.
#[derive(Clone, Debug)]
pub struct CrashInfo {
    /// The vCPU that crashed.
    pub vcpu: u8,
    /// Why.
    pub reason: CrashReason,
    /// Its general registers, if they could be read.
    pub regs: Option<kvm_regs>,
    /// Its special registers, if they could be read.
    pub sregs: Option<kvm_sregs>,
}

/// How a VM ended.
#[derive(Clone, Debug)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    PoweredOff,
    /// The guest reset the machine (i8042, ACPI reset); the embedder may boot it again.
    Reset,
    /// Every vCPU halted with no interrupt controller to wake it.
    Halted,
    /// The guest crashed.
    Crashed(Box<CrashInfo>),
    /// The VM was killed by its owner.
    Killed,
    /// The VM was migrated: it runs on the destination now.
    Migrated,
    /// A vCPU thread panicked: a bug in hv or in a device model, never the guest's doing.
    Panicked {
        /// The vCPU whose thread panicked.
        vcpu: u8,
    },
    /// KVM_RUN failed on the host side.
    Failed {
        /// The vCPU whose KVM_RUN failed.
        vcpu: u8,
        /// The errno.
        errno: i32,
    },
}

impl ExitReason {
    /// True for a crash.
    pub fn is_crash(&self) -> bool {
        matches!(self, ExitReason::Crashed(_))
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::PoweredOff => write!(f, "powered off"),
            ExitReason::Reset => write!(f, "reset"),
            ExitReason::Halted => write!(f, "halted"),
            ExitReason::Killed => write!(f, "killed"),
            ExitReason::Migrated => write!(f, "migrated to another host"),
            ExitReason::Panicked { vcpu } => write!(f, "the VMM thread of vCPU {vcpu} panicked"),
            ExitReason::Failed { vcpu, errno } => write!(
                f,
                "KVM_RUN failed on vCPU {vcpu}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            ExitReason::Crashed(c) => {
                write!(f, "crashed on vCPU {}: ", c.vcpu)?;
                match &c.reason {
                    CrashReason::TripleFault => write!(f, "triple fault")?,
                    CrashReason::EmulationFailure { insn } => {
                        write!(f, "instruction emulation failed, bytes {insn:02x?}")?
                    }
                    CrashReason::InternalError { suberror } => {
                        write!(f, "KVM internal error {suberror}")?
                    }
                    CrashReason::FailEntry { reason } => {
                        write!(f, "VM entry failed (reason {reason:#x})")?
                    }
                    CrashReason::GuestPanic => write!(f, "guest kernel panic")?,
                    CrashReason::UnexpectedExit(e) => write!(f, "unexpected exit {e}")?,
                }
                if let Some(r) = &c.regs {
                    write!(f, " at rip={:#x} rsp={:#x}", r.rip, r.rsp)?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct ControlState {
    pub(crate) state: VmState,
    pub(crate) outcome: Option<ExitReason>,
    vcpus: usize,
    pub(crate) alive: usize,
    pub(crate) parked: usize,
    halted: usize,
}

/// The VM's run state shared by its vCPU threads and its owner.
#[derive(Debug)]
pub(crate) struct Control {
    inner: Mutex<ControlState>,
    pub(crate) cond: Condvar,
    pub(crate) kickers: Mutex<Vec<Arc<Kicker>>>,
}

impl Control {
    pub(crate) fn new(vcpus: usize) -> Self {
        Self {
            inner: Mutex::new(ControlState {
                state: VmState::Created,
                outcome: None,
                vcpus,
                alive: 0,
                parked: 0,
                halted: 0,
            }),
            cond: Condvar::new(),
            kickers: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn kick_all(&self) {
        for k in self.kickers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            k.kick();
        }
    }

    /// Called by a vCPU before each KVM_RUN: parks while paused; false once the VM has an
    /// outcome.
    pub(crate) fn gate(&self, mut on_park: impl FnMut()) -> bool {
        let mut g = self.lock();
        loop {
            if g.outcome.is_some() {
                return false;
            }
            if g.state != VmState::Paused {
                return true;
            }
            // Record the vCPU's state before counting it as parked, so a paused VM's
            // snapshot is complete when pause() returns.
            drop(g);
            on_park();
            g = self.lock();
            if g.state != VmState::Paused {
                continue;
            }
            g.parked += 1;
            self.cond.notify_all();
            while g.state == VmState::Paused && g.outcome.is_none() {
                g = self.cond.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            g.parked -= 1;
        }
    }

    /// Records the VM's outcome (the first one wins) and stops every vCPU.
    pub(crate) fn finish(&self, reason: ExitReason) {
        {
            let mut g = self.lock();
            if g.outcome.is_none() {
                g.outcome = Some(reason);
            }
            self.cond.notify_all();
        }
        self.kick_all();
    }

    pub(crate) fn vcpu_halted(&self) {
        let all = {
            let mut g = self.lock();
            g.halted += 1;
            g.halted == g.vcpus
        };
        if all {
            self.finish(ExitReason::Halted);
        }
    }

    pub(crate) fn vcpu_exited(&self) {
        let mut g = self.lock();
        g.alive -= 1;
        if g.alive == 0 {
            g.state = VmState::Stopped;
        }
        self.cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_table_allows_only_sensible_transitions() {
        use Op::*;
        assert!(VmState::Created.allows(Start));
        assert!(!VmState::Created.allows(Pause));
        assert!(VmState::Running.allows(Pause));
        assert!(!VmState::Running.allows(Start));
        assert!(!VmState::Running.allows(Resume));
        assert!(VmState::Paused.allows(Resume));
        assert!(VmState::Paused.allows(Kill));
        assert!(!VmState::Stopped.allows(Kill));
        assert!(!VmState::Stopped.allows(Start));
    }
}
