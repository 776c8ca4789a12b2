//! One host's domains: definitions, their VMM processes, and the state table between them.
//!
//! [`Host`] is the library behind `hvd`; an embedder can use it in-process. Every running
//! domain is an `hv-vmm` process in a session of its own, recorded in `DIR/run/NAME.json` (pid
//! and start time, API socket, TAPs), so a new `Host` on the same directory finds the running
//! domains again after the previous one was killed or upgraded, and a domain whose VMM died
//! meanwhile is reported as crashed.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::domain::{
    DiskFormat, DiskSource, DomainDef, DomainName, DomainOp, DomainState, DomainStore,
    InterfaceSource, SerialDef, StateReason,
};
use crate::error::{io_err, HostError, Result};
use crate::persist;
use crate::process::ProcessRecord;
use crate::protocol::{DomInfo, DomainRow, IfRow};
use crate::vmm::{self, ResolvedNic, SerialSink, VmmApi, VmmPaths};

mod console;
mod disks;
mod migrate;
mod poll;
mod save;

pub use migrate::{MigrateFlags, SharedDisk};

/// How long a VMM gets to bring its API up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How a host is set up.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where definitions, runtime records, logs and the pools' and networks' state live.
    pub state_dir: PathBuf,
    /// The `hv-vmm` binary each running domain executes.
    pub vmm_binary: PathBuf,
}

/// What the host remembers of an active (or crashed) domain, persisted crash-safely.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunRecord {
    id: u32,
    state: DomainState,
    reason: StateReason,
    process: Option<ProcessRecord>,
    taps: Vec<String>,
}

/// The host's domain table, behind [`Host`]'s lock.
pub(crate) struct Inner {
    store: DomainStore,
    runs: BTreeMap<DomainName, RunRecord>,
    /// VMM processes this host started itself (reaped here); adopted ones are not children.
    children: HashMap<u32, Child>,
    next_id: u32,
    /// Why each shut-off domain stopped, while this host process knows it.
    last_reason: HashMap<DomainName, StateReason>,
}

/// One host's domains.
pub struct Host {
    cfg: HostConfig,
    inner: Mutex<Inner>,
    /// The networks' DHCP servers (see the network module).
    pub(crate) dhcp: std::sync::Mutex<crate::network::DhcpServers>,
    /// Migrations this host prepared to receive.
    incoming: migrate::IncomingMap,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("state_dir", &self.cfg.state_dir).finish()
    }
}

fn vmm_err(e: vmm::VmmError) -> HostError {
    HostError::Vmm(e.to_string())
}

