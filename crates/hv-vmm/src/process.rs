//! [`Vmm`]: the manager as the process shares it between its API thread and its main thread,
//! and how the process ends ([`VmmExit`]).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use hv_core::ExitReason;

use crate::manager::VmManager;

/// How often the main thread looks for a guest that stopped on its own.
const GUEST_POLL: Duration = Duration::from_millis(20);

/// Why the process ends.
#[derive(Clone, Debug)]
pub enum VmmExit {
    /// `vmm.shutdown` was called.
    Requested,
    /// The guest stopped on its own (powered off, crashed...), as Cloud Hypervisor's process
    /// ends when its guest does.
    Guest(ExitReason),
}

impl VmmExit {
    /// The process exit code: 0 for a requested shutdown or a guest power-off, 1 otherwise.
    pub fn code(&self) -> u8 {
        match self {
            VmmExit::Requested | VmmExit::Guest(ExitReason::PoweredOff) => 0,
            VmmExit::Guest(_) => 1,
        }
    }
}

/// The one VM manager of an `hv-vmm` process and its exit signal.
#[derive(Debug, Default)]
pub struct Vmm {
    manager: Mutex<VmManager>,
    exit: Mutex<Option<VmmExit>>,
    cond: Condvar,
}

impl Vmm {
    /// A process with no VM yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A process with no VM yet whose VMs confine their vCPU and device threads as `mode` says
    /// (by default they do, [`SeccompMode::Trap`](hv_core::seccomp::SeccompMode::Trap)).
    pub fn with_seccomp(mode: hv_core::seccomp::SeccompMode) -> Self {
        Self { manager: Mutex::new(VmManager::with_seccomp(mode)), ..Self::default() }
    }

    /// The manager, locked: API calls are served one at a time.
    pub fn manager(&self) -> MutexGuard<'_, VmManager> {
        self.manager.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `vmm.shutdown`: stops the VM, if any, and lets [`wait_exit`](Self::wait_exit) return.
    pub fn request_shutdown(&self) {
        self.manager().shutdown_vmm();
        self.set_exit(VmmExit::Requested);
    }

    fn set_exit(&self, exit: VmmExit) {
        let mut e = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_none() {
            *e = Some(exit);
        }
        self.cond.notify_all();
    }

    /// Blocks until the process should end: `vmm.shutdown`, or the guest stopping on its own
    /// (a guest reset reboots the VM instead).
    pub fn wait_exit(&self) -> VmmExit {
        loop {
            if let Some(end) = self.manager().take_guest_end() {
                self.set_exit(VmmExit::Guest(end));
            }
            let e = self.exit.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(exit) = e.as_ref() {
                return exit.clone();
            }
            drop(self.cond.wait_timeout(e, GUEST_POLL).unwrap_or_else(|e| e.into_inner()));
        }
    }
}
