//! [`NetworkManager`]: define, start, destroy, undefine, list and inspect the networks of a
//! state directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::def::check_name;
use super::store::{self, DirLock};
use super::{
    host, Created, DhcpProcess, NetworkAction, NetworkDef, NetworkError, NetworkMode, NetworkState,
    Result, Runtime,
};
use crate::dhcp::{self, DhcpConfig, DhcpHandle, DhcpServer, Lease};
use crate::netlink::Netlink;

/// How long destroy waits for a DHCP server process to exit after SIGTERM.
const DHCP_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// A network with its current state, as `net-list` and `net-info` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// The definition.
    pub def: NetworkDef,
    /// Defined or active.
    pub state: NetworkState,
    /// What the running network created (empty when inactive).
    pub created: Created,
    /// The DHCP server process, when one is running.
    pub dhcp: Option<DhcpProcess>,
}

/// The networks kept under `<state_dir>/networks/`.
#[derive(Debug, Clone)]
pub struct NetworkManager {
    dir: PathBuf,
}

impl NetworkManager {
    /// Opens (creating if needed) the networks directory under `state_dir`.
    pub fn open(state_dir: impl AsRef<Path>) -> Result<NetworkManager> {
        let dir = state_dir.as_ref().join("networks");
        std::fs::create_dir_all(&dir)
            .map_err(|source| NetworkError::Io { path: dir.clone(), source })?;
        Ok(NetworkManager { dir })
    }

