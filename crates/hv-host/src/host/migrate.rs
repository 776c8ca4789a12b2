//! Live migration between hosts: the source hvd asks the destination hvd to prepare (check
//! shared storage, define the domain, make its TAPs, start a bare `hv-vmm` listening with
//! `vm.receive-migration`), sends with its VMM's `vm.send-migration` (hv-vmm's pre-copy
//! protocol, Cloud Hypervisor's endpoints and URLs: `unix:/PATH`, `tcp:HOST:PORT`), then asks
//! the destination to finish (record the domain running, or clean up after a failure).
//!
//! Disks are not copied: the destination must see every disk at the same path with the same
//! size (shared storage), and refuses the migration otherwise. TAPs keep their names (the
//! migrated VM configuration names them), so they must be free on the destination.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{vmm_err, Host, RunRecord, START_TIMEOUT};
use crate::domain::{DomainDef, DomainName, DomainOp, DomainState, StateReason};
use crate::error::{io_err, HostError, Result};
use crate::http::{self, Endpoint, Method};
use crate::process::ProcessRecord;
use crate::protocol::{Call, ErrorReply, Reply};
use crate::vmm::{self, VmmApi, VmmPaths};

/// How long a migration may take (sending, and the destination's wait for it).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long the destination's VMM gets to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// One disk as the source sees it: the destination must see the same file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedDisk {
    /// The guest's name for it.
    pub target: String,
    /// The host path.
    pub path: PathBuf,
    /// Its size in bytes on the source.
    pub size: u64,
}

/// libvirt's migration flags hv honours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateFlags {
    /// `--live`: the guest runs while its memory is copied (otherwise it is paused first).
    pub live: bool,
    /// `--undefinesource`: forget the definition on the source afterwards.
    pub undefine_source: bool,
}

/// A migration the destination prepared and waits for.
pub(crate) struct Incoming {
    id: u32,
    process: ProcessRecord,
    taps: Vec<String>,
    receive: tokio::task::JoinHandle<std::result::Result<(), vmm::VmmError>>,
}

/// Incoming migrations by domain.
pub(crate) type IncomingMap = std::sync::Mutex<HashMap<DomainName, Incoming>>;

/// One call to another host's daemon.
async fn peer_call(dest: &Endpoint, key: Option<&str>, call: &Call) -> Result<Reply> {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let body = serde_json::to_vec(call).expect("a call serialises");
    let r = http::call(dest, Method::POST, "/v1/call", &headers, Some(body), MIGRATION_TIMEOUT)
        .await
        .map_err(|e| HostError::Migration(format!("destination {dest}: {e}")))?;
    if r.status.is_success() {
        serde_json::from_slice(&r.body)
            .map_err(|e| HostError::Migration(format!("destination {dest}: bad answer: {e}")))
    } else {
        let why = serde_json::from_slice::<ErrorReply>(&r.body)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).into_owned());
        Err(HostError::Migration(format!("destination {dest}: {why}")))
    }
}

/// True when something listens on TCP `port` in this process's network namespace.
fn tcp_listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3
                    && cols[3] == "0A"
                    && cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok())
                        == Some(port)
            })
        })
    })
}

