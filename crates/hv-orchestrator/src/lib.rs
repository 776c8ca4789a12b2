//! hv-orchestrator: a multi-tenant cloud as a library, doing what OpenStack's Keystone,
//! Glance, Nova, Neutron and Cinder do, for programs that embed it (the `hv-cloud` OpenStack
//! API server is one).
//!
//! # Architecture
//!
//! ```text
//!   caller (hv-cloud's HTTP handlers, a test, an embedding program)
//!     │  token ──> identity::validate ──> Context (user, project, roles)
//!     ▼
//!   Cloud  ── every call: policy::authorize(ctx, Action) against the one table in `policy`,
//!     │        then ownership (a foreign id answers exactly like a missing one)
//!     ├── identity/   domains, projects, users (argon2), roles, assignments, tokens, bootstrap
//!     ├── quota       limits and usage per project; claims are conditional updates
//!     ├── image/      Glance: streamed upload into an hv-storage directory pool, md5 + sha512,
//!     │               format checked against the bytes, qcow2 backing/data files refused
//!     ├── compute/    flavors, compute hosts, server groups, the scheduler (filters, weighers),
//!     │               instances and their lifecycle table
//!     ├── network/    networks (VXLAN ids), subnets (IPAM), ports, security groups, routers,
//!     │               floating IPs
//!     ├── volume      volumes and snapshots, attach/detach
//!     ├── events      who did what to which resource, when (per project)
//!     ├── driver/     this process's host as a compute host: hv_host::Host (domains as
//!     │               hv-vmm processes), hv-storage pools (root disks, volumes), hv-net
//!     │               (a bridge per network, DHCP, nft port security, NAT, floating IPs)
//!     ▼
//!   store/  the `Store` trait: SQLite (embedded default) or PostgreSQL (shared), one schema
//!           with versioned migrations, every multi-row change one all-or-nothing `apply`
//! ```
//!
//! - All state is in the [`store::Store`]; a [`Cloud`] holds no state the store does not
//!   have except caches it can rebuild (the scheduler's host view, DHCP servers), so reopening
//!   the store after a restart brings everything back: running instances keep running (their
//!   `hv-vmm` processes never stop) and are taken back; one whose VM died meanwhile is marked.
//! - Atomicity: quota claims (`in_use + reserved + n <= limit`), placement claims
//!   (`used + n <= capacity * ratio`) and address reservations (unique name records) are in
//!   the same transaction as the records they go with, so concurrent requests never overshoot.
//! - Isolation: a [`policy::Context`] is made only from a valid token; list calls filter
//!   by the caller's project in the query; get calls load and then check the owner, answering
//!   [`Error::NotFound`] for another project's resource, exactly as for a missing one. On the
//!   host, each network is its own bridge whose forwarding policy drops what crosses it.
//! - Types shaped for the OpenStack API: ids are UUIDs (Keystone's are 32 hex digits), states
//!   are Nova's, Glance's, Cinder's, so the API layer serialises these types into OpenStack's
//!   JSON without a translation table.
//! - Calls are synchronous (the store is); an async caller runs them on a blocking thread.
//!   Host work runs on the driver's own thread, in the network namespace the cloud was opened
//!   in.
//!
//! What is not here yet: disk hotplug (volumes attach to shut-off instances), hosts other than
//! this process's. Root disks are qcow2 overlays over one base copy of the image per host
//! (`driver::disks`).
//!
//! # Example
//!
//! ```
//! use hv_orchestrator::{Cloud, Config, store::SqliteStore};
//! use hv_orchestrator::identity::{Bootstrap, PasswordAuth};
//! # fn main() -> Result<(), hv_orchestrator::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open(dir.path().join("cloud.db"))?;
//! let cloud = Cloud::open(std::sync::Arc::new(store), Config::new(dir.path().join("images")))?;
//! cloud.bootstrap(&Bootstrap::new("admin-secret"))?;
//! let admin = cloud.authenticate(&PasswordAuth::by_name("admin", "admin-secret", "admin"))?;
//! let ctx = cloud.validate(&admin.secret)?;
//! assert!(ctx.is_admin());
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use hv_storage::pool::{DirPool, Pool, PoolDef, PoolState};

pub mod compute;
pub mod driver;
pub mod error;
pub mod events;
pub mod identity;
pub mod ids;
pub mod image;
pub mod network;
pub mod policy;
pub mod quota;
pub mod records;
pub mod store;
pub mod volume;

pub use error::{Error, Result};
pub use policy::{Action, Context, Role};

use compute::scheduler::{HostView, Weigher};
pub use driver::ComputeConfig;
use driver::Driver;
use quota::Limits;
use store::Store;

