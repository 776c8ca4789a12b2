//! The host's networks (hv-net's [`NetworkManager`] on the host's state directory) as virsh's
//! `net-*` verbs on [`Host`], and plugging a domain's NICs in: a persistent TAP per NIC, on an
//! hv network's bridge (with port security: anti-spoofing) or on a host bridge, removed again
//! when the domain stops.
//!
//! A network's DHCP server runs, as libvirt runs one dnsmasq per network, in a process of its
//! own when the host has a DHCP command ([`Host::set_dhcp_command`]; hvd runs itself with
//! `--dhcp-serve NAME`), so it outlives a restart of the daemon; an embedder without one gets
//! the server on a thread of its own process, stopped by `net-destroy` or when the host goes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hv_net::dhcp::DhcpHandle;
use hv_net::network::{NetworkDef, NetworkManager, NetworkMode, NetworkState};
use hv_net::nft::port::{PortSecurity, PortSpec, Protocol, SecurityRule};
use hv_net::nft::Nft;
use hv_net::tap::Tap;
use hv_net::{IfName, MacAddr};
use serde::{Deserialize, Serialize};

use crate::domain::InterfaceSource;
use crate::error::{HostError, Result};
use crate::host::Host;

/// How long `net-start` waits for the DHCP process to bind its socket.
const DHCP_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The most addresses a port's anti-spoofing set lists for a guest without a reservation.
const MAX_PORT_ADDRESSES: u64 = 4096;

/// Makes TAP `tap` (persistent, so it outlives this process until the VMM opens it) and plugs
/// it into what `source` names. On an hv network of mode nat or isolated the port gets port
/// security (see [`port_spec`]): its frames must carry `mac` and one of the guest's addresses.
pub fn plug(state_dir: &Path, source: &InterfaceSource, tap: &str, mac: MacAddr) -> Result<()> {
    let net = |e: &dyn std::fmt::Display| HostError::Network(format!("TAP {tap}: {e}"));
    let t = Tap::builder(tap).persistent(true).open().map_err(|e| net(&e))?;
    drop(t);
    let r = match source {
        InterfaceSource::Network(name) => {
            let mgr = NetworkManager::open(state_dir).map_err(|e| net(&e))?;
            let def = mgr.get(name)?;
            match port_spec(&def, tap, mac)? {
                Some(spec) => {
                    let nft = Nft::locate().map_err(|e| net(&e))?;
                    PortSecurity::new(nft).apply(&spec).map_err(|e| net(&e))?;
                }
                None => log::info!("TAP {tap}: network {name} is bridged: no port security"),
            }
            mgr.attach_port(name, tap).map_err(|e| net(&e))
        }
        InterfaceSource::Bridge(bridge) => {
            let mut nl = hv_net::netlink::Netlink::new().map_err(|e| net(&e))?;
            nl.set_master(tap, bridge).and_then(|()| nl.set_up(tap)).map_err(|e| net(&e))
        }
    };
    if r.is_err() {
        unplug(tap);
    }
    r
}

/// Removes TAP `tap` (and so its bridge port) and its port security; what is already gone is
/// fine.
pub fn unplug(tap: &str) {
    if let Ok(mut nl) = hv_net::netlink::Netlink::new() {
        if let Err(e) = nl.delete_link(tap) {
            log::debug!("removing TAP {tap}: {e}");
        }
    }
    // One nft transaction that removes the port's tables whether or not they exist (asking
    // first would list every table of the host, which takes seconds with thousands of rules).
    if let (Ok(port), Ok(nft)) = (IfName::new(tap), Nft::locate()) {
        if let Err(e) = PortSecurity::new(nft).remove(&port) {
            log::warn!("removing port security of {tap}: {e}");
        }
    }
}

