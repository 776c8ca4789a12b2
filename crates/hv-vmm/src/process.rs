//! [`Vmm`]: the manager as the process shares it between its API thread and its main thread,
//! and how the process ends ([`VmmExit`]).
//!
//! Long operations (snapshot, restore, migrations) run on the thread that waits in
//! [`Vmm::wait_exit`] (the process's main thread), handed over with [`Vmm::offload`]: the API
//! thread goes on answering (`vm.info` during a migration), and the threads those operations
//! start (a restored VM's vCPUs) are not children of the API thread, so they do not inherit
//! its seccomp filter.

use std::collections::VecDeque;
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
    /// The process exit code: 0 for a requested shutdown, a guest power-off or a VM migrated
    /// away (as Cloud Hypervisor's source process ends), 1 otherwise.
    pub fn code(&self) -> u8 {
        match self {
            VmmExit::Requested | VmmExit::Guest(ExitReason::PoweredOff | ExitReason::Migrated) => 0,
            VmmExit::Guest(_) => 1,
        }
    }
}

/// Work handed to the main thread.
type Job = Box<dyn FnOnce(&Vmm) + Send>;

/// What the main thread waits for: the end, or work.
#[derive(Default)]
struct Signals {
    exit: Option<VmmExit>,
    jobs: VecDeque<Job>,
}

/// The one VM manager of an `hv-vmm` process, its exit signal and its queue of long operations.
#[derive(Default)]
pub struct Vmm {
    manager: Mutex<VmManager>,
    signals: Mutex<Signals>,
    cond: Condvar,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm").field("manager", &self.manager).finish_non_exhaustive()
    }
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

    fn signals(&self) -> MutexGuard<'_, Signals> {
        self.signals.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_exit(&self, exit: VmmExit) {
        let mut s = self.signals();
        if s.exit.is_none() {
            s.exit = Some(exit);
        }
        self.cond.notify_all();
    }

    /// Runs `job` on the thread waiting in [`wait_exit`](Self::wait_exit) and answers its
    /// result (the receiver is dropped unanswered if the process ends first).
    pub fn offload<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Vmm) -> T + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |vmm| {
            let _ = tx.send(job(vmm));
        });
        self.signals().jobs.push_back(job);
        self.cond.notify_all();
        rx
    }

    /// Blocks until the process should end: `vmm.shutdown`, or the guest stopping on its own
    /// (a guest reset reboots the VM instead). Runs the jobs given to
    /// [`offload`](Self::offload) meanwhile.
    pub fn wait_exit(&self) -> VmmExit {
        loop {
            if let Some(end) = self.manager().take_guest_end() {
                self.set_exit(VmmExit::Guest(end));
            }
            let mut s = self.signals();
            if let Some(job) = s.jobs.pop_front() {
                drop(s);
                job(self);
                continue;
            }
            if let Some(exit) = s.exit.as_ref() {
                return exit.clone();
            }
            drop(self.cond.wait_timeout(s, GUEST_POLL).unwrap_or_else(|e| e.into_inner()));
        }
    }
}
