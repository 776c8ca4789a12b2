//! The VM manager: at most one VM, its configuration and its state, driven through hv-core.
//!
//! [`next_state`] is the single table of what each [`Action`] may do in each [`VmState`] (or
//! with no VM) and which state it leads to; every operation of [`VmManager`] goes through it,
//! so a call in the wrong state is a [`ManagerError`] that the server answers with Cloud
//! Hypervisor's status code, and no operation assigns a state by hand.
//!
//! As in Cloud Hypervisor, `vm.create` only stores the configuration (after validating it);
//! `vm.boot` opens the devices, builds the hv-core [`Vm`] and starts its vCPUs; `vm.shutdown`
//! stops the VM and keeps the configuration, so `vm.boot` can start it again; a guest reset
//! reboots it from the same configuration.

use std::sync::Arc;

use hv_core::seccomp::SeccompMode;
use hv_core::snapshot::MemorySource;
use hv_core::{ExitReason, Vm};

use crate::api::{VmCounters, VmInfo, VmState};
use crate::config::{ConfigError, VmConfig};
use crate::console::{self, ConsoleError, SerialConsole};
use crate::machine::{self, DeviceError, NicCounters};
use crate::urls::UrlError;

mod vmstate;

pub use vmstate::{receive_migration, send_migration, StateError, VMM_CONFIG_FILE};

/// What an API call asks of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `vm.create`.
    Create,
    /// `vm.boot`.
    Boot,
    /// `vm.pause`.
    Pause,
    /// `vm.resume`.
    Resume,
    /// `vm.shutdown`: stop the VM at once, keep its configuration.
    Shutdown,
    /// `vm.reboot`.
    Reboot,
    /// `vm.power-button`.
    PowerButton,
    /// `vm.delete`.
    Delete,
    /// `vm.info`, `vm.counters`.
    Inspect,
    /// `vm.snapshot`.
    Snapshot,
    /// `vm.restore`.
    Restore,
    /// `vm.send-migration`.
    SendMigration,
    /// `vm.receive-migration`.
    ReceiveMigration,
}

impl Action {
    /// The endpoint's verb, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Boot => "boot",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Shutdown => "shut down",
            Action::Reboot => "reboot",
            Action::PowerButton => "press the power button of",
            Action::Delete => "delete",
            Action::Inspect => "inspect",
            Action::Snapshot => "snapshot",
            Action::Restore => "restore",
            Action::SendMigration => "migrate",
            Action::ReceiveMigration => "receive a migration of",
        }
    }
}

/// The single table of transitions: the state after `action` from `state` (`None`: no VM).
///
/// A snapshot is taken of a paused VM and leaves it paused; a restore makes a paused VM (a
/// `resume` in its body runs it); a migration ends the source's VM (Shutdown) and makes a
/// running one on the destination (paused if it was paused on the source). As Cloud
/// Hypervisor's API documents, a restore or an incoming migration into a process that has a
/// VM already is a 404 ([`ManagerError::AlreadyCreated`]).
pub fn next_state(state: Option<VmState>, action: Action) -> Result<Option<VmState>, ManagerError> {
    use Action as A;
    use VmState as S;
    let Some(s) = state else {
        return match action {
            A::Create => Ok(Some(S::Created)),
            A::Delete => Ok(None),
            A::Restore => Ok(Some(S::Paused)),
            A::ReceiveMigration => Ok(Some(S::Running)),
            _ => Err(ManagerError::NotCreated { action: action.name() }),
        };
    };
    let next = match (s, action) {
        (S::Paused, A::Snapshot) => S::Paused,
        (S::Running | S::Paused, A::SendMigration) => S::Shutdown,
        (_, A::Restore | A::ReceiveMigration) => {
            return Err(ManagerError::AlreadyCreated { action: action.name() })
        }
        (S::Created | S::Shutdown, A::Boot) => S::Running,
        (S::Running, A::Pause) => S::Paused,
        (S::Paused, A::Resume) => S::Running,
        (S::Running | S::Paused, A::Shutdown) => S::Shutdown,
        (S::Running | S::Paused, A::Reboot) => S::Running,
        (S::Running | S::Paused, A::PowerButton) | (_, A::Inspect) => s,
        (_, A::Delete) => return Ok(None),
        _ => return Err(ManagerError::InvalidState { action: action.name(), state: s }),
    };
    Ok(Some(next))
}