    /// The networks directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn def_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn runtime_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.state.json"))
    }

    /// The network's lease file (written by its DHCP server).
    pub fn lease_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.leases"))
    }

    /// Where a DHCP server process of the network may write its diagnostics (removed with the
    /// network's definition).
    pub fn dhcp_log_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.dhcp.log"))
    }

    /// The definition of `name`.
    pub fn get(&self, name: &str) -> Result<NetworkDef> {
        check_name(name)?;
        store::read_json(&self.def_path(name))?
            .ok_or_else(|| NetworkError::NotFound(name.to_string()))
    }

    fn runtime(&self, name: &str) -> Result<Runtime> {
        Ok(store::read_json(&self.runtime_path(name))?.unwrap_or(Runtime {
            state: NetworkState::Defined,
            created: Created::default(),
            dhcp: None,
        }))
    }

    fn save_runtime(&self, name: &str, rt: &Runtime) -> Result<()> {
        if rt.state == NetworkState::Defined
            && rt.dhcp.is_none()
            && rt.created == Created::default()
        {
            store::remove(&self.runtime_path(name))
        } else {
            store::write_json(&self.runtime_path(name), rt)
        }
    }

    /// Saves a definition (new, or replacing one; an active network picks it up at its next
    /// start). The definition is checked again first.
    pub fn define(&self, def: NetworkDef) -> Result<()> {
        def.validate()?;
        let _lock = DirLock::take(&self.dir)?;
        if self.def_path(&def.name).exists() {
            self.runtime(&def.name)?.state.after(&def.name, NetworkAction::Define)?;
        }
        store::write_json(&self.def_path(&def.name), &def)
    }

    /// Forgets an inactive network's definition, its lease file and its DHCP log.
    pub fn undefine(&self, name: &str) -> Result<()> {
        let _lock = DirLock::take(&self.dir)?;
        self.get(name)?;
        let rt = self.runtime(name)?;
        rt.state.after(name, NetworkAction::Undefine)?;
        if rt.created != Created::default() {
            // Leftovers of a start that crashed half-way.
            host::tear_down(name, &rt.created, self.other_nat_active(name)?)?;
        }
        store::remove(&self.runtime_path(name))?;
        store::remove(&self.lease_file(name))?;
        store::remove(&self.dhcp_log_file(name))?;
        store::remove(&self.def_path(name))
    }

    /// Creates the network's host objects (bridge, address, forwarding, nftables). DHCP is
    /// started separately: in this process with [`NetworkManager::serve_dhcp`], or in a process
    /// of its own running [`NetworkManager::run_dhcp_daemon`]. On error nothing is left behind.
    pub fn start(&self, name: &str) -> Result<NetworkInfo> {
        let _lock = DirLock::take(&self.dir)?;
        let def = self.get(name)?;
        let rt = self.runtime(name)?;
        let next = rt.state.after(name, NetworkAction::Start)?.unwrap_or(NetworkState::Active);
        let keep = self.other_nat_active(name)?;
        // A start that crashed half-way left its intent record: clear what it may have made.
        if rt.created != Created::default() {
            host::tear_down(name, &rt.created, keep)?;
        }
        // Record the intent first, so a crash during bring-up leaves a record to clean up from.
        let intent =
            Runtime { state: NetworkState::Defined, created: host::plan(&def), dhcp: None };
        self.save_runtime(name, &intent)?;
        let mut created = Created::default();
        if let Err(e) = host::bring_up(&def, &mut created) {
            let _ = host::tear_down(name, &created, keep);
            self.save_runtime(name, &Runtime { created: Created::default(), ..intent })?;
            return Err(e);
        }
        let rt = Runtime { state: next, created, dhcp: None };
        self.save_runtime(name, &rt)?;
        Ok(NetworkInfo { def, state: rt.state, created: rt.created, dhcp: None })
    }

    /// Stops the network's DHCP server process and removes everything its start created.
    pub fn destroy(&self, name: &str) -> Result<()> {
        let _lock = DirLock::take(&self.dir)?;
        self.get(name)?;
        let rt = self.runtime(name)?;
        let next = rt.state.after(name, NetworkAction::Destroy)?.unwrap_or(NetworkState::Defined);
        if let Some(p) = rt.dhcp {
            p.stop(name, DHCP_STOP_TIMEOUT)?;
        }
        let keep = self.other_nat_active(name)?;
        let result = host::tear_down(name, &rt.created, keep);
        // Even a partial teardown leaves the network inactive: what failed is named in the
        // error, and a retry of start adopts or recreates the objects.
        self.save_runtime(name, &Runtime { state: next, created: Created::default(), dhcp: None })?;
        result
    }

    fn other_nat_active(&self, name: &str) -> Result<bool> {
        for n in self.names()? {
            if n != name
                && self.runtime(&n)?.created.enabled_forwarding
                && self.runtime(&n)?.state == NetworkState::Active
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn names(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|source| NetworkError::Io { path: self.dir.clone(), source })?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let stem = n.strip_suffix(".json")?;
                (!stem.ends_with(".state") && !stem.starts_with('.')).then(|| stem.to_string())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// The network's definition and state.
    pub fn info(&self, name: &str) -> Result<NetworkInfo> {
        let def = self.get(name)?;
        let rt = self.runtime(name)?;
        let dhcp = rt.dhcp.filter(|p| p.is_running());
        Ok(NetworkInfo { def, state: rt.state, created: rt.created, dhcp })
    }

    /// Every defined network, by name.
    pub fn list(&self) -> Result<Vec<NetworkInfo>> {
        self.names()?.iter().map(|n| self.info(n)).collect()
    }

    /// Plugs the interface `port` (a guest's TAP, say) into the active network's bridge and
    /// brings it up.
    pub fn attach_port(&self, name: &str, port: &str) -> Result<()> {
        let info = self.info(name)?;
        if info.state != NetworkState::Active {
            return Err(NetworkError::InvalidState {
                name: name.to_string(),
                state: info.state,
                why: "ports join only an active network",
            });
        }
        let nl_err = |source| NetworkError::Netlink { name: name.to_string(), source };
        let mut nl = Netlink::new().map_err(nl_err)?;
        nl.set_master(port, &info.def.bridge).map_err(nl_err)?;
        nl.set_up(port).map_err(nl_err)
    }

    /// Unplugs `port` from the network's bridge; a port that is gone or elsewhere is left be.
    pub fn detach_port(&self, name: &str, port: &str) -> Result<()> {
        let def = self.get(name)?;
        let nl_err = |source| NetworkError::Netlink { name: name.to_string(), source };
        let mut nl = Netlink::new().map_err(nl_err)?;
        let (Some(link), Some(bridge)) =
            (nl.link(port).map_err(nl_err)?, nl.link(&def.bridge).map_err(nl_err)?)
        else {
            return Ok(());
        };
        if link.master == Some(bridge.index) {
            nl.set_nomaster(port).map_err(nl_err)?;
        }
        Ok(())
    }

    /// The DHCP configuration of `name` (with its lease file in the state directory).
    pub fn dhcp_config(&self, name: &str) -> Result<DhcpConfig> {
        self.get(name)?
            .dhcp_config(&self.lease_file(name))
            .ok_or_else(|| NetworkError::NoDhcp(name.to_string()))
    }

    /// Starts the DHCP server of an active network on a thread of this process (the embedding
    /// alternative to a DHCP process); dropping or stopping the handle stops it.
    pub fn serve_dhcp(&self, name: &str) -> Result<DhcpHandle> {
        let rt = self.runtime(name)?;
        if rt.state != NetworkState::Active {
            return Err(NetworkError::InvalidState {
                name: name.to_string(),
                state: rt.state,
                why: "DHCP serves only an active network",
            });
        }
        DhcpServer::spawn(self.dhcp_config(name)?)
            .map_err(|source| NetworkError::Dhcp { name: name.to_string(), source })
    }

    /// Records (or clears) the process serving the network's DHCP, so destroy stops it. Only an
    /// active network can have one.
    pub fn record_dhcp_process(&self, name: &str, process: Option<DhcpProcess>) -> Result<()> {
        let _lock = DirLock::take(&self.dir)?;
        let mut rt = self.runtime(name)?;
        if process.is_some() && rt.state != NetworkState::Active {
            return Err(NetworkError::InvalidState {
                name: name.to_string(),
                state: rt.state,
                why: "only an active network has a DHCP server",
            });
        }
        if process.is_none() && rt.state != NetworkState::Active {
            return Ok(());
        }
        rt.dhcp = process;
        self.save_runtime(name, &rt)
    }

    /// The running DHCP process recorded for the network, if any.
    pub fn dhcp_process(&self, name: &str) -> Result<Option<DhcpProcess>> {
        Ok(self.runtime(name)?.dhcp.filter(|p| p.is_running()))
    }

    /// The leases in the network's lease file (active and expired; see [`Lease::is_active`]).
    pub fn dhcp_leases(&self, name: &str) -> Result<Vec<Lease>> {
        let def = self.get(name)?;
        if def.mode == NetworkMode::Bridge || def.dhcp_range.is_none() {
            return Err(NetworkError::NoDhcp(name.to_string()));
        }
        dhcp::read_leases(&self.lease_file(name))
            .map_err(|source| NetworkError::Dhcp { name: name.to_string(), source })
    }
}
