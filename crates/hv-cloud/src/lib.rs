//! hv-cloud: the OpenStack API over [`hv_orchestrator`], so OpenStack's own tools (the
//! `openstack` command line, openstacksdk, Terraform's provider) work against hv unchanged.
//!
//! One listener serves devstack's path layout:
//!
//! | prefix | service | version |
//! |---|---|---|
//! | `/identity` | Keystone | v3 |
//! | `/compute/v2.1` | Nova | 2.1 (microversion 2.1) |
//! | `/image` | Glance | v2 |
//! | `/network` | Neutron | v2.0 |
//! | `/volume/v3/{project_id}` | Cinder | v3 (microversion 3.0) |
//!
//! Servers ([`server`]) and volumes ([`cinder`]) need this process's host as a compute host
//! ([`Options::compute`]); without one, builds end in ERROR and volumes answer 501.
//!
//! Handlers are thin: parse the request into a type at the edge ([`http::read_json`]: bounded,
//! errors naming the field), call the orchestrator on the blocking pool, and shape OpenStack's
//! JSON; the orchestrator decides policy, ownership and quotas. A resource another project
//! owns answers 404 exactly like a missing one. Version documents and the catalog are built
//! from the public URL, because clients use their hrefs as base URLs.
//!
//! ```no_run
//! # async fn f() -> Result<(), hv_cloud::ServeError> {
//! let opts = hv_cloud::Options::new("/var/lib/hv-cloud", "127.0.0.1:8080", "secret");
//! let cloud = hv_cloud::open(&opts)?;
//! let listener = tokio::net::TcpListener::bind(&opts.listen).await
//!     .map_err(|e| hv_cloud::ServeError::Listen(opts.listen.clone(), e))?;
//! let api = hv_cloud::Api::new(cloud, "http://127.0.0.1:8080");
//! hv_cloud::serve(listener, None, hv_cloud::router(api), std::future::pending()).await
//! # }
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hv_orchestrator::identity::Bootstrap;
use hv_orchestrator::store::{PostgresStore, SqliteStore, Store};
use hv_orchestrator::{Cloud, ComputeConfig, Config};
use thiserror::Error;

pub mod auth;
pub mod cinder;
pub mod compute;
pub mod error;
pub mod http;
pub mod identity;
pub mod image;
pub mod network;
pub mod quota;
pub mod server;
pub mod tls;
pub mod versions;
pub mod volume;

use error::{ApiError, Service};

/// What the API handlers share.
#[derive(Debug)]
pub struct Api {
    /// The control plane.
    pub cloud: Arc<Cloud>,
    /// The public base URL, without a trailing slash (`http://HOST:PORT`).
    pub public: String,
    /// The catalog's region.
    pub region: String,
}

impl Api {
    /// The API over `cloud`, advertising `public_url` in its catalog and version documents.
    pub fn new(cloud: Arc<Cloud>, public_url: &str) -> Arc<Api> {
        Arc::new(Api {
            cloud,
            public: public_url.trim_end_matches('/').to_string(),
            region: "RegionOne".into(),
        })
    }
}

/// Every route of every service.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .merge(identity::routes())
        .merge(compute::routes())
        .merge(server::routes())
        .merge(cinder::routes())
        .merge(image::routes())
        .merge(network::routes())
        .merge(volume::routes())
        .fallback(not_found)
        .with_state(api)
}

/// Unknown paths: 404 in the shape of the service the prefix names.
async fn not_found(uri: Uri) -> Response {
    let p = uri.path();
    let service = if p.starts_with("/compute") {
        Service::Compute
    } else if p.starts_with("/image") {
        Service::Image
    } else if p.starts_with("/network") {
        Service::Network
    } else if p.starts_with("/volume") {
        Service::Volume
    } else {
        Service::Identity
    };
    ApiError::new(service, StatusCode::NOT_FOUND, "the resource could not be found").into_response()
}

