//! The compute driver: this process's host as a compute host, through [`hv_host::Host`]
//! (domains run as `hv-vmm` processes), hv-storage pools (instance root disks and volumes)
//! and hv-net (a bridge per tenant network, DHCP, nftables port security).
//!
//! Everything that touches the host runs on one thread of the driver, which runs a tokio
//! runtime for [`hv_host::Host`]'s async API. That thread is made by [`Driver::open`], so it
//! lives in the network namespace of the thread that opened the cloud: bridges, TAPs, nft
//! tables and the VMM processes all land there (tests open the cloud inside a namespace they
//! make). Callers block on [`Driver::run`] from any thread, in or outside an async runtime.

pub(crate) mod disks;
mod nat;
pub(crate) mod net;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use hv_host::domain::StateReason;
use hv_host::{DomainState, Host, HostConfig};

use crate::error::{Error, Result};

pub use disks::{INSTANCE_POOL, VOLUME_POOL};

/// How this process's host serves as a compute host.
#[derive(Debug, Clone)]
pub struct ComputeConfig {
    /// Where the host keeps domains, pools (instance disks, volumes) and networks.
    pub state_dir: PathBuf,
    /// The `hv-vmm` binary each instance runs as.
    pub vmm_binary: PathBuf,
    /// The compute host's name (the hypervisor hostname).
    pub host_name: String,
    /// Physical CPUs offered (the scheduler applies the CPU allocation ratio on top).
    pub vcpus: i64,
    /// RAM offered, MiB (the RAM ratio applies on top).
    pub ram_mb: i64,
    /// Disk offered, GiB.
    pub disk_gb: i64,
    /// How long `stop` waits after the ACPI power button before forcing the VM off, when the
    /// image has no `os_shutdown_timeout` property (Nova's `shutdown_timeout`, 60 s).
    pub shutdown_timeout: Duration,
    /// The CPU allocation ratio the scheduler applies to this host (Nova's
    /// `cpu_allocation_ratio`); `None` keeps the one stored for the host, 16.0 for a new one.
    pub cpu_ratio: Option<f64>,
    /// How often the host looks at every VMM in the background, noticing VMs that stopped on
    /// their own (Nova's power-state sync, but also what lists read: a list shows states no
    /// older than this, without asking each VMM itself). `None`: only when asked
    /// ([`Cloud::sync_instances`](crate::Cloud::sync_instances), a get). Default 2 s.
    pub poll_interval: Option<Duration>,
    /// The physical volumes (block devices or files) of the volume pool, a logical pool as
    /// Cinder's LVM driver uses a volume group. Empty (the default): one sparse file,
    /// [`VOLUME_PV_FILE`] in the state directory, of `volume_pv_size` bytes, as devstack backs
    /// `stack-volumes-lvmdriver-1` with a file. Only read when the pool is first made.
    pub volume_pvs: Vec<PathBuf>,
    /// Size in bytes of the sparse physical-volume file made when `volume_pvs` is empty.
    pub volume_pv_size: u64,
}

/// The sparse file in the state directory that backs the volume pool by default.
pub const VOLUME_PV_FILE: &str = "volumes.pv";

impl ComputeConfig {
    /// This host with its CPUs and RAM as the kernel reports them, 1000 GiB of disk.
    pub fn new(state_dir: impl Into<PathBuf>, vmm_binary: impl Into<PathBuf>) -> ComputeConfig {
        let vcpus = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
        let ram_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| {
                    l.split_whitespace().nth(1).and_then(|kib| kib.parse::<i64>().ok())
                })
            })
            .map(|kib| kib / 1024)
            .unwrap_or(1024);
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        ComputeConfig {
            state_dir: state_dir.into(),
            vmm_binary: vmm_binary.into(),
            host_name,
            vcpus,
            ram_mb,
            disk_gb: 1000,
            shutdown_timeout: Duration::from_secs(60),
            cpu_ratio: None,
            poll_interval: Some(Duration::from_secs(2)),
            volume_pvs: Vec::new(),
            volume_pv_size: 64 << 30,
        }
    }
}

/// What the host says about an instance's domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VmState {
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Shut off; `crashed` with why when it died on its own.
    Off { crashed: Option<String>, by_guest: bool },
    /// The host has no such domain.
    Missing,
}

/// The host side of the cloud.
pub(crate) struct Driver {
    host: Arc<Host>,
    rt: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    cfg: ComputeConfig,
    net: net::NetState,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("state_dir", &self.cfg.state_dir).finish()
    }
}

fn host_err(e: hv_host::HostError) -> Error {
    Error::Host(e.to_string())
}