/// Why an API call failed; [`status`](Self::status) is its HTTP status code.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No VM has been created.
    #[error("cannot {action} the VM: it is not created")]
    NotCreated {
        /// What was asked.
        action: &'static str,
    },
    /// A VM exists already (a restore and an incoming migration need a process without one).
    #[error("cannot {action} a VM: this process has one already")]
    AlreadyCreated {
        /// What was asked.
        action: &'static str,
    },
    /// A migration is under way: only `vm.info` and `vm.counters` are answered.
    #[error("cannot {action} the VM: a migration is under way")]
    Migrating {
        /// What was asked.
        action: &'static str,
    },
    /// The VM is not in a state that allows the call.
    #[error("cannot {action} the VM: it is {state}")]
    InvalidState {
        /// What was asked.
        action: &'static str,
        /// The VM's state.
        state: VmState,
    },
    /// The configuration is invalid or asks for what hv does not do.
    #[error("invalid VM configuration: {0}")]
    Config(#[from] ConfigError),
    /// A device could not be opened at boot.
    #[error("cannot boot the VM: {0}")]
    Device(#[from] DeviceError),
    /// The pty or socket of the serial console could not be set up.
    #[error("cannot set up the serial console: {0}")]
    Console(#[from] ConsoleError),
    /// hv-core refused to build or run the VM.
    #[error("VM operation failed: {0}")]
    Vm(#[from] hv_core::Error),
    /// A snapshot or migration URL that hv-vmm cannot use.
    #[error("invalid URL: {0}")]
    Url(#[from] UrlError),
    /// Saving, restoring or moving the VM failed.
    #[error(transparent)]
    State(#[from] StateError),
}

impl ManagerError {
    /// Cloud Hypervisor's status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            ManagerError::NotCreated { .. } | ManagerError::AlreadyCreated { .. } => 404,
            ManagerError::InvalidState { .. } | ManagerError::Migrating { .. } => 405,
            ManagerError::Config(_) | ManagerError::Url(_) => 400,
            ManagerError::Device(_)
            | ManagerError::Console(_)
            | ManagerError::Vm(_)
            | ManagerError::State(_) => 500,
        }
    }
}

/// A booted VM and the handles kept beside it.
struct Booted {
    /// Shared with a migration that runs without the manager's lock.
    vm: Arc<Vm>,
    nics: Vec<NicCounters>,
}

/// Holds at most one VM.
#[derive(Default)]
pub struct VmManager {
    config: Option<VmConfig>,
    state: Option<VmState>,
    booted: Option<Booted>,
    /// Boots so far (a reboot appends to the serial file instead of truncating it).
    boots: u64,
    /// How the guest ended on its own, until the process owner takes it.
    guest_end: Option<ExitReason>,
    /// The seccomp filters of the VM's vCPU and device threads.
    seccomp: SeccompMode,
    /// A migration (out or in) is under way.
    migrating: bool,
    /// The serial console's pty or socket, kept across reboots (made at the first boot).
    console: Option<SerialConsole>,
}

impl std::fmt::Debug for VmManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmManager").field("state", &self.state).finish_non_exhaustive()
    }
}

impl VmManager {
    /// A manager with no VM.
    pub fn new() -> Self {
        Self::default()
    }

    /// A manager with no VM whose VMs confine their vCPU and device threads as `mode` says.
    pub fn with_seccomp(mode: SeccompMode) -> Self {
        Self { seccomp: mode, ..Self::default() }
    }

    /// The VM's state (`None`: not created).
    pub fn state(&mut self) -> Option<VmState> {
        self.poll_guest();
        self.state
    }

    fn check(&mut self, action: Action) -> Result<Option<VmState>, ManagerError> {
        self.poll_guest();
        if self.migrating && action != Action::Inspect {
            return Err(ManagerError::Migrating { action: action.name() });
        }
        next_state(self.state, action)
    }

    /// Notices a guest that stopped on its own: a reset reboots it from its configuration;
    /// any other end leaves the VM shut down and is kept for [`take_guest_end`].
    ///
    /// [`take_guest_end`]: Self::take_guest_end
    pub fn poll_guest(&mut self) {
        let stopped =
            self.booted.as_ref().is_some_and(|b| b.vm.state() == hv_core::VmState::Stopped);
        if !stopped {
            return;
        }
        let Some(booted) = self.booted.take() else { return };
        // The VM was started (it stopped), so waiting cannot fail; a failure counts as killed.
        let reason = booted.vm.wait().unwrap_or(ExitReason::Killed);
        drop(booted);
        self.state = Some(VmState::Shutdown);
        if matches!(reason, ExitReason::Reset) {
            log::info!("the guest reset the machine: rebooting it");
            match self.start() {
                Ok(()) => return,
                Err(e) => log::error!("cannot reboot the VM after a guest reset: {e}"),
            }
        }
        match &reason {
            ExitReason::PoweredOff => log::info!("the guest powered off"),
            ExitReason::Migrated => log::info!("the VM was migrated: it runs on the destination"),
            ExitReason::Crashed(_) | ExitReason::Panicked { .. } | ExitReason::Failed { .. } => {
                log::error!("the guest stopped: {reason}")
            }
            _ => log::warn!("the guest stopped: {reason}"),
        }
        self.guest_end = Some(reason);
    }

    /// How the guest ended on its own since the last call, if it did.
    pub fn take_guest_end(&mut self) -> Option<ExitReason> {
        self.poll_guest();
        self.guest_end.take()
    }

    /// `vm.create`: validates and stores the configuration.
    pub fn create(&mut self, mut config: VmConfig) -> Result<(), ManagerError> {
        let next = self.check(Action::Create)?;
        config.validate()?;
        // A NIC without a MAC gets one now, kept in the config: `vm.info` shows it, and a
        // snapshot or a migration carries it, so the guest's NIC keeps its address.
        machine::assign_macs(&mut config);
        self.config = Some(config);
        self.state = next;
        Ok(())
    }

    /// Opens the devices, builds the VM and starts its vCPUs.
    fn start(&mut self) -> Result<(), ManagerError> {
        let config = self.config.as_mut().ok_or(ManagerError::NotCreated { action: "boot" })?;
        let out = console::prepare(&mut self.console, config)?;
        let machine = machine::builder(config, self.boots == 0, out)?;
        let vm = machine.builder.seccomp(self.seccomp).build()?;
        vm.start()?;
        self.boots += 1;
        log::info!("VM running, command line: {}", vm.cmdline());
        self.set_booted(vm, machine.nics);
        self.state = Some(VmState::Running);
        Ok(())
    }

    /// Stops the booted VM at once, if there is one, and waits for its vCPUs.
    fn stop(&mut self) {
        if let Some(b) = self.booted.take() {
            if let Err(e) = b.vm.kill() {
                log::debug!("kill: {e}");
            }
            match b.vm.wait() {
                Ok(reason) => log::info!("VM stopped: {reason}"),
                Err(e) => log::info!("VM stopped: {e}"),
            }
        }
    }

    /// `vm.boot`.
    pub fn boot(&mut self) -> Result<(), ManagerError> {
        let next = self.check(Action::Boot)?;
        self.start()?;
        self.state = next;
        Ok(())
    }

    /// `vm.pause`.
    pub fn pause(&mut self) -> Result<(), ManagerError> {
        let next = self.check(Action::Pause)?;
        self.vm()?.pause()?;
        self.state = next;
        Ok(())
    }

    /// `vm.resume`.
    pub fn resume(&mut self) -> Result<(), ManagerError> {
        let next = self.check(Action::Resume)?;
        self.vm()?.resume()?;
        self.state = next;
        Ok(())
    }

    /// `vm.shutdown`: stops the VM at once; the configuration stays for `vm.boot`.
    pub fn shutdown(&mut self) -> Result<(), ManagerError> {
        let next = self.check(Action::Shutdown)?;
        self.stop();
        self.state = next;
        Ok(())
    }

    /// `vm.reboot`: stops the VM and boots it again from its configuration.
    pub fn reboot(&mut self) -> Result<(), ManagerError> {
        let next = self.check(Action::Reboot)?;
        self.stop();
        self.state = Some(VmState::Shutdown);
        self.start()?;
        self.state = next;
        Ok(())
    }

    /// `vm.power-button`: presses the ACPI power button; the guest decides what to do.
    pub fn power_button(&mut self) -> Result<(), ManagerError> {
        self.check(Action::PowerButton)?;
        if !self.vm()?.shutdown()? {
            log::warn!(
                "power button pressed, but the guest has not enabled the ACPI power-button \
                 event: it may not react"
            );
        }
        Ok(())
    }

    /// `vm.delete`: stops the VM if it runs and forgets it.
    pub fn delete(&mut self) -> Result<(), ManagerError> {
        let next = self.check(Action::Delete)?;
        self.stop();
        self.config = None;
        self.console = None;
        self.state = next;
        Ok(())
    }

    /// `vm.info`.
    pub fn info(&mut self) -> Result<VmInfo, ManagerError> {
        self.check(Action::Inspect)?;
        let (Some(config), Some(state)) = (&self.config, self.state) else {
            return Err(ManagerError::NotCreated { action: Action::Inspect.name() });
        };
        let memory_file = self.booted.as_ref().and_then(|b| match b.vm.memory_source() {
            MemorySource::MappedFile(path) => Some(path.clone()),
            _ => None,
        });
        Ok(VmInfo {
            config: config.clone(),
            state,
            memory_actual_size: Some(config.memory.size),
            memory_file,
        })
    }

    /// `vm.counters`: each NIC's counters while the VM is booted (empty otherwise).
    pub fn counters(&mut self) -> Result<VmCounters, ManagerError> {
        self.check(Action::Inspect)?;
        let mut all = VmCounters::new();
        for nic in self.booted.iter().flat_map(|b| &b.nics) {
            let s = nic.handle.stats();
            let c = [
                ("rx_bytes", s.rx_bytes),
                ("rx_frames", s.rx_frames),
                ("tx_bytes", s.tx_bytes),
                ("tx_frames", s.tx_frames),
                ("rx_dropped", s.rx_dropped),
                ("rx_malformed", s.rx_malformed),
                ("tx_malformed", s.tx_malformed),
            ];
            all.insert(nic.id.clone(), c.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
        }
        Ok(all)
    }

    /// Stops the VM, if any, before the process ends (`vmm.shutdown`).
    pub fn shutdown_vmm(&mut self) {
        self.stop();
        if self.state.is_some_and(|s| s != VmState::Created) {
            self.state = Some(VmState::Shutdown);
        }
    }

    /// Keeps `vm` as the booted VM; the serial console's input goes to it.
    fn set_booted(&mut self, vm: Vm, nics: Vec<NicCounters>) {
        let vm = Arc::new(vm);
        if let Some(c) = &self.console {
            c.attach(&vm);
        }
        self.booted = Some(Booted { vm, nics });
    }

    fn vm(&self) -> Result<&Arc<Vm>, ManagerError> {
        self.booted.as_ref().map(|b| &b.vm).ok_or(ManagerError::NotCreated { action: "reach" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_cloud_hypervisor() {
        use Action::{Boot, Create, Delete, Inspect, Pause, PowerButton, Reboot, Resume};
        use Action::{ReceiveMigration, Restore, SendMigration, Snapshot};
        use VmState::{Created, Paused, Running};
        let all = [
            Create,
            Boot,
            Pause,
            Resume,
            Action::Shutdown,
            Reboot,
            PowerButton,
            Delete,
            Inspect,
            Snapshot,
            Restore,
            SendMigration,
            ReceiveMigration,
        ];
        for a in all {
            let r = next_state(None, a);
            match a {
                Create => assert_eq!(r.unwrap(), Some(Created)),
                Delete => assert_eq!(r.unwrap(), None),
                Restore => assert_eq!(r.unwrap(), Some(Paused)),
                ReceiveMigration => assert_eq!(r.unwrap(), Some(Running)),
                _ => assert_eq!(r.unwrap_err().status(), 404, "{a:?}"),
            }
        }
        let ok = |s, a| next_state(Some(s), a).unwrap();
        let code = |s, a| next_state(Some(s), a).unwrap_err().status();
        assert_eq!(ok(Created, Boot), Some(Running));
        assert_eq!(ok(VmState::Shutdown, Boot), Some(Running));
        assert_eq!(code(Running, Boot), 405);
        assert_eq!(code(Paused, Boot), 405);
        assert_eq!(ok(Running, Pause), Some(Paused));
        assert_eq!(code(Paused, Pause), 405);
        assert_eq!(code(Created, Pause), 405);
        assert_eq!(ok(Paused, Resume), Some(Running));
        assert_eq!(code(Running, Resume), 405);
        assert_eq!(ok(Paused, Action::Shutdown), Some(VmState::Shutdown));
        assert_eq!(code(Created, Action::Shutdown), 405);
        assert_eq!(code(VmState::Shutdown, Action::Shutdown), 405);
        assert_eq!(ok(Paused, Reboot), Some(Running));
        assert_eq!(code(VmState::Shutdown, Reboot), 405);
        assert_eq!(code(Created, PowerButton), 405);
        assert_eq!(ok(Paused, Snapshot), Some(Paused));
        assert_eq!(ok(Running, SendMigration), Some(VmState::Shutdown));
        assert_eq!(ok(Paused, SendMigration), Some(VmState::Shutdown));
        for s in [Created, Running, VmState::Shutdown] {
            assert_eq!(code(s, Snapshot), 405);
        }
        assert_eq!(code(Created, SendMigration), 405);
        assert_eq!(code(VmState::Shutdown, SendMigration), 405);
        for s in [Created, Running, Paused, VmState::Shutdown] {
            assert_eq!(code(s, Restore), 404);
            assert_eq!(code(s, ReceiveMigration), 404);
            assert_eq!(code(s, Create), 405);
            assert_eq!(ok(s, Delete), None);
            assert_eq!(ok(s, Inspect), Some(s));
        }
    }
}
