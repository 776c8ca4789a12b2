//! Building, running and stopping a VM.
//!
//! The lifecycle is an explicit state machine ([`VmState`], in [`crate::lifecycle`]):
//! `Created` -> `Running` <-> `Paused` -> `Stopped`. Every operation checks the current state in
//! [`VmState::allows`]; a wrong call is an [`Error::InvalidState`], never undefined behaviour.
//! However a VM stops, [`Vm::wait`] returns an [`ExitReason`]: powered off, reset, halted,
//! crashed (with the vCPU state), killed, or failed.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hv_mem::GuestRam;
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VmFd;

use crate::acpi::{self};
use crate::boot::{self, EntryPoint};
use crate::bus::{self, Bus};
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::cmos::Cmos;
use crate::devices::serial::SerialPort;
use crate::kvm::{self, HostKind};
use crate::lifecycle::{Control, ControlState};
pub use crate::lifecycle::{CrashInfo, CrashReason, ExitReason, Op, VmState};

mod builder;
use crate::quirks::Quirks;
use crate::seccomp::{self, Filters, ThreadKind};
use crate::snapshot::{DeviceSource, MemorySource};
use crate::vcpu::{self, Vcpu};
use crate::virtio::MmioTransport;
use builder::apply_kvm_state;
pub use builder::VmBuilder;

/// Errors building or operating a VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// KVM could not be opened.
    #[error(transparent)]
    Kvm(#[from] kvm::Error),
    /// The machine description is invalid.
    #[error("invalid VM configuration: {field}: {reason}")]
    InvalidConfig {
        /// Which setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] hv_mem::Error),
    /// The kernel, initrd or command line could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// The ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    /// A vCPU could not be configured.
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    /// A device could not be placed on a bus.
    #[error(transparent)]
    Bus(#[from] bus::Error),
    /// A VM-level KVM ioctl failed.
    #[error("{what} failed: {source}")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A host resource (thread, eventfd) could not be created.
    #[error("cannot create {what}: {source}")]
    Host {
        /// What was being created.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
    /// Saving or restoring VM state failed.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    /// The operation is not allowed in the VM's current state.
    #[error("cannot {op} a VM that is {state}")]
    InvalidState {
        /// The operation.
        op: &'static str,
        /// The state the VM was in.
        state: VmState,
    },
}

/// Result type of VM operations.
pub type Result<T> = std::result::Result<T, Error>;

fn ioctl(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Ioctl { what, source }
}

/// What vCPU threads share: the buses, the run state, the host quirks.
pub(crate) struct Context {
    /// Registers of each vCPU as of its last park (pause).
    pub(crate) snapshots: Mutex<Vec<Option<(kvm_regs, kvm_sregs)>>>,
    /// The full state of each vCPU as of its last park, for a snapshot.
    pub(crate) vcpu_states: Mutex<Vec<Option<VcpuCapture>>>,
    /// The MSRs KVM reports, saved with each vCPU.
    pub(crate) msr_list: Vec<u32>,
    /// Whether the in-kernel irqchip is used.
    pub(crate) irqchip: bool,
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) control: Control,
    pub(crate) quirks: Quirks,
}

/// A vCPU's state read at its last park, or why it could not be read.
pub(crate) type VcpuCapture =
    std::result::Result<crate::snapshot::VcpuState, crate::snapshot::VcpuStateError>;

/// A VM: its memory, devices and vCPUs. Every operation takes `&self`, so one thread may
/// [`wait`](Vm::wait) while another pauses or kills (share it in an `Arc`).
pub struct Vm {
    host: HostKind,
    /// Declared before `ram`: the VM (and its memslots) goes before the memory they map.
    vm_fd: VmFd,
    ram: GuestRam,
    pub(crate) ctx: Arc<Context>,
    pub(crate) serial: Arc<Mutex<SerialPort>>,
    pub(crate) pm: Arc<Mutex<AcpiPm>>,
    pub(crate) cmos: Arc<Mutex<Cmos>>,
    pub(crate) transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub(crate) sources: Vec<Option<DeviceSource>>,
    pub(crate) vcpu_count: usize,
    pub(crate) memory_source: MemorySource,
    pending: Mutex<Vec<Vcpu>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    vcpu_filters: Filters,
    cmdline: String,
    entry: EntryPoint,
    pub(crate) dirty_tracking: bool,
}

impl Vm {
    /// Puts a built, never started VM in a checked saved `state` (a migration's destination
    /// builds the machine while memory streams in, then applies the state that ends the
    /// stream).
    pub(crate) fn apply_state(&self, state: &crate::snapshot::MachineState) -> Result<()> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() != self.vcpu_count {
            return Err(Error::InvalidState { op: "restore the state of", state: self.state() });
        }
        self.serial.lock().unwrap_or_else(|e| e.into_inner()).restore(&state.serial);
        self.cmos.lock().unwrap_or_else(|e| e.into_inner()).restore(&state.cmos);
        self.pm.lock().unwrap_or_else(|e| e.into_inner()).restore(&state.acpi_pm);
        apply_kvm_state(&self.vm_fd, &pending, &self.transports, state)
    }
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("host", &self.host)
            .field("state", &self.state())
            .field("cmdline", &self.cmdline)
            .finish()
    }
}

