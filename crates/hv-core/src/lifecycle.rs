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
#[non_exhaustive]
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

/// The lifecycle operations and events checked against [`VmState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// The VM ended on its own (power-off, reset, crash, a failed vCPU).
    End,
}

impl VmState {
    /// The single table of transitions: the state `op` leads to from `self`, or `None` when
    /// `op` is not allowed in `self`.
    pub fn next(self, op: Op) -> Option<VmState> {
        use {Op::*, VmState::*};
        Some(match (self, op) {
            (Created, Start) => Running,
            (Running, Pause) => Paused,
            (Paused, Resume) => Running,
            (Running, Shutdown) => Running,
            (Paused, Shutdown) => Paused,
            (Created | Running | Paused, Kill | End) => Stopped,
            _ => return None,
        })
    }

    /// Whether `op` is allowed in this state.
    pub fn allows(self, op: Op) -> bool {
        self.next(op).is_some()
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
#[non_exhaustive]
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
    /// A thread of the VM (a device model on a vCPU, a device worker) made a system call its
    /// seccomp filter forbids (see [`crate::seccomp`]). The call failed; the VM was ended.
    SeccompViolation {
        /// The forbidden call.
        violation: crate::seccomp::Violation,
        /// The name of the thread that made it.
        thread: String,
    },
}

/// What a crash left behind.
#[derive(Clone, Debug)]
pub struct CrashInfo {
    /// The vCPU that crashed (`None` when the crash came from a device: pvpanic, a device
    /// worker's forbidden system call).
    pub vcpu: Option<u8>,
    /// Why.
    pub reason: CrashReason,
    /// Its general registers, if they could be read.
    pub regs: Option<kvm_regs>,
    /// Its special registers, if they could be read.
    pub sregs: Option<kvm_sregs>,
}

/// How a VM ended.
#[derive(Clone, Debug)]
#[non_exhaustive]
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
                match c.vcpu {
                    Some(vcpu) => write!(f, "crashed on vCPU {vcpu}: ")?,
                    None => write!(f, "crashed: ")?,
                }
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
                    CrashReason::SeccompViolation { violation, thread } => write!(
                        f,
                        "thread {thread} made {violation}, which its seccomp filter forbids"
                    )?,
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

    /// Records the VM's outcome (the first one wins), moves it to `Stopped` through `op`
    /// (`Kill` or `End`) and stops every vCPU.
    pub(crate) fn end(&self, op: Op, reason: ExitReason) {
        {
            let mut g = self.lock();
            if g.outcome.is_none() {
                if let Some(next) = g.state.next(op) {
                    g.state = next;
                    g.outcome = Some(reason);
                }
            }
            self.cond.notify_all();
        }
        self.kick_all();
    }

    /// The VM ended on its own for `reason` (the first outcome wins).
    pub(crate) fn finish(&self, reason: ExitReason) {
        self.end(Op::End, reason);
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
        assert_eq!(VmState::Created.next(Start), Some(VmState::Running));
        assert_eq!(VmState::Running.next(Pause), Some(VmState::Paused));
        assert_eq!(VmState::Paused.next(Resume), Some(VmState::Running));
        assert_eq!(VmState::Paused.next(Shutdown), Some(VmState::Paused));
        assert_eq!(VmState::Running.next(Kill), Some(VmState::Stopped));
        assert_eq!(VmState::Created.next(End), Some(VmState::Stopped));
        assert_eq!(VmState::Stopped.next(End), None);
    }

    #[test]
    fn the_first_outcome_wins_and_stops_the_vm() {
        let c = Control::new(1);
        c.lock().state = VmState::Running;
        c.finish(ExitReason::PoweredOff);
        c.end(Op::Kill, ExitReason::Killed);
        let g = c.lock();
        assert_eq!(g.state, VmState::Stopped);
        assert!(matches!(g.outcome, Some(ExitReason::PoweredOff)));
    }
}
