//! The VMM confines itself: a seccomp filter per kind of thread, as Firecracker and Cloud
//! Hypervisor do.
//!
//! - **vCPU threads** may run `KVM_RUN` and the few vCPU ioctls the run loop uses, write console
//!   bytes and interrupt eventfds, and kick the other vCPUs.
//! - **Device threads** (each VM's device thread, which activates and resets its virtio
//!   devices, and the [`crate::virtio::worker::Worker`]s it starts) may do block I/O (`pread`,
//!   `pwritev`, `fdatasync`, `fallocate`, `io_uring_enter`...), TAP reads and writes and their
//!   few ioctls, epoll, eventfds and timers, and start threads (never processes).
//! - **The main/API thread** that builds and controls VMs installs its own filter with
//!   [`install_main_thread_filter`]. Threads inherit the filters of the thread that starts
//!   them, so that filter also allows everything the vCPU and device threads need.
//!
//! [`crate::VmBuilder`] installs the vCPU and device filters by default
//! ([`SeccompMode::Trap`]); [`crate::VmBuilder::seccomp`] with [`SeccompMode::Off`] turns them
//! off for debugging, [`SeccompMode::Log`] lets forbidden calls through and has the kernel log
//! them (audit log / `dmesg`).
//!
//! A forbidden call never takes the process down: in `Trap` mode it raises `SIGSYS` on the
//! calling thread, whose handler notes the call number in a thread-local and makes the call
//! fail with `EPERM`. The thread's loop then sees the note and ends its VM as
//! [`CrashReason::SeccompViolation`](crate::CrashReason::SeccompViolation), naming the call;
//! other VMs of the process run on. Two calls are refused softly instead, with an errno and no
//! crash, because libc makes them on its own and copes with the refusal: `open`/`openat`
//! (`EACCES`: glibc's malloc reads the CPU count from `/sys` in whichever thread first needs
//! it) and, on device threads, `clone3` (`ENOSYS`: glibc then starts threads with `clone`,
//! whose flags the filter checks). No vCPU or device thread can open a file.
//!
//! A forbidden call made while the thread blocks every signal (glibc does so only briefly,
//! around `clone`) cannot be trapped: the kernel then kills the process, as with
//! `SECCOMP_RET_KILL`. The lists are built so that this does not happen.

mod names;
mod rules;
mod trap;

use std::fmt;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use names::syscall_name;
pub use trap::{last_violation, take_violation};
pub(crate) use trap::{owner, report_violation, set_owner};

/// Whether and how hv's threads are confined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SeccompMode {
    /// No filter (for debugging).
    Off,
    /// Filters installed, but a forbidden call goes through and the kernel logs it.
    Log,
    /// Filters installed; a forbidden call fails and ends its VM as crashed (the default).
    #[default]
    Trap,
}

/// The kinds of thread, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThreadKind {
    /// A vCPU's run loop.
    Vcpu,
    /// A VM's device thread or one of its device workers.
    DeviceWorker,
    /// The thread that builds and controls VMs.
    Main,
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::DeviceWorker => "device worker",
            ThreadKind::Main => "main thread",
        })
    }
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The filter could not be compiled.
    #[error("cannot build the {kind} seccomp filter: {source}")]
    Build {
        /// Whose filter.
        kind: ThreadKind,
        /// What seccompiler said.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install the {kind} seccomp filter: {source}")]
    Install {
        /// Whose filter.
        kind: ThreadKind,
        /// What seccompiler said.
        #[source]
        source: seccompiler::Error,
    },
    /// The `SIGSYS` handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] vmm_sys_util::errno::Error),
}

/// A system call a filter refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The system call number (x86_64).
    pub syscall: i64,
}

impl Violation {
    /// The call's name, when known.
    pub fn name(&self) -> Option<&'static str> {
        syscall_name(self.syscall)
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "`{name}` (system call {})", self.syscall),
            None => write!(f, "system call {}", self.syscall),
        }
    }
}

/// The compiled filters of one thread kind (none when `mode` is `Off`). The first allows the
/// kind's calls; the others make calls libc can do without fail with an errno (a filter's
/// `ERRNO` wins over another's `ALLOW`).
#[derive(Clone, Debug, Default)]
pub struct Filters(Vec<BpfProgram>);

impl Filters {
    /// Compiles the filters of `kind`, allowing `extra` system calls besides its own.
    pub fn new(kind: ThreadKind, mode: SeccompMode, extra: &[i64]) -> Result<Self, Error> {
        let build = |source| Error::Build { kind, source };
        let mismatch = match mode {
            SeccompMode::Off => return Ok(Self(Vec::new())),
            SeccompMode::Log => SeccompAction::Log,
            SeccompMode::Trap => SeccompAction::Trap,
        };
        let arch = TargetArch::x86_64;
        let main = SeccompFilter::new(
            rules::rules(kind, extra).map_err(build)?,
            mismatch,
            SeccompAction::Allow,
            arch,
        )
        .map_err(build)?;
        let mut programs = vec![BpfProgram::try_from(main).map_err(build)?];
        for (errno, calls) in rules::refused(kind) {
            let refused = calls.iter().map(|&nr| (nr, Vec::new())).collect();
            let filter = SeccompFilter::new(
                refused,
                SeccompAction::Allow,
                SeccompAction::Errno(errno),
                arch,
            )
            .map_err(build)?;
            programs.push(BpfProgram::try_from(filter).map_err(build)?);
        }
        Ok(Self(programs))
    }

    /// Installs the filters on the calling thread (and the `SIGSYS` handler in the process).
    /// Threads it starts afterwards inherit them.
    pub fn install(&self, kind: ThreadKind) -> Result<(), Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        trap::install_handler().map_err(Error::Handler)?;
        // Installing a filter takes `prctl` and `seccomp`, which the main program of a thread
        // kind does not allow: it goes last.
        for program in self.0.iter().rev() {
            seccompiler::apply_filter(program).map_err(|source| Error::Install { kind, source })?;
        }
        Ok(())
    }

    /// True when there is nothing to install (`SeccompMode::Off`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Confines the calling thread as a VMM's main/API thread: building VMs (files, KVM set-up,
/// guest RAM, TAPs), starting, pausing, killing and dropping them, and serving a local API
/// socket; `extra` names further system calls the embedder's own code on that thread needs.
///
/// Call it once the host resources the process needs at start-up are open, before
/// [`crate::Vm::start`]: threads started afterwards inherit the filter (it allows what vCPU
/// and device threads need, and they add their own narrower filter on top). With
/// [`SeccompMode::Trap`] a forbidden call fails with `EPERM` and is reported by
/// [`last_violation`]; it never kills the process.
///
/// ```no_run
/// use hv_core::seccomp::{install_main_thread_filter, SeccompMode};
/// install_main_thread_filter(SeccompMode::Trap, &[])?;
/// # Ok::<(), hv_core::seccomp::Error>(())
/// ```
pub fn install_main_thread_filter(mode: SeccompMode, extra: &[i64]) -> Result<(), Error> {
    Filters::new(ThreadKind::Main, mode, extra)?.install(ThreadKind::Main)
}

/// The seccomp mode of the calling thread as `/proc/thread-self/status` reports it
/// (0 none, 1 strict, 2 filter); `None` if it cannot be read.
pub fn thread_seccomp_status() -> Option<u8> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Seccomp:")).and_then(|v| v.trim().parse().ok())
}