/// How a [`Cloud`] runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a token lives (Keystone's default: one hour).
    pub token_ttl_secs: i64,
    /// The directory of the image pool.
    pub image_dir: PathBuf,
    /// The limits a new project starts with.
    pub default_limits: Limits,
    /// How the scheduler ranks hosts.
    pub weigher: Weigher,
    /// This process's host as a compute host (`None`: a control plane only; instances then
    /// end in ERROR with "no valid host", and block storage is unsupported).
    pub compute: Option<ComputeConfig>,
    /// How long a verified password is remembered in memory so the same login skips argon2
    /// ([`identity::password::VerifiedPasswords`]; Apache's `mod_authn_socache` default,
    /// 300 s). Zero: every login hashes.
    pub password_cache_ttl: std::time::Duration,
}

impl Config {
    /// Defaults, with images kept in `image_dir`.
    pub fn new(image_dir: impl Into<PathBuf>) -> Config {
        Config {
            token_ttl_secs: 3600,
            image_dir: image_dir.into(),
            default_limits: Limits::default(),
            weigher: Weigher::Spread,
            compute: None,
            password_cache_ttl: std::time::Duration::from_secs(300),
        }
    }
}

/// The control plane: one per process, shared by every request thread.
#[derive(Debug)]
pub struct Cloud {
    store: Arc<dyn Store>,
    config: Config,
    images: Mutex<DirPool>,
    hosts: HostView,
    driver: Option<Driver>,
    local_host: Option<String>,
    passwords: identity::password::VerifiedPasswords,
}

impl Cloud {
    /// Opens the cloud over `store`, starting (building if needed) the image pool.
    pub fn open(store: Arc<dyn Store>, config: Config) -> Result<Cloud> {
        let def = PoolDef::dir("images", config.image_dir.clone()).build()?;
        let mut pool = DirPool::new(def, PoolState::Inactive)?;
        pool.build(Default::default())?;
        pool.start()?;
        let (driver, local_host) = match &config.compute {
            Some(c) => {
                let d = Driver::open(c.clone())?;
                let id = register_local_host(store.as_ref(), c)?;
                (Some(d), Some(id))
            }
            None => (None, None),
        };
        let hosts = HostView::load(store.as_ref())?;
        let passwords = identity::password::VerifiedPasswords::new(config.password_cache_ttl);
        let cloud =
            Cloud { store, config, images: Mutex::new(pool), hosts, driver, local_host, passwords };
        if cloud.driver.is_some() {
            // After a restart: bring every network back (DHCP runs in this process), and
            // the floating IPs' NAT.
            cloud.sync_floating_ips()?;
        }
        Ok(cloud)
    }

    /// The compute driver, when this process is a compute host.
    pub(crate) fn driver(&self) -> Option<&Driver> {
        self.driver.as_ref()
    }

    /// The id of this process's compute host in the store.
    pub fn local_host_id(&self) -> Option<&str> {
        self.local_host.as_deref()
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn image_pool(&self) -> std::sync::MutexGuard<'_, DirPool> {
        self.images.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Checks a resource name: 1..=255 bytes, no control characters (names reach logs, tables
/// and, later, host object names through the API).
pub(crate) fn check_name(field: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(Error::invalid(field, "must be 1..=255 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Registers (or updates the capacity of) this process's compute host, under a stable id
/// made from its name, keeping its usage.
fn register_local_host(store: &dyn Store, c: &ComputeConfig) -> Result<String> {
    check_name("host name", &c.host_name)?;
    if let Some(r) = c.cpu_ratio {
        if !(r.is_finite() && r > 0.0 && r <= 1000.0) {
            return Err(Error::invalid("cpu_ratio", format!("{r} is not in (0, 1000]")));
        }
    }
    let id = format!("local-{}", c.host_name);
    let existing = store.host(&id)?;
    let row = store::HostRow {
        id: id.clone(),
        name: c.host_name.clone(),
        enabled: existing.as_ref().is_none_or(|h| h.enabled),
        vcpus: c.vcpus,
        ram_mb: c.ram_mb,
        disk_gb: c.disk_gb,
        cpu_ratio: c.cpu_ratio.unwrap_or_else(|| existing.as_ref().map_or(16.0, |h| h.cpu_ratio)),
        ram_ratio: existing.as_ref().map_or(1.5, |h| h.ram_ratio),
        disk_ratio: existing.as_ref().map_or(1.0, |h| h.disk_ratio),
        used_vcpus: 0,
        used_ram_mb: 0,
        used_disk_gb: 0,
    };
    store.apply(&[store::Op::PutHost(row)])?;
    Ok(id)
}