/// The port security of a domain's TAP on network `def`: its MAC, and as its addresses the
/// network's DHCP reservation for that MAC when there is one, else the network's DHCP range,
/// else every host address of its subnet but the gateway's (libvirt's `clean-traffic` filter
/// learns the address instead; a reservation pins it). Security groups are the cloud's: the
/// port lets any protocol through both ways. `None` for a bridged network, whose addresses hv
/// does not know.
pub fn port_spec(def: &NetworkDef, tap: &str, mac: MacAddr) -> Result<Option<PortSpec>> {
    let bad =
        |why: String| HostError::Network(format!("port {tap} on network {}: {why}", def.name));
    let Some(subnet) = def.ip.filter(|_| def.mode != NetworkMode::Bridge) else {
        return Ok(None);
    };
    let port = IfName::new(tap).map_err(|e| bad(e.to_string()))?;
    let range = |first: u32, last: u32| -> Result<Vec<Ipv4Addr>> {
        if u64::from(last.saturating_sub(first)) >= MAX_PORT_ADDRESSES {
            return Err(bad(format!(
                "more than {MAX_PORT_ADDRESSES} possible guest addresses: give the MAC a \
                 --dhcp-host reservation"
            )));
        }
        Ok((first..=last).map(Ipv4Addr::from).filter(|a| *a != subnet.addr).collect())
    };
    let ips = if let Some(h) = def.dhcp_hosts.iter().find(|h| h.mac == mac) {
        vec![h.ip]
    } else if let Some(r) = def.dhcp_range {
        range(u32::from(r.first), u32::from(r.last))?
    } else {
        let net = u32::from(subnet.network().addr);
        range(net + 1, u32::from(subnet.broadcast()).saturating_sub(1))?
    };
    Ok(Some(PortSpec {
        port,
        mac,
        ips,
        rules: vec![SecurityRule::ingress(Protocol::Any), SecurityRule::egress(Protocol::Any)],
        bridge: Some(def.bridge.clone()),
    }))
}

/// How the host runs networks' DHCP servers.
#[derive(Debug, Default)]
pub(crate) struct DhcpServers {
    /// The program and leading arguments of a DHCP process (the network's name is appended).
    command: Option<(PathBuf, Vec<OsString>)>,
    /// Servers on threads of this process, by network, when there is no command.
    threads: HashMap<String, DhcpHandle>,
}

/// One network as `net-list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRow {
    /// The name.
    pub name: String,
    /// Whether it is active.
    pub active: bool,
}

/// `net-info`'s fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInfo {
    /// The definition.
    pub def: NetworkDef,
    /// Whether it is active.
    pub active: bool,
    /// The nftables table (family `inet`) the running network installed.
    pub nft_table: Option<String>,
    /// The DHCP server process, when one runs.
    pub dhcp_pid: Option<u32>,
}

/// One active DHCP lease as `net-dhcp-leases` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRow {
    /// When the lease ends, seconds since the Unix epoch.
    pub expires: u64,
    /// The client's MAC address.
    pub mac: String,
    /// The leased address.
    pub ip: String,
    /// The network's prefix length.
    pub prefix: u8,
    /// The client's host name, if known.
    pub hostname: Option<String>,
}

impl Host {
    /// Makes `net-start` run each network's DHCP server as `PROGRAM ARGS... NAME`, a process
    /// in a group of its own that runs [`NetworkManager::run_dhcp_daemon`] (hvd passes itself
    /// with `--state-dir DIR --dhcp-serve`). Without it, DHCP runs on a thread of this process.
    pub fn set_dhcp_command(&self, program: PathBuf, args: Vec<OsString>) {
        self.dhcp_servers().command = Some((program, args));
    }