impl Host {
    /// Opens the host state under `cfg.state_dir`: every definition, and every domain that was
    /// running when the last host process left it (still running, or now crashed).
    pub async fn open(cfg: HostConfig) -> Result<Host> {
        fs::create_dir_all(cfg.state_dir.join("run"))
            .map_err(io_err("create", &cfg.state_dir.join("run")))?;
        let store = DomainStore::open(&cfg.state_dir)?;
        let mut runs = BTreeMap::new();
        let run_dir = cfg.state_dir.join("run");
        persist::clean_temp_files(&run_dir);
        for def in store.list() {
            let path = run_dir.join(format!("{}.json", def.name));
            let Ok(text) = fs::read(&path) else { continue };
            let Ok(rec) = serde_json::from_slice::<RunRecord>(&text) else {
                log::warn!("ignoring unreadable runtime record {}", path.display());
                continue;
            };
            runs.insert(def.name.clone(), rec);
        }
        let next_id = runs.values().map(|r| r.id).max().unwrap_or(0) + 1;
        let host = Host {
            cfg,
            inner: Mutex::new(Inner {
                store,
                runs,
                children: HashMap::new(),
                next_id,
                last_reason: HashMap::new(),
            }),
            dhcp: Default::default(),
            incoming: Default::default(),
        };
        host.poll().await;
        Ok(host)
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    fn run_dir(&self, name: &DomainName) -> PathBuf {
        self.cfg.state_dir.join("run").join(name.as_str())
    }

    fn record_path(&self, name: &DomainName) -> PathBuf {
        self.cfg.state_dir.join("run").join(format!("{name}.json"))
    }

    /// The log the host keeps of a domain's serial console when its definition names none.
    pub fn console_log(&self, name: &DomainName) -> PathBuf {
        self.run_dir(name).join("console.log")
    }

    fn serial_sink(&self, def: &DomainDef) -> SerialSink {
        match &def.serial {
            SerialDef::File(p) => SerialSink::File(p.clone()),
            SerialDef::None => SerialSink::File(self.console_log(&def.name)),
            SerialDef::Pty => SerialSink::Pty,
        }
    }

    fn save_record(&self, name: &DomainName, rec: Option<&RunRecord>) -> Result<()> {
        let path = self.record_path(name);
        match rec {
            Some(r) => {
                let json = serde_json::to_vec_pretty(r).expect("a run record serialises");
                persist::write_atomic(&path, &json).map_err(io_err("write", &path))
            }
            None => persist::remove_durable(&path).map_err(io_err("remove", &path)),
        }
    }

    /// Applies `op` to the domain's state through the one table, persisting the result.
    fn transition(
        &self,
        inner: &mut Inner,
        name: &DomainName,
        op: DomainOp,
        reason: StateReason,
    ) -> Result<DomainState> {
        let current = inner.runs.get(name).map_or(DomainState::ShutOff, |r| r.state);
        let next = current.apply(op)?;
        match next {
            DomainState::ShutOff => {
                inner.runs.remove(name);
                inner.last_reason.insert(name.clone(), reason);
                self.save_record(name, None)?;
            }
            _ => {
                let rec = inner
                    .runs
                    .get_mut(name)
                    .ok_or_else(|| HostError::Internal(format!("no runtime record for {name}")))?;
                rec.state = next;
                rec.reason = reason;
                if next == DomainState::Crashed {
                    rec.process = None;
                }
                let rec = rec.clone();
                self.save_record(name, Some(&rec))?;
            }
        }
        Ok(next)
    }

    /// Stores a definition from libvirt domain XML; returns its name and whether it is new.
    pub async fn define(&self, xml: &str) -> Result<(DomainName, bool)> {
        let def = DomainDef::from_xml(xml)?;
        let name = def.name.clone();
        let mut inner = self.inner.lock().await;
        let new = inner.store.define(def)? == crate::domain::Defined::New;
        Ok((name, new))
    }

    /// Removes a shut-off (or crashed) domain's definition.
    pub async fn undefine(&self, key: &str) -> Result<DomainName> {
        let mut inner = self.inner.lock().await;
        let name = inner.store.lookup(key)?.name.clone();
        let state = inner.runs.get(&name).map_or(DomainState::ShutOff, |r| r.state);
        state.apply(DomainOp::Undefine)?;
        inner.store.undefine(&name)?;
        inner.runs.remove(&name);
        self.save_record(&name, None)?;
        let _ = fs::remove_dir_all(self.run_dir(&name));
        // The saved state's file is the user's (`save DOM FILE`) and stays; the record that the
        // domain has one goes with the domain, so a later domain of this name starts clean.
        self.forget_saved_state(&name);
        Ok(name)
    }

    /// Starts a domain: resolves its disks and NICs, starts its VMM and waits for its API.
    pub async fn start(&self, key: &str) -> Result<DomainName> {
        let mut inner = self.inner.lock().await;
        let def = inner.store.lookup(key)?.clone();
        let state = inner.runs.get(&def.name).map_or(DomainState::ShutOff, |r| r.state);
        state.apply(DomainOp::Start)?;
        let id = inner.next_id;
        let run_dir = self.run_dir(&def.name);
        fs::create_dir_all(&run_dir).map_err(io_err("create", &run_dir))?;
        let disks = self.resolve_disks(&def)?;
        let nics = self.plug_nics(&def, id)?;
        let serial = self.serial_sink(&def);
        let paths = VmmPaths::new(&run_dir);
        let args = vmm::command_line(&def, &disks, &nics, &serial, &paths);
        let (child, proc_) = match vmm::spawn(&self.cfg.vmm_binary, &args, &paths) {
            Ok(c) => c,
            Err(e) => {
                self.unplug_nics(&nics.iter().map(|n| n.tap.clone()).collect::<Vec<_>>());
                return Err(vmm_err(e));
            }
        };
        inner.children.insert(child.id(), child);
        let api = VmmApi::new(&paths.api_socket);
        if let Err(e) = api.wait_ready(&proc_, &paths.log, START_TIMEOUT).await {
            // A VMM that never answered is killed, not left behind.
            proc_.kill(Duration::from_secs(5));
            if let Some(mut c) = inner.children.remove(&proc_.pid) {
                let _ = c.wait();
            }
            self.unplug_nics(&nics.iter().map(|n| n.tap.clone()).collect::<Vec<_>>());
            return Err(vmm_err(e));
        }
        inner.next_id += 1;
        let rec = RunRecord {
            id,
            state: DomainState::ShutOff,
            reason: StateReason::Booted,
            process: Some(proc_),
            taps: nics.into_iter().map(|n| n.tap).collect(),
        };
        inner.runs.insert(def.name.clone(), rec);
        // The record exists (as shut off) so that the table's move to running persists it.
        self.transition(&mut inner, &def.name, DomainOp::Start, StateReason::Booted)?;
        Ok(def.name)
    }

    fn plug_nics(&self, def: &DomainDef, id: u32) -> Result<Vec<ResolvedNic>> {
        let mut done: Vec<ResolvedNic> = Vec::new();
        for (i, nic) in def.interfaces.iter().enumerate() {
            let tap = format!("hv{id}n{i}");
            let r = crate::network::plug(&self.cfg.state_dir, &nic.source, &tap, nic.mac);
            if let Err(e) = r {
                self.unplug_nics(&done.iter().map(|n| n.tap.clone()).collect::<Vec<_>>());
                return Err(e);
            }
            done.push(ResolvedNic { tap, mac: nic.mac.to_string() });
        }
        Ok(done)
    }

    fn unplug_nics(&self, taps: &[String]) {
        for tap in taps {
            crate::network::unplug(tap);
        }
    }

    /// The API of an active domain's VMM (callers checked the state first).
    fn api_of(&self, inner: &Inner, name: &DomainName) -> Result<VmmApi> {
        match inner.runs.get(name) {
            Some(rec) if rec.process.is_some() => {
                Ok(VmmApi::new(&VmmPaths::new(&self.run_dir(name)).api_socket))
            }
            _ => Err(HostError::Internal(format!("domain {name} has no VMM process"))),
        }
    }

    /// Pauses a running domain.
    pub async fn suspend(&self, key: &str) -> Result<DomainName> {
        self.simple(key, DomainOp::Suspend, "vm.pause", StateReason::User).await
    }

    /// Resumes a paused domain.
    pub async fn resume(&self, key: &str) -> Result<DomainName> {
        self.simple(key, DomainOp::Resume, "vm.resume", StateReason::User).await
    }

    /// Reboots a running domain.
    pub async fn reboot(&self, key: &str) -> Result<DomainName> {
        self.simple(key, DomainOp::Reboot, "vm.reboot", StateReason::Booted).await
    }

    async fn simple(
        &self,
        key: &str,
        op: DomainOp,
        call: &str,
        reason: StateReason,
    ) -> Result<DomainName> {
        let mut inner = self.inner.lock().await;
        let name = inner.store.lookup(key)?.name.clone();
        let state = inner.runs.get(&name).map_or(DomainState::ShutOff, |r| r.state);
        state.apply(op)?;
        let api = self.api_of(&inner, &name)?;
        api.put(call).await.map_err(vmm_err)?;
        self.transition(&mut inner, &name, op, reason)?;
        Ok(name)
    }

    /// Presses the ACPI power button; with `timeout`, waits that long for the guest to power
    /// off and then forces it (virsh `shutdown` followed by `destroy`).
    pub async fn shutdown(&self, key: &str, timeout: Option<Duration>) -> Result<DomainName> {
        let name = {
            let inner = self.inner.lock().await;
            let name = inner.store.lookup(key)?.name.clone();
            let state = inner.runs.get(&name).map_or(DomainState::ShutOff, |r| r.state);
            state.apply(DomainOp::Shutdown)?;
            self.api_of(&inner, &name)?.put("vm.power-button").await.map_err(vmm_err)?;
            name
        };
        let Some(timeout) = timeout else { return Ok(name) };
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            self.poll().await;
            if !self.state_of(&name).await.is_active() {
                return Ok(name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log::warn!("domain {name} did not power off within {timeout:?}: forcing it off");
        self.destroy(name.as_str()).await
    }

    async fn state_of(&self, name: &DomainName) -> DomainState {
        self.inner.lock().await.runs.get(name).map_or(DomainState::ShutOff, |r| r.state)
    }

    /// Stops a domain at once: kills its VMM, unplugs its NICs.
    pub async fn destroy(&self, key: &str) -> Result<DomainName> {
        let mut inner = self.inner.lock().await;
        let name = inner.store.lookup(key)?.name.clone();
        let state = inner.runs.get(&name).map_or(DomainState::ShutOff, |r| r.state);
        state.apply(DomainOp::Destroy)?;
        self.stop_vmm(&mut inner, &name);
        self.transition(&mut inner, &name, DomainOp::Destroy, StateReason::Destroyed)?;
        Ok(name)
    }

    /// Kills the VMM process of `name` (if any), reaps it, and unplugs its NICs.
    fn stop_vmm(&self, inner: &mut Inner, name: &DomainName) {
        let Some(rec) = inner.runs.get(name).cloned() else { return };
        if let Some(p) = rec.process {
            if !p.kill(Duration::from_secs(5)) {
                log::warn!("VMM process {} of domain {name} did not die after SIGKILL", p.pid);
            }
            if let Some(mut c) = inner.children.remove(&p.pid) {
                let _ = c.wait();
            }
        }
        self.unplug_nics(&rec.taps);
    }

    /// `list`: every domain (active only unless `all`).
    pub async fn list(&self, all: bool) -> Vec<DomainRow> {
        let inner = self.inner.lock().await;
        let mut rows: Vec<DomainRow> = inner
            .store
            .list()
            .map(|d| {
                let rec = inner.runs.get(&d.name);
                DomainRow {
                    id: rec.filter(|r| r.state.is_active()).map(|r| r.id),
                    name: d.name.to_string(),
                    state: rec.map_or(DomainState::ShutOff, |r| r.state),
                }
            })
            .filter(|r| all || r.state.is_active())
            .collect();
        rows.sort_by_key(|r| (r.id.is_none(), r.id, r.name.clone()));
        rows
    }

    /// `dominfo`.
    pub async fn info(&self, key: &str) -> Result<DomInfo> {
        let inner = self.inner.lock().await;
        let d = inner.store.lookup(key)?;
        let rec = inner.runs.get(&d.name);
        let state = rec.map_or(DomainState::ShutOff, |r| r.state);
        Ok(DomInfo {
            id: rec.filter(|r| r.state.is_active()).map(|r| r.id),
            name: d.name.to_string(),
            uuid: d.uuid.to_string(),
            state,
            cpus: d.vcpus,
            max_memory_kib: d.memory_kib,
            used_memory_kib: d.memory_kib,
            autostart: inner.store.autostart(&d.name),
            managed_save: self.has_saved_state(&d.name),
            pid: rec.and_then(|r| r.process).map(|p| p.pid),
        })
    }

    /// `domstate`.
    pub async fn state(&self, key: &str) -> Result<(DomainState, StateReason)> {
        let inner = self.inner.lock().await;
        let d = inner.store.lookup(key)?;
        Ok(match inner.runs.get(&d.name) {
            Some(r) => (r.state, r.reason.clone()),
            None => (
                DomainState::ShutOff,
                inner.last_reason.get(&d.name).cloned().unwrap_or(StateReason::Unknown),
            ),
        })
    }

    /// `autostart [--disable]`.
    pub async fn set_autostart(&self, key: &str, on: bool) -> Result<DomainName> {
        let inner = self.inner.lock().await;
        let name = inner.store.lookup(key)?.name.clone();
        inner.store.set_autostart(&name, on)?;
        Ok(name)
    }

    /// Starts every autostart domain that is not running (at daemon start); failures are logged.
    pub async fn start_autostart(&self) {
        let names: Vec<DomainName> = {
            let inner = self.inner.lock().await;
            inner
                .store
                .list()
                .filter(|d| inner.store.autostart(&d.name))
                .filter(|d| !inner.runs.get(&d.name).is_some_and(|r| r.state.is_active()))
                .map(|d| d.name.clone())
                .collect()
        };
        for n in names {
            match self.start(n.as_str()).await {
                Ok(_) => log::info!("autostarted domain {n}"),
                Err(e) => log::warn!("cannot autostart domain {n}: {e}"),
            }
        }
    }

    /// `domblklist`: (target, source) per disk.
    pub async fn blklist(&self, key: &str) -> Result<Vec<(String, String)>> {
        let inner = self.inner.lock().await;
        let d = inner.store.lookup(key)?;
        Ok(d.disks
            .iter()
            .map(|disk| {
                let src = match &disk.source {
                    DiskSource::File { path, .. } => path.display().to_string(),
                    DiskSource::Volume { pool, volume, .. } => format!("{pool}/{volume}"),
                };
                (disk.target.clone(), src)
            })
            .collect())
    }

    /// `domiflist`.
    pub async fn iflist(&self, key: &str) -> Result<Vec<IfRow>> {
        let inner = self.inner.lock().await;
        let d = inner.store.lookup(key)?;
        let taps = inner.runs.get(&d.name).filter(|r| r.state.is_active()).map(|r| r.taps.clone());
        Ok(d.interfaces
            .iter()
            .enumerate()
            .map(|(i, nic)| {
                let (kind, source) = match &nic.source {
                    InterfaceSource::Network(n) => ("network", n.clone()),
                    InterfaceSource::Bridge(b) => ("bridge", b.clone()),
                };
                IfRow {
                    interface: taps
                        .as_ref()
                        .and_then(|t| t.get(i).cloned())
                        .unwrap_or_else(|| "-".into()),
                    kind: kind.into(),
                    source,
                    model: "virtio".into(),
                    mac: nic.mac.to_string(),
                }
            })
            .collect())
    }

    /// `attach-disk --config` on a shut-off domain: adds a disk to its definition.
    pub async fn attach_disk(
        &self,
        key: &str,
        source: &str,
        target: &str,
        format: Option<&str>,
        read_only: bool,
    ) -> Result<DomainName> {
        let mut inner = self.inner.lock().await;
        let mut def = inner.store.lookup(key)?.clone();
        let state = inner.runs.get(&def.name).map_or(DomainState::ShutOff, |r| r.state);
        state.apply(DomainOp::EditDefinition)?;
        let format = match format {
            None | Some("raw") => DiskFormat::Raw,
            Some("qcow2") => DiskFormat::Qcow2,
            Some(other) => {
                return Err(HostError::Unsupported(format!("disk format {other} (raw or qcow2)")))
            }
        };
        let src = if Path::new(source).is_absolute() {
            DiskSource::File { path: source.into(), format }
        } else if let Some((pool, volume)) = source.split_once('/') {
            DiskSource::Volume { pool: pool.into(), volume: volume.into(), format: None }
        } else {
            return Err(HostError::Unsupported(format!(
                "disk source {source:?}: an absolute path or POOL/VOLUME"
            )));
        };
        def.disks.push(crate::domain::DiskDef { source: src, target: target.into(), read_only });
        let name = def.name.clone();
        inner.store.define(def)?;
        Ok(name)
    }

    /// `detach-disk --config` on a shut-off domain.
    pub async fn detach_disk(&self, key: &str, target: &str) -> Result<DomainName> {
        let mut inner = self.inner.lock().await;
        let mut def = inner.store.lookup(key)?.clone();
        let state = inner.runs.get(&def.name).map_or(DomainState::ShutOff, |r| r.state);
        state.apply(DomainOp::EditDefinition)?;
        let before = def.disks.len();
        def.disks.retain(|d| d.target != target);
        if def.disks.len() == before {
            return Err(HostError::NoDisk { domain: def.name.to_string(), target: target.into() });
        }
        let name = def.name.clone();
        inner.store.define(def)?;
        Ok(name)
    }
}