/// Why the server could not start or stopped.
#[derive(Debug, Error)]
pub enum ServeError {
    /// `HV_ADMIN_PASSWORD` is missing or empty on a first start.
    #[error("HV_ADMIN_PASSWORD is not set: the first start bootstraps the admin user with it")]
    NoAdminPassword,
    /// The state directory cannot be made.
    #[error("state directory '{0}': {1}")]
    StateDir(PathBuf, std::io::Error),
    /// The orchestrator (store, image pool, bootstrap) failed.
    #[error(transparent)]
    Cloud(#[from] hv_orchestrator::Error),
    /// The store cannot be opened.
    #[error("database: {0}")]
    Store(#[from] hv_orchestrator::store::StoreError),
    /// The `--database` URL is not one hv takes.
    #[error("--database '{0}': want postgresql://... or sqlite:PATH")]
    Database(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on '{0}': {1}")]
    Listen(String, std::io::Error),
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server failed.
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// How `hv-cloud serve` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// State: `cloud.db` (SQLite, unless `database` names PostgreSQL), `images/` and, for a
    /// compute host, `host/` (domains, instance disks, volumes, networks).
    pub state_dir: PathBuf,
    /// `HOST:PORT` to listen on (port 0 picks a free one).
    pub listen: String,
    /// `postgresql://...` (or `sqlite:PATH`); SQLite in the state directory by default.
    pub database: Option<String>,
    /// The base URL clients reach (default: from the bound address and the scheme).
    pub public_url: Option<String>,
    /// PEM certificate chain and key for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The bootstrap admin password (`HV_ADMIN_PASSWORD`).
    pub admin_password: String,
    /// This host as a compute host (`None`: the control plane only; servers then end in
    /// ERROR with "no valid host").
    pub compute: Option<ComputeOptions>,
}

/// How `serve` makes this host a compute host.
#[derive(Debug, Clone)]
pub struct ComputeOptions {
    /// The `hv-vmm` binary each server runs as.
    pub vmm_binary: PathBuf,
    /// The CPU allocation ratio (Nova's `cpu_allocation_ratio`); `None` keeps the stored one
    /// (16.0 at first).
    pub cpu_allocation_ratio: Option<f64>,
    /// The volume pool's physical volumes (block devices or files; see
    /// [`ComputeConfig::volume_pvs`]); empty: a sparse file in the host's state directory.
    pub volume_pvs: Vec<PathBuf>,
    /// The size of that sparse file in bytes (`None`: [`ComputeConfig`]'s default, 64 GiB).
    pub volume_pv_size: Option<u64>,
}

impl ComputeOptions {
    /// Servers run as `vmm_binary`; everything else as by default.
    pub fn new(vmm_binary: PathBuf) -> ComputeOptions {
        ComputeOptions {
            vmm_binary,
            cpu_allocation_ratio: None,
            volume_pvs: Vec::new(),
            volume_pv_size: None,
        }
    }

    /// The `hv-vmm` next to this executable.
    pub fn beside_exe() -> ComputeOptions {
        let vmm_binary = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("hv-vmm")))
            .unwrap_or_else(|| PathBuf::from("hv-vmm"));
        ComputeOptions::new(vmm_binary)
    }
}

impl Options {
    /// Plain HTTP on `listen` with state in `state_dir`.
    pub fn new(state_dir: &str, listen: &str, admin_password: &str) -> Options {
        Options {
            state_dir: state_dir.into(),
            listen: listen.into(),
            database: None,
            public_url: None,
            tls: None,
            admin_password: admin_password.into(),
            compute: None,
        }
    }
}

/// Opens the store and the cloud in the state directory and bootstraps it (a no-op for
/// what exists, as `keystone-manage bootstrap`).
pub fn open(opts: &Options) -> Result<Arc<Cloud>, ServeError> {
    if opts.admin_password.is_empty() {
        return Err(ServeError::NoAdminPassword);
    }
    std::fs::create_dir_all(&opts.state_dir)
        .map_err(|e| ServeError::StateDir(opts.state_dir.clone(), e))?;
    let store: Arc<dyn Store> = match opts.database.as_deref() {
        None => Arc::new(SqliteStore::open(opts.state_dir.join("cloud.db"))?),
        Some(u) if u.starts_with("postgresql://") || u.starts_with("postgres://") => {
            Arc::new(PostgresStore::connect(u)?)
        }
        Some(u) => match u.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => Arc::new(SqliteStore::open(path)?),
            _ => return Err(ServeError::Database(u.to_string())),
        },
    };
    let mut config = Config::new(opts.state_dir.join("images"));
    if let Some(c) = &opts.compute {
        let mut host = ComputeConfig::new(opts.state_dir.join("host"), &c.vmm_binary);
        host.cpu_ratio = c.cpu_allocation_ratio;
        host.volume_pvs = c.volume_pvs.clone();
        if let Some(size) = c.volume_pv_size {
            host.volume_pv_size = size;
        }
        config.compute = Some(host);
    }
    let cloud = Cloud::open(store, config)?;
    cloud.bootstrap(&Bootstrap::new(&opts.admin_password))?;
    Ok(Arc::new(cloud))
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` completes, then lets
/// requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tls::Acceptor>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    match tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ServeError::Serve),
        Some(acceptor) => axum::serve(tls::TlsListener::new(listener, acceptor), app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ServeError::Serve),
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        log::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: stopping"),
        _ = int.recv() => log::info!("SIGINT: stopping"),
    }
}

/// `hv-cloud serve`: opens the cloud, binds, prints `hv-cloud: serving URL` on stdout (with
/// the bound port when `listen` asked for port 0) and serves until SIGTERM.
pub fn run(opts: Options) -> Result<(), ServeError> {
    let cloud = open(&opts)?;
    // The last reference is dropped after the runtime: the PostgreSQL client closes its
    // connections with a runtime of its own, which cannot start inside another.
    let keep = cloud.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Serve)?;
    let served = rt.block_on(async move {
        let acceptor = match &opts.tls {
            Some((cert, key)) => Some(tls::acceptor(cert, key)?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(&opts.listen)
            .await
            .map_err(|e| ServeError::Listen(opts.listen.clone(), e))?;
        let addr = listener.local_addr().map_err(|e| ServeError::Listen(opts.listen.clone(), e))?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let public = opts.public_url.clone().unwrap_or_else(|| format!("{scheme}://{addr}"));
        let api = Api::new(cloud, &public);
        println!("hv-cloud: serving {public} on {addr}");
        log::info!("serving {public} on {addr}");
        serve(listener, acceptor, router(api), termination()).await
    });
    drop(rt);
    drop(keep);
    served
}