    fn dhcp_servers(&self) -> std::sync::MutexGuard<'_, DhcpServers> {
        self.dhcp.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the host's networks on tokio's blocking pool.
    async fn with_networks<T: Send + 'static>(
        &self,
        f: impl FnOnce(&NetworkManager) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let dir = self.config().state_dir.clone();
        tokio::task::spawn_blocking(move || f(&NetworkManager::open(&dir)?))
            .await
            .map_err(|e| HostError::Internal(format!("network task: {e}")))?
    }

    /// `net-define`: stores a (validated) definition.
    pub async fn net_define(&self, def: NetworkDef) -> Result<String> {
        let name = def.name.clone();
        self.with_networks(move |m| Ok(m.define(def)?)).await?;
        Ok(name)
    }

    /// `net-start`: the network's bridge, address and firewall, then its DHCP server.
    pub async fn net_start(&self, name: &str) -> Result<()> {
        let n = name.to_string();
        let info = self.with_networks(move |m| Ok(m.start(&n)?)).await?;
        let def = info.def;
        if def.mode == NetworkMode::Bridge || def.dhcp_range.is_none() {
            return Ok(());
        }
        let command = self.dhcp_servers().command.clone();
        let r = match command {
            Some((program, args)) => {
                let n = name.to_string();
                self.with_networks(move |m| start_dhcp_process(m, &n, &program, &args)).await
            }
            None => {
                let n = name.to_string();
                match self.with_networks(move |m| Ok(m.serve_dhcp(&n)?)).await {
                    Ok(h) => {
                        self.dhcp_servers().threads.insert(name.to_string(), h);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = r {
            let n = name.to_string();
            let _ = self.with_networks(move |m| Ok(m.destroy(&n)?)).await;
            return Err(e);
        }
        Ok(())
    }

    /// `net-destroy`: stops DHCP and removes what `net-start` made.
    pub async fn net_destroy(&self, name: &str) -> Result<()> {
        // A server thread of this process stops when its handle drops.
        let thread = self.dhcp_servers().threads.remove(name);
        drop(thread);
        let n = name.to_string();
        self.with_networks(move |m| Ok(m.destroy(&n)?)).await
    }

    /// `net-undefine`: forgets an inactive network.
    pub async fn net_undefine(&self, name: &str) -> Result<()> {
        let n = name.to_string();
        self.with_networks(move |m| Ok(m.undefine(&n)?)).await
    }

    /// `net-list`: every network, by name.
    pub async fn net_list(&self) -> Result<Vec<NetRow>> {
        self.with_networks(|m| {
            Ok(m.list()?
                .into_iter()
                .map(|n| NetRow {
                    name: n.def.name.clone(),
                    active: n.state == NetworkState::Active,
                })
                .collect())
        })
        .await
    }

    /// `net-info`.
    pub async fn net_info(&self, name: &str) -> Result<NetInfo> {
        let n = name.to_string();
        self.with_networks(move |m| {
            let i = m.info(&n)?;
            Ok(NetInfo {
                active: i.state == NetworkState::Active,
                nft_table: i.created.nft_table.map(|t| t.to_string()),
                dhcp_pid: i.dhcp.map(|p| p.pid),
                def: i.def,
            })
        })
        .await
    }

    /// `net-dhcp-leases [--mac MAC]`: the active leases (of one MAC when given).
    pub async fn net_dhcp_leases(&self, name: &str, mac: Option<MacAddr>) -> Result<Vec<LeaseRow>> {
        let n = name.to_string();
        self.with_networks(move |m| {
            let prefix = m.get(&n)?.ip.map_or(32, |c| c.prefix);
            let now = SystemTime::now();
            Ok(m.dhcp_leases(&n)?
                .into_iter()
                .filter(|l| l.is_active(now) && mac.is_none_or(|m| m == l.mac))
                .map(|l| LeaseRow {
                    expires: l.expires.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    mac: l.mac.to_string(),
                    ip: l.ip.to_string(),
                    prefix,
                    hostname: l.hostname,
                })
                .collect())
        })
        .await
    }
}

/// Starts `PROGRAM ARGS... NAME` detached (own process group, stderr to the network's DHCP
/// log) and waits until it has bound its socket and recorded itself.
fn start_dhcp_process(
    mgr: &NetworkManager,
    name: &str,
    program: &Path,
    args: &[OsString],
) -> Result<()> {
    let fail = |why: String| HostError::Network(format!("network {name}: {why}"));
    let log_path = mgr.dhcp_log_file(name);
    let log =
        std::fs::File::create(&log_path).map_err(crate::error::io_err("create", &log_path))?;
    let mut child = Command::new(program)
        .args(args)
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("cannot start its DHCP server {}: {e}", program.display())))?;
    let pid = child.id();
    let deadline = Instant::now() + DHCP_READY_TIMEOUT;
    loop {
        if mgr.wait_dhcp_process(name, pid, Duration::from_millis(50))? {
            // Reap it whenever it ends (net-destroy, or this process's successor stops it).
            std::thread::spawn(move || child.wait());
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let why = log.lines().last().unwrap_or("no output").to_string();
            return Err(fail(format!("DHCP server exited ({status}): {why}")));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail("DHCP server did not come up".into()));
        }
    }
}