impl Driver {
    /// Starts the driver thread and opens the host (finding running domains again), its
    /// pools and its networks.
    pub(crate) fn open(cfg: ComputeConfig) -> Result<Driver> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| Error::Io {
            what: "create",
            path: cfg.state_dir.display().to_string(),
            source,
        })?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(
            |source| Error::Io { what: "start the driver runtime in", path: String::new(), source },
        )?;
        let handle = rt.handle().clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("hv-compute".into())
            .spawn(move || {
                rt.block_on(async move {
                    let _ = stop_rx.await;
                })
            })
            .map_err(|source| Error::Io {
                what: "start the driver thread in",
                path: String::new(),
                source,
            })?;
        let host_cfg =
            HostConfig { state_dir: cfg.state_dir.clone(), vmm_binary: cfg.vmm_binary.clone() };
        let host = run_on(&handle, async move { Host::open(host_cfg).await })?.map_err(host_err)?;
        let host = Arc::new(host);
        if let Some(every) = cfg.poll_interval {
            let host = host.clone();
            // Ends with the runtime when the driver stops.
            handle.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    host.poll().await;
                }
            });
        }
        let mut d = Driver {
            host,
            rt: handle,
            stop: Some(stop_tx),
            thread: Some(thread),
            net: net::NetState::default(),
            cfg,
        };
        let cfg = d.cfg.clone();
        d.run(move |_| disks::ensure_pools(&cfg))?;
        d.net = net::NetState::default();
        Ok(d)
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &ComputeConfig {
        &self.cfg
    }

    /// The host's state directory.
    pub(crate) fn state_dir(&self) -> &Path {
        &self.cfg.state_dir
    }

    /// Where a suspended instance's saved state lives (an absolute path, as hv-host's
    /// `save` wants): `<state dir>/saved/<instance id>`.
    pub(crate) fn save_dir(&self, instance_id: &str) -> Result<PathBuf> {
        let dir = self.cfg.state_dir.join("saved");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            what: "create",
            path: dir.display().to_string(),
            source,
        })?;
        let abs = std::path::absolute(&dir).map_err(|source| Error::Io {
            what: "resolve",
            path: dir.display().to_string(),
            source,
        })?;
        Ok(abs.join(instance_id))
    }

    /// Runs `f` on the driver thread (in its network namespace) and waits for its result.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Arc<Host>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let host = self.host.clone();
        run_on(&self.rt, async move { f(&host) })?
    }

    /// Runs an async call on the host on the driver thread and waits for it.
    pub(crate) fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Host>) -> Fut + Send + 'static,
        Fut: Future<Output = hv_host::Result<T>> + Send + 'static,
    {
        let host = self.host.clone();
        run_on(&self.rt, async move { f(host).await })?.map_err(host_err)
    }

    /// Has the host look at every running domain's VMM (one API call each) and record
    /// those that stopped on their own.
    pub(crate) fn poll(&self) -> Result<()> {
        let host = self.host.clone();
        run_on(&self.rt, async move { host.poll().await })
    }

    /// Has the host look at domain `name`'s VMM only (one API call).
    pub(crate) fn poll_domain(&self, name: &str) -> Result<()> {
        let (host, key) = (self.host.clone(), name.to_string());
        match run_on(&self.rt, async move { host.poll_domain(&key).await })? {
            Ok(()) | Err(hv_host::HostError::NoDomain(_)) => Ok(()),
            Err(e) => Err(host_err(e)),
        }
    }

    /// The state of domain `name` after the host looked at its VMM.
    pub(crate) fn vm_state(&self, name: &str) -> Result<VmState> {
        self.poll_domain(name)?;
        self.polled_vm_state(name)
    }

    /// The state of domain `name` as the host's last poll left it (the background one, or
    /// the caller's): a list reads these rather than asking each VMM.
    pub(crate) fn polled_vm_state(&self, name: &str) -> Result<VmState> {
        let key = name.to_string();
        let r = run_on(&self.rt, {
            let host = self.host.clone();
            async move { host.state(&key).await }
        })?;
        Ok(match r {
            Ok((DomainState::Running, _)) => VmState::Running,
            Ok((DomainState::Paused, _)) => VmState::Paused,
            Ok((DomainState::Crashed, reason)) => {
                VmState::Off { crashed: Some(reason_text(&reason)), by_guest: false }
            }
            Ok((_, reason)) => {
                VmState::Off { crashed: None, by_guest: matches!(reason, StateReason::Shutdown) }
            }
            Err(hv_host::HostError::NoDomain(_)) => VmState::Missing,
            Err(e) => return Err(host_err(e)),
        })
    }

    /// The network side (bridges, DHCP, port security).
    pub(crate) fn net(&self) -> &net::NetState {
        &self.net
    }
}

fn reason_text(r: &StateReason) -> String {
    match r {
        StateReason::Crashed(why) => why.clone(),
        other => other.to_string(),
    }
}

/// Runs `fut` on the runtime behind `rt` and waits for it on this thread (which may itself be
/// inside another runtime: it only blocks on a channel).
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| Error::Host("the compute driver thread is gone".into()))
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Running VMs are left running: a new driver on the same state directory adopts them.
        self.net.stop_dhcp_all();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
