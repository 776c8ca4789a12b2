//! The VM's state endpoints on hv-core: `vm.snapshot`, `vm.restore`, `vm.send-migration`,
//! `vm.receive-migration`.
//!
//! A snapshot directory is hv-core's (`config.json`, `state.json`, `memory.bin`: see
//! [`hv_core::snapshot`]) plus [`VMM_CONFIG_FILE`], the `VmConfig` the VM was created with,
//! written first (hv-core writes its `config.json` last, so a directory with one is whole).
//! A restore reopens the devices from it (disks by path with their format, TAPs by name) in
//! the order hv-core recorded them, and hv-core checks they match before any vCPU runs.
//!
//! A migration is hv-core's protocol ([`hv_core::migration`]) after a preamble of hv-vmm's
//! own: `HVVM`, a u32 little-endian length (at most [`MAX_PREAMBLE`]), the source's
//! `VmConfig` as JSON, so the destination opens the same devices and its `vm.info` says what
//! the source's did. The transfer runs without the manager's lock, so `vm.info` and
//! `vm.counters` are answered meanwhile; every other call is refused until it ends.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hv_core::migration::protocol::{write_frame, Kind};
use hv_core::migration::{self, MigrationOptions, MigrationStats};
use hv_core::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{Action, ManagerError, VmManager};
use crate::api::VmState;
use crate::config::VmConfig;
use crate::console::{self, SerialConsole};
use crate::machine;
use crate::urls::{MigrationUrl, Stream};
use crate::Vmm;

/// hv-vmm's file in a snapshot directory: the `VmConfig` of the VM.
pub const VMM_CONFIG_FILE: &str = "vmm-config.json";
/// Magic of the migration preamble.
const PREAMBLE_MAGIC: [u8; 4] = *b"HVVM";
/// Largest `VmConfig` a preamble may carry.
pub const MAX_PREAMBLE: u32 = 1 << 20;