impl Host {
    /// `migrate [--live] DOM DESTURI`: moves a running (or paused) domain to the host daemon
    /// at `dest` (`key`: its shared key, for TCP). On success the domain runs there and is
    /// shut off here (undefined with `flags.undefine_source`); on failure it runs here as
    /// before and the destination keeps nothing.
    pub async fn migrate(
        &self,
        key: &str,
        dest: &Endpoint,
        dest_key: Option<&str>,
        flags: MigrateFlags,
    ) -> Result<DomainName> {
        if *dest == Endpoint::Unix(crate::daemon::socket_path(&self.cfg.state_dir)) {
            return Err(HostError::Migration("the destination is this host".into()));
        }
        let mut inner = self.inner.lock().await;
        let def = inner.store.lookup(key)?.clone();
        let name = def.name.clone();
        let rec = inner.runs.get(&name).cloned();
        let state = rec.as_ref().map_or(DomainState::ShutOff, |r| r.state);
        state.apply(DomainOp::MigrateOut)?;
        let rec =
            rec.ok_or_else(|| HostError::Internal(format!("no runtime record for {name}")))?;
        let disks = self
            .resolve_disks(&def)?
            .into_iter()
            .zip(&def.disks)
            .flat_map(|(r, d)| {
                // A logical volume is on shared storage when its physical volumes are.
                let files: Vec<PathBuf> = if r.segments.is_empty() {
                    vec![r.path]
                } else {
                    let mut pvs: Vec<PathBuf> = r.segments.into_iter().map(|s| s.path).collect();
                    pvs.sort();
                    pvs.dedup();
                    pvs
                };
                files.into_iter().map(move |path| {
                    let size = std::fs::metadata(&path).map_err(io_err("stat", &path))?.len();
                    Ok(SharedDisk { target: d.target.clone(), path, size })
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tcp = matches!(dest, Endpoint::Tcp(_));
        let prepare =
            Call::MigratePrepare { xml: def.to_xml(), taps: rec.taps.clone(), disks, tcp };
        let Reply::MigrateReady { receiver } = peer_call(dest, dest_key, &prepare).await? else {
            return Err(HostError::Migration("unexpected answer to prepare".into()));
        };
        let url = match dest {
            Endpoint::Unix(_) => format!("unix:{receiver}"),
            Endpoint::Tcp(addr) => {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                format!("tcp:{host}:{receiver}")
            }
        };
        let api = self.api_of(&inner, &name)?;
        let paused_here = !flags.live && state == DomainState::Running;
        let mut sent = Ok(());
        if paused_here {
            sent = api.put("vm.pause").await.map_err(vmm_err);
        }
        if sent.is_ok() {
            let body = serde_json::json!({ "destination_url": url });
            sent = api
                .request_within(Method::PUT, "vm.send-migration", Some(body), MIGRATION_TIMEOUT)
                .await
                .map(drop)
                .map_err(vmm_err);
        }
        let finish = Call::MigrateFinish { domain: name.to_string(), sent: sent.is_ok() };
        let finished = peer_call(dest, dest_key, &finish).await;
        if let Err(e) = sent {
            if paused_here {
                let _ = api.put("vm.resume").await;
            }
            return Err(HostError::Migration(format!("sending {name}: {e}")));
        }
        finished?;
        self.stop_vmm(&mut inner, &name);
        self.transition(&mut inner, &name, DomainOp::MigrateOut, StateReason::Migrated)?;
        if flags.undefine_source {
            inner.store.undefine(&name)?;
            let _ = std::fs::remove_dir_all(self.run_dir(&name));
        }
        Ok(name)
    }

    /// The destination's first step: checks that every disk is here (shared storage), defines
    /// the domain, makes its TAPs, starts a bare VMM and has it listen for the migration.
    /// Answers where it listens: a Unix socket path, or (`tcp`) a TCP port on every address.
    pub async fn migrate_prepare(
        &self,
        xml: &str,
        taps: &[String],
        disks: &[SharedDisk],
        tcp: bool,
    ) -> Result<String> {
        let def = DomainDef::from_xml(xml)?;
        for d in disks {
            match std::fs::metadata(&d.path) {
                Ok(m) if m.len() == d.size => {}
                _ => {
                    return Err(HostError::Migration(format!(
                        "migration needs shared storage: disk {} ({}, {} bytes) is not on this \
                         host",
                        d.target,
                        d.path.display(),
                        d.size
                    )))
                }
            }
        }
        if taps.len() != def.interfaces.len() {
            return Err(HostError::Migration("one TAP per interface expected".into()));
        }
        let mut inner = self.inner.lock().await;
        let name = def.name.clone();
        let state = inner.runs.get(&name).map_or(DomainState::ShutOff, |r| r.state);
        state.apply(DomainOp::MigrateIn)?;
        if self.incoming.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&name) {
            return Err(HostError::Migration(format!("{name} is already arriving")));
        }
        inner.store.define(def.clone())?;
        let id = inner.next_id;
        inner.next_id += 1;
        let run_dir = self.run_dir(&name);
        std::fs::create_dir_all(&run_dir).map_err(io_err("create", &run_dir))?;
        let mut plugged = Vec::new();
        for (nic, tap) in def.interfaces.iter().zip(taps) {
            if let Err(e) = crate::network::plug(&self.cfg.state_dir, &nic.source, tap, nic.mac) {
                self.unplug_nics(&plugged);
                return Err(e);
            }
            plugged.push(tap.clone());
        }
        let paths = VmmPaths::new(&run_dir);
        let args = vec![
            "--api-socket".to_string(),
            format!("path={}", paths.api_socket.display()),
            "--log-file".into(),
            paths.log.display().to_string(),
            "-v".into(),
        ];
        let fail = |inner: &mut super::Inner, p: Option<&ProcessRecord>, plugged: &[String]| {
            if let Some(p) = p {
                p.kill(Duration::from_secs(5));
                if let Some(mut c) = inner.children.remove(&p.pid) {
                    let _ = c.wait();
                }
            }
            self.unplug_nics(plugged);
        };
        let (child, proc_) = match vmm::spawn(&self.cfg.vmm_binary, &args, &paths) {
            Ok(c) => c,
            Err(e) => {
                fail(&mut inner, None, &plugged);
                return Err(vmm_err(e));
            }
        };
        inner.children.insert(child.id(), child);
        let api = VmmApi::new(&paths.api_socket);
        if let Err(e) = api.wait_ready(&proc_, &paths.log, START_TIMEOUT).await {
            fail(&mut inner, Some(&proc_), &plugged);
            return Err(vmm_err(e));
        }
        let (url, receiver) = if tcp {
            let port = std::net::TcpListener::bind("0.0.0.0:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| HostError::Migration(format!("no free TCP port: {e}")))?
                .port();
            (format!("tcp:0.0.0.0:{port}"), port.to_string())
        } else {
            let sock = run_dir.join("migrate.sock");
            let _ = std::fs::remove_file(&sock);
            (format!("unix:{}", sock.display()), sock.display().to_string())
        };
        let receive = {
            let api = api.clone();
            let body = serde_json::json!({ "receiver_url": url });
            tokio::spawn(async move {
                api.request_within(
                    Method::PUT,
                    "vm.receive-migration",
                    Some(body),
                    MIGRATION_TIMEOUT,
                )
                .await
                .map(drop)
            })
        };
        let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
        loop {
            let listening = if tcp {
                receiver.parse().is_ok_and(tcp_listening)
            } else {
                std::path::Path::new(&receiver).exists()
            };
            if listening {
                break;
            }
            if receive.is_finished() || tokio::time::Instant::now() >= deadline {
                receive.abort();
                fail(&mut inner, Some(&proc_), &plugged);
                return Err(HostError::Migration(format!(
                    "the VMM did not listen on {url}: {}",
                    vmm::log_tail(&paths.log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let incoming = Incoming { id, process: proc_, taps: plugged, receive };
        self.incoming.lock().unwrap_or_else(|p| p.into_inner()).insert(name, incoming);
        Ok(receiver)
    }

    /// The destination's last step: once the source has sent (`sent`), waits for the VMM to
    /// have received the domain and records it running (or paused, as it arrived); otherwise,
    /// or when receiving failed, removes what the prepare made (the definition stays).
    pub async fn migrate_finish(&self, key: &str, sent: bool) -> Result<DomainName> {
        let name: DomainName = key.parse().map_err(|_| HostError::NoDomain(key.into()))?;
        let incoming = self.incoming.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        let Some(inc) = incoming else {
            return Err(HostError::Migration(format!("no migration of {name} is arriving")));
        };
        let mut inner = self.inner.lock().await;
        let received = if sent {
            match inc.receive.await {
                Ok(r) => r.map_err(vmm_err),
                Err(e) => Err(HostError::Internal(format!("receive task: {e}"))),
            }
        } else {
            inc.receive.abort();
            Err(HostError::Migration("the source did not send".into()))
        };
        let api = VmmApi::new(&VmmPaths::new(&self.run_dir(&name)).api_socket);
        let info = match received {
            Ok(()) => api.info().await.map_err(vmm_err),
            Err(e) => Err(e),
        };
        let info = match info {
            Ok(i) => i,
            Err(e) => {
                inc.process.kill(Duration::from_secs(5));
                if let Some(mut c) = inner.children.remove(&inc.process.pid) {
                    let _ = c.wait();
                }
                self.unplug_nics(&inc.taps);
                return Err(e);
            }
        };
        let rec = RunRecord {
            id: inc.id,
            state: DomainState::ShutOff,
            reason: StateReason::Migrated,
            process: Some(inc.process),
            taps: inc.taps,
        };
        inner.runs.insert(name.clone(), rec);
        self.transition(&mut inner, &name, DomainOp::MigrateIn, StateReason::Migrated)?;
        if info.state == "Paused" {
            self.transition(&mut inner, &name, DomainOp::Suspend, StateReason::Migrated)?;
        }
        Ok(name)
    }
}
