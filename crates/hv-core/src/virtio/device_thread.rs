//! Each VM's device thread: activates and resets its virtio devices and starts their workers,
//! under the device-worker seccomp filter.
//!
//! A driver activates or resets a device by an MMIO write, which a vCPU thread handles; but
//! activation opens rings and timers, sets TAP offloads, may serve requests at once and starts
//! worker threads, none of which a vCPU's filter allows. So the transport hands that work to
//! this thread and waits for it. Workers started here inherit its filter.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{JoinHandle, ThreadId};

use crate::seccomp::{self, Filters, ThreadKind};
use crate::vm::Context;

type Job = Box<dyn FnOnce() + Send>;

/// A running device thread; dropping the last handle stops it.
#[derive(Debug)]
pub(crate) struct DeviceThread {
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    id: ThreadId,
}

/// Why the device thread could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("cannot start the device thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
}

impl DeviceThread {
    /// Starts the thread for the VM `owner`, confined by `filters`.
    pub(crate) fn spawn(
        name: &str,
        filters: Filters,
        owner: Weak<Context>,
    ) -> Result<Arc<Self>, StartError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                seccomp::set_owner(Some(owner));
                let installed = filters.install(ThreadKind::DeviceWorker);
                let ok = installed.is_ok();
                let _ = ready_tx.send(installed);
                if !ok {
                    return;
                }
                while let Ok(job) = rx.recv() {
                    job();
                    seccomp::report_violation();
                }
            })
            .map_err(StartError::Spawn)?;
        let id = thread.thread().id();
        let started = ready_rx.recv().unwrap_or_else(|_| {
            Err(seccomp::Error::Handler(vmm_sys_util::errno::Error::new(libc::ECHILD)))
        });
        let me =
            Arc::new(Self { jobs: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), id });
        started?;
        Ok(me)
    }

    /// Runs `f` on the device thread and returns its result; `None` if the thread is gone or
    /// `f` panicked there.
    pub(crate) fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            if let Ok(r) = r {
                let _ = tx.send(r);
            }
        });
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).as_ref()?.send(job).ok()?;
        rx.recv().ok()
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        // The last handle may go away on the device thread itself (a job dropping its VM):
        // it ends on its own once the channel is closed.
        if std::thread::current().id() != self.id {
            if let Some(t) = thread {
                let _ = t.join();
            }
        }
    }
}