impl Vm {
    /// The current lifecycle state.
    pub fn state(&self) -> VmState {
        self.ctx.control.lock().state
    }

    /// The host kind the VM runs on.
    pub fn host(&self) -> HostKind {
        self.host
    }

    /// The command line the guest was given (with any quirk additions).
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// How the kernel is entered.
    pub fn entry(&self) -> EntryPoint {
        self.entry
    }

    /// The guest's RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The KVM VM fd (for devices that register ioeventfds and irqfds), borrowed from the VM
    /// so it cannot outlive the guest RAM its memslots map.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Pages written since the last call: KVM's log of guest writes merged with the VMM's own
    /// writes (device DMA), read and cleared. Needs [`VmBuilder::dirty_tracking`].
    pub fn dirty_log(&self) -> Result<hv_mem::DirtyBitmap> {
        if !self.dirty_tracking {
            return Err(Error::InvalidConfig {
                field: "dirty_tracking",
                reason: "the VM was built without dirty-page tracking".into(),
            });
        }
        let mut slots = Vec::new();
        for (slot, (gpa, len, _)) in self.ram.regions().into_iter().enumerate() {
            let words = self
                .vm_fd
                .get_dirty_log(slot as u32, len as usize)
                .map_err(ioctl("KVM_GET_DIRTY_LOG"))?;
            slots.push((gpa, len, words));
        }
        let mut bitmap = hv_mem::DirtyBitmap::from_kvm_logs(slots)
            .map_err(|e| Error::InvalidConfig { field: "dirty_tracking", reason: e.to_string() })?;
        let vmm = self.ram.take_vmm_dirty();
        bitmap
            .merge(&vmm)
            .map_err(|e| Error::InvalidConfig { field: "dirty_tracking", reason: e.to_string() })?;
        Ok(bitmap)
    }