/// Why saving, restoring or moving the VM failed (an HTTP 500).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file of the snapshot directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot's `VmConfig` is missing, malformed or invalid.
    #[error("{}: not a VM configuration hv-vmm can restore: {reason}", path.display())]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The migration's connection could not be made.
    #[error("cannot {what} {url}: {source}")]
    Connect {
        /// `connect to`, `listen on` or `accept on`.
        what: &'static str,
        /// Where.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The migration preamble is not hv-vmm's or carries a bad configuration.
    #[error("bad migration preamble: {0}")]
    Preamble(String),
    /// The migration failed (the source VM goes on running).
    #[error("migration failed: {0}")]
    Migration(#[from] migration::Error),
}

/// Writes `dir/name` crash-safely: a temporary file, synced, renamed into place.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |source| StateError::Io { path: path.clone(), source };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Reads and validates the `VmConfig` of a snapshot directory.
fn load_config(dir: &Path) -> Result<VmConfig, StateError> {
    let path = dir.join(VMM_CONFIG_FILE);
    let bytes =
        std::fs::read(&path).map_err(|source| StateError::Io { path: path.clone(), source })?;
    let bad = |reason: String| StateError::BadConfig { path: path.clone(), reason };
    let config: VmConfig = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    config.validate().map_err(|e| bad(e.to_string()))?;
    Ok(config)
}

/// Reads every page of the VM's RAM once, so a mapped snapshot file is faulted in before the
/// guest runs (`prefault`).
fn prefault(vm: &hv_core::Vm) {
    let mut buf = vec![0u8; 1 << 20];
    for region in vm.ram().memory().iter() {
        let mut off = 0u64;
        while off < region.len() {
            let n = (region.len() - off).min(buf.len() as u64) as usize;
            let at = GuestAddress(region.start_addr().0 + off);
            // Inside the region by construction; a failure only means less is prefaulted.
            let _ = vm.ram().memory().read_slice(&mut buf[..n], at);
            off += n as u64;
        }
    }
}

impl VmManager {
    /// `vm.snapshot`: saves the paused VM to `dir` (created if missing); it stays paused.
    pub fn snapshot(&mut self, dir: &Path) -> Result<(), ManagerError> {
        self.check(Action::Snapshot)?;
        let config = self.config.as_ref().ok_or(ManagerError::NotCreated { action: "snapshot" })?;
        std::fs::create_dir_all(dir)
            .map_err(|source| StateError::Io { path: dir.to_owned(), source })?;
        // A VmConfig always serializes.
        write_file(dir, VMM_CONFIG_FILE, &serde_json::to_vec(config).unwrap_or_default())?;
        self.vm()?.snapshot(dir)?;
        log::info!("VM snapshotted to {}", dir.display());
        Ok(())
    }

    /// `vm.restore` (and `--restore`): rebuilds the VM saved in `dir`, paused; `prefault`
    /// reads all of its memory first, `resume` runs it.
    pub fn restore(
        &mut self,
        dir: &Path,
        prefault_ram: bool,
        resume: bool,
    ) -> Result<(), ManagerError> {
        let next = self.check(Action::Restore)?;
        let mut config = load_config(dir)?;
        // A pty is made anew (the snapshot's was another process's); a socket is bound again.
        let out = console::prepare(&mut self.console, &mut config)?;
        let machine = machine::rebuild_builder(&config, out)?;
        let vm = machine.builder.restore(dir)?;
        if prefault_ram {
            prefault(&vm);
        }
        log::info!("VM restored from {} (paused)", dir.display());
        self.config = Some(config);
        self.set_booted(vm, machine.nics);
        self.boots += 1;
        self.state = next;
        if resume {
            self.resume()?;
        }
        Ok(())
    }
}

/// Writes the preamble: magic, length, the `VmConfig` as JSON.
fn write_preamble(w: &mut impl Write, config: &VmConfig) -> std::io::Result<()> {
    let json = serde_json::to_vec(config).unwrap_or_default();
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&PREAMBLE_MAGIC);
    head[4..].copy_from_slice(&(json.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(&json)
}

/// Reads and validates the preamble.
fn read_preamble(r: &mut impl Read) -> Result<VmConfig, StateError> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).map_err(|e| StateError::Preamble(format!("reading it: {e}")))?;
    if head[..4] != PREAMBLE_MAGIC {
        return Err(StateError::Preamble("not an hv-vmm migration".into()));
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_PREAMBLE {
        return Err(StateError::Preamble(format!("{len} bytes is over the limit")));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json).map_err(|e| StateError::Preamble(format!("reading it: {e}")))?;
    let config: VmConfig =
        serde_json::from_slice(&json).map_err(|e| StateError::Preamble(e.to_string()))?;
    config.validate().map_err(|e| StateError::Preamble(e.to_string()))?;
    Ok(config)
}

/// `vm.send-migration`: migrates the VM to `url`. The manager is locked only to start and to
/// finish. On success the VM runs on the destination and this process's VM is Shutdown (the
/// process then ends, as Cloud Hypervisor's does); on failure it goes on as before.
pub fn send_migration(
    vmm: &Vmm,
    url: &MigrationUrl,
    opts: &MigrationOptions,
) -> Result<MigrationStats, ManagerError> {
    let (vm, config) = {
        let mut m = vmm.manager();
        m.check(Action::SendMigration)?;
        let vm = m.vm()?.clone();
        let config = m.config.clone().ok_or(ManagerError::NotCreated { action: "migrate" })?;
        m.migrating = true;
        (vm, config)
    };
    log::info!("migrating the VM to {url}");
    let result = (|| {
        let mut stream = url.connect().map_err(|source| StateError::Connect {
            what: "connect to",
            url: url.to_string(),
            source,
        })?;
        // A peer that stops answering ends the migration once its time is up (the source
        // VM then goes on), rather than holding it paused or stuck forever.
        stream.set_timeout(opts.timeout).map_err(|source| StateError::Connect {
            what: "set timeouts on",
            url: url.to_string(),
            source,
        })?;
        write_preamble(&mut stream, &config)
            .map_err(|e| StateError::Preamble(format!("sending it: {e}")))?;
        Ok::<_, StateError>(vm.send_migration(&mut stream, opts)?)
    })();
    let mut m = vmm.manager();
    m.migrating = false;
    let stats = result?;
    log::info!(
        "VM migrated to {url}: {} rounds, {} MiB, total {:?}, downtime {:?}",
        stats.rounds,
        stats.memory_bytes >> 20,
        stats.total,
        stats.downtime
    );
    // The VM has ended (migrated): the manager notices it as a guest end, so the process ends.
    m.poll_guest();
    Ok(stats)
}

/// `vm.receive-migration`: listens on `url`, accepts one source and runs the VM it sends.
pub fn receive_migration(vmm: &Vmm, url: &MigrationUrl) -> Result<(), ManagerError> {
    {
        let mut m = vmm.manager();
        m.check(Action::ReceiveMigration)?;
        m.migrating = true;
    }
    let result = (|| {
        let io = |what, source| StateError::Connect { what, url: url.to_string(), source };
        let listener = url.listen().map_err(|e| io("listen on", e))?;
        log::info!("listening for a migration on {url}");
        let mut stream = listener.accept().map_err(|e| io("accept on", e))?;
        receive_on(&mut stream)
    })();
    let mut m = vmm.manager();
    m.migrating = false;
    let (config, vm, nics, serial) = result?;
    let state =
        if vm.state() == hv_core::VmState::Paused { VmState::Paused } else { VmState::Running };
    log::info!("VM received from {url}: {state}");
    m.config = Some(config);
    m.console = serial;
    m.set_booted(vm, nics);
    m.boots += 1;
    m.state = Some(state);
    Ok(())
}

type Received = (VmConfig, hv_core::Vm, Vec<machine::NicCounters>, Option<SerialConsole>);

fn receive_on(stream: &mut Stream) -> Result<Received, ManagerError> {
    let mut serial = None;
    let machine = read_preamble(stream).map_err(ManagerError::from).and_then(|mut config| {
        // The source's pty is not ours: a new one, named in this process's configuration.
        let out = console::prepare(&mut serial, &mut config)?;
        let machine = machine::rebuild_builder(&config, out)?;
        Ok((config, machine))
    });
    let (config, machine) = match machine {
        Ok(m) => m,
        Err(e) => {
            // Tell the source, which then goes on running.
            let _ = write_frame(stream, Kind::Error, e.to_string().as_bytes());
            return Err(e);
        }
    };
    let vm = migration::accept(stream)
        .and_then(|incoming| incoming.complete(machine.builder))
        .map_err(StateError::from)?;
    Ok((config, vm, machine.nics, serial))
}