    /// Feeds bytes to the serial console's input; returns how many were queued.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        self.serial.lock().unwrap_or_else(|e| e.into_inner()).enqueue_input(bytes)
    }

    /// Checks `op` against the state table and moves the VM to the state it names; returns
    /// the guard with the state already moved.
    fn transition(&self, op: Op, opname: &'static str) -> Result<MutexGuard<'_, ControlState>> {
        let mut g = self.ctx.control.lock();
        match g.state.next(op) {
            Some(next) if op != Op::Kill && op != Op::End => {
                g.state = next;
                Ok(g)
            }
            Some(_) => Ok(g),
            None => Err(Error::InvalidState { op: opname, state: g.state }),
        }
    }

    /// Starts one host thread per vCPU, each confined by the vCPU seccomp filter.
    pub fn start(&self) -> Result<()> {
        self.start_in(VmState::Running)
    }

    /// Starts the vCPU threads parked, as [`pause`](Self::pause) leaves them (a restored VM
    /// starts so); [`resume`](Self::resume) runs them.
    pub fn start_paused(&self) -> Result<()> {
        self.start_in(VmState::Paused)?;
        let mut g = self.ctx.control.lock();
        while g.parked < g.alive && g.outcome.is_none() {
            g = self.ctx.control.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        Ok(())
    }

    fn start_in(&self, state: VmState) -> Result<()> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut g = self.transition(Op::Start, "start")?;
            g.state = state;
            g.alive = pending.len();
        }
        crate::signal::install();
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut failure = None;
        for v in pending.drain(..) {
            let name = format!("hv-vcpu{}", v.id);
            let (filters, ready) = (self.vcpu_filters.clone(), ready_tx.clone());
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                let installed = filters.install(ThreadKind::Vcpu);
                let ok = installed.is_ok();
                let _ = ready.send(installed);
                vcpu::run(v, ok);
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(source) => {
                    failure = Some(Error::Host { what: "vCPU thread", source });
                    break;
                }
            }
        }
        drop(ready_tx);
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = failure.or(Some(Error::Seccomp(e))),
                Err(_) => break,
            }
        }
        if let Some(e) = failure {
            // The vCPUs not started count as exited so waiting still ends.
            self.ctx.control.end(Op::Kill, ExitReason::Killed);
            self.ctx.control.lock().alive = threads.len();
            self.ctx.control.cond.notify_all();
            return Err(e);
        }
        Ok(())
    }

    /// Parks every vCPU outside KVM_RUN; returns once none is running guest code.
    pub fn pause(&self) -> Result<()> {
        drop(self.transition(Op::Pause, "pause")?);
        self.ctx.control.kick_all();
        let mut g = self.ctx.control.lock();
        while g.parked < g.alive && g.outcome.is_none() {
            g = self.ctx.control.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        Ok(())
    }

    /// The registers of every vCPU while the VM is paused (for debugging a stuck guest).
    pub fn vcpu_registers(&self) -> Result<Vec<Option<(kvm_regs, kvm_sregs)>>> {
        let state = self.state();
        if state != VmState::Paused {
            return Err(Error::InvalidState { op: "read the registers of", state });
        }
        Ok(self.ctx.snapshots.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) -> Result<()> {
        let _g = self.transition(Op::Resume, "resume")?;
        self.ctx.control.cond.notify_all();
        Ok(())
    }

    /// Asks the guest to shut down gracefully by pressing the ACPI power button. The guest
    /// decides what to do (Linux's ACPI button driver reports it to user space, whose init
    /// powers off); [`wait`](Vm::wait) reports the outcome. Returns whether the guest had
    /// enabled the power-button event, i.e. whether it can hear the request at all.
    pub fn shutdown(&self) -> Result<bool> {
        drop(self.transition(Op::Shutdown, "shut down")?);
        Ok(self.pm.lock().unwrap_or_else(|e| e.into_inner()).press_power_button())
    }

    /// Stops the VM at once; [`wait`](Vm::wait) then returns [`ExitReason::Killed`].
    pub fn kill(&self) -> Result<()> {
        drop(self.transition(Op::Kill, "kill")?);
        self.ctx.control.end(Op::Kill, ExitReason::Killed);
        Ok(())
    }

    /// Waits for the VM to stop (every vCPU thread ended) and returns why. Other threads may
    /// pause, resume or kill the VM meanwhile. Waiting for a VM that was never started (nor
    /// killed) is an [`Error::InvalidState`]: it could never stop.
    pub fn wait(&self) -> Result<ExitReason> {
        loop {
            if let Some(r) = self.wait_timeout(Duration::from_secs(3600)) {
                return Ok(r);
            }
            let state = self.state();
            if state == VmState::Created {
                return Err(Error::InvalidState { op: "wait for", state });
            }
        }
    }

    /// Waits at most `timeout` for the VM to stop; `None` if it has not (a VM never started
    /// does not stop).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        let deadline = Instant::now() + timeout;
        let outcome = {
            let mut g = self.ctx.control.lock();
            loop {
                if g.state == VmState::Created {
                    return None;
                }
                if let (VmState::Stopped, 0, Some(outcome)) = (g.state, g.alive, &g.outcome) {
                    break outcome.clone();
                }
                let now = Instant::now();
                if now >= deadline {
                    return None;
                }
                g = self
                    .ctx
                    .control
                    .cond
                    .wait_timeout(g, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        // Every vCPU thread has left its loop; reap them.
        for t in self.threads.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = t.join();
        }
        Some(outcome)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let threads = std::mem::take(self.threads.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !threads.is_empty() {
            self.ctx.control.end(Op::Kill, ExitReason::Killed);
            for t in threads {
                let _ = t.join();
            }
        }
    }
}
