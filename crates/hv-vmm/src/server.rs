//! Cloud Hypervisor's REST API over HTTP/1.1 on a Unix socket (axum on a current-thread tokio
//! runtime, in a thread of its own, so requests are served off the vCPU threads).
//!
//! Every answer follows Cloud Hypervisor's: 200 with a JSON body for `vmm.ping`, `vm.info` and
//! `vm.counters`; 204 for a successful action; 404 when there is no VM (or for an unknown
//! endpoint); 405 when the VM's state does not allow the call; 400 for a body that does not
//! parse (with serde's message) or a configuration hv cannot honour, and for a wrong HTTP
//! method; 500 when the call failed. Error bodies are, as Cloud Hypervisor's, a JSON array of
//! the error's messages, outermost first.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put, MethodRouter};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    ReceiveMigrationData, RestoreConfig, SendMigrationData, VmSnapshotConfig, VmmPingResponse,
};
use crate::config::VmConfig;
use crate::manager::{self, ManagerError, VmManager};
use crate::process::Vmm;
use crate::urls::{self, MigrationUrl};
use hv_core::migration::MigrationOptions;

/// The API's path prefix.
pub const API_ROOT: &str = "/api/v1";

/// The API version `vmm.ping` reports (Cloud Hypervisor's OpenAPI document's).
pub const API_VERSION: &str = "0.3.0";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process serves the socket.
    #[error("API socket {0} is in use by another process")]
    InUse(PathBuf),
    /// The socket could not be made.
    #[error("cannot listen on API socket {path}: {source}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The API thread could not be started.
    #[error("cannot start the API thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Run on the API thread before it serves its first request (e.g. installing the API
/// thread's seccomp filter); an error stops the server before it serves anything.
pub type ApiThreadHook =
    Box<dyn FnOnce() -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send>;

/// A running API server.
#[derive(Debug)]
pub struct ServerHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    done: std::sync::mpsc::Receiver<()>,
    path: PathBuf,
}

impl ServerHandle {
    /// Stops accepting, finishes the requests in flight (at most `grace`), removes the socket.
    pub fn stop(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if self.done.recv_timeout(grace).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (replacing a stale socket no process serves) and serves the API on a thread
/// named `hv-vmm-api`, which runs `hook` first.
pub fn spawn(
    path: &Path,
    vmm: Arc<Vmm>,
    hook: Option<ApiThreadHook>,
) -> Result<ServerHandle, ServerError> {
    let listener = bind(path)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("hv-vmm-api".into())
        .spawn(move || {
            if let Some(hook) = hook {
                if let Err(e) = hook() {
                    log::error!("API thread set-up failed, serving nothing: {e}");
                    let _ = done_tx.send(());
                    return;
                }
            }
            if let Err(e) = serve(listener, vmm, stop_rx) {
                log::error!("API server stopped: {e}");
            }
            let _ = done_tx.send(());
        })
        .map_err(ServerError::Thread)?;
    Ok(ServerHandle {
        stop: Some(stop_tx),
        thread: Some(thread),
        done: done_rx,
        path: path.to_path_buf(),
    })
}

fn bind(path: &Path) -> Result<StdUnixListener, ServerError> {
    let bind_err = |source| ServerError::Bind { path: path.to_path_buf(), source };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(bind_err(std::io::Error::from(std::io::ErrorKind::AlreadyExists)));
        }
        if StdUnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = StdUnixListener::bind(path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

fn serve(
    listener: StdUnixListener,
    vmm: Arc<Vmm>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        axum::serve(listener, router(vmm))
            .with_graceful_shutdown(async move {
                let _ = stop.await;
            })
            .await
    })
}

/// The API's routes.
pub fn router(vmm: Arc<Vmm>) -> Router {
    let r = |m: MethodRouter<Arc<Vmm>>| m.fallback(wrong_method);
    let api = Router::new()
        .route("/vmm.ping", r(get(ping)))
        .route("/vmm.shutdown", r(put(vmm_shutdown)))
        .route("/vm.create", r(put(create)))
        .route("/vm.boot", r(put(|s: State<Arc<Vmm>>| act(s, VmManager::boot))))
        .route("/vm.pause", r(put(|s: State<Arc<Vmm>>| act(s, VmManager::pause))))
        .route("/vm.resume", r(put(|s: State<Arc<Vmm>>| act(s, VmManager::resume))))
        .route("/vm.shutdown", r(put(|s: State<Arc<Vmm>>| act(s, VmManager::shutdown))))
        .route("/vm.reboot", r(put(|s: State<Arc<Vmm>>| act(s, VmManager::reboot))))
        .route("/vm.power-button", r(put(|s: State<Arc<Vmm>>| act(s, VmManager::power_button))))
        .route("/vm.delete", r(put(|s: State<Arc<Vmm>>| act(s, VmManager::delete))))
        .route("/vm.info", r(get(|s: State<Arc<Vmm>>| look(s, VmManager::info))))
        .route("/vm.counters", r(get(|s: State<Arc<Vmm>>| look(s, VmManager::counters))))
        .route("/vm.snapshot", r(put(snapshot)))
        .route("/vm.restore", r(put(restore)))
        .route("/vm.send-migration", r(put(send_migration)))
        .route("/vm.receive-migration", r(put(receive_migration)));
    Router::new().nest(API_ROOT, api).fallback(unknown).with_state(vmm)
}

/// A JSON array of an error's messages, outermost first (Cloud Hypervisor's error body).
fn error_body(status: u16, e: &dyn std::error::Error) -> Response {
    let mut chain = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    json(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &chain)
}

fn message(status: StatusCode, msg: String) -> Response {
    json(status, &[msg])
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn failure(e: ManagerError) -> Response {
    let status = e.status();
    if status >= 500 {
        log::warn!("API call failed: {e}");
    } else {
        log::info!("API call refused: {e}");
    }
    error_body(status, &e)
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        log::info!("API request refused: bad body: {e}");
        message(StatusCode::BAD_REQUEST, format!("invalid request body: {e}"))
    })
}

async fn ping() -> Response {
    let version = env!("CARGO_PKG_VERSION");
    json(
        StatusCode::OK,
        &VmmPingResponse {
            build_version: format!("hv-vmm {version}"),
            version: API_VERSION.into(),
            pid: i64::from(std::process::id()),
            features: Vec::new(),
        },
    )
}

async fn vmm_shutdown(State(vmm): State<Arc<Vmm>>) -> Response {
    vmm.request_shutdown();
    StatusCode::NO_CONTENT.into_response()
}

async fn create(State(vmm): State<Arc<Vmm>>, body: Bytes) -> Response {
    let config: VmConfig = match parse(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match vmm.manager().create(config) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failure(e),
    }
}

async fn act(
    State(vmm): State<Arc<Vmm>>,
    f: fn(&mut VmManager) -> Result<(), ManagerError>,
) -> Response {
    let result = f(&mut vmm.manager());
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failure(e),
    }
}

async fn look<T: Serialize>(
    State(vmm): State<Arc<Vmm>>,
    f: fn(&mut VmManager) -> Result<T, ManagerError>,
) -> Response {
    let result = f(&mut vmm.manager());
    match result {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => failure(e),
    }
}

/// Runs `job` on the main thread ([`Vmm::offload`]) and answers 204 or its error; the API
/// thread serves other requests meanwhile.
async fn offloaded(
    vmm: &Vmm,
    job: impl FnOnce(&Vmm) -> Result<(), ManagerError> + Send + 'static,
) -> Response {
    match vmm.offload(job).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => failure(e),
        Err(_) => message(StatusCode::INTERNAL_SERVER_ERROR, "the VMM is shutting down".into()),
    }
}

async fn snapshot(State(vmm): State<Arc<Vmm>>, body: Bytes) -> Response {
    let dir = match parse::<VmSnapshotConfig>(&body) {
        Ok(c) => urls::snapshot_dir(&c.destination_url),
        Err(r) => return r,
    };
    match dir {
        Ok(dir) => offloaded(&vmm, move |v| v.manager().snapshot(&dir)).await,
        Err(e) => failure(e.into()),
    }
}

async fn restore(State(vmm): State<Arc<Vmm>>, body: Bytes) -> Response {
    let c = match parse::<RestoreConfig>(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (prefault, resume) = (c.prefault.unwrap_or(false), c.resume.unwrap_or(false));
    if let Some(mode) =
        c.memory_restore_mode.as_deref().filter(|m| !matches!(*m, "Copy" | "OnDemand"))
    {
        return message(
            StatusCode::BAD_REQUEST,
            format!("memory_restore_mode {mode:?}: give Copy or OnDemand"),
        );
    }
    match urls::snapshot_dir(&c.source_url) {
        Ok(dir) => offloaded(&vmm, move |v| v.manager().restore(&dir, prefault, resume)).await,
        Err(e) => failure(e.into()),
    }
}

async fn send_migration(State(vmm): State<Arc<Vmm>>, body: Bytes) -> Response {
    let c = match parse::<SendMigrationData>(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if c.connections.is_some_and(|n| n != 1) {
        return message(
            StatusCode::BAD_REQUEST,
            "connections: hv migrates over one connection; give 1 or leave it out".into(),
        );
    }
    let mut opts = MigrationOptions::default();
    if let Some(ms) = c.downtime_ms {
        opts.downtime = Duration::from_millis(ms.max(1));
    }
    if let Some(s) = c.timeout_s {
        opts.timeout = Duration::from_secs(s.max(1));
    }
    if c.timeout_strategy == Some(crate::api::TimeoutStrategy::Ignore) {
        opts.on_timeout = hv_core::migration::TimeoutStrategy::Ignore;
    }
    match MigrationUrl::parse(&c.destination_url) {
        Ok(url) => {
            offloaded(&vmm, move |v| manager::send_migration(v, &url, &opts).map(|_| ())).await
        }
        Err(e) => failure(e.into()),
    }
}

async fn receive_migration(State(vmm): State<Arc<Vmm>>, body: Bytes) -> Response {
    let c = match parse::<ReceiveMigrationData>(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match MigrationUrl::parse(&c.receiver_url) {
        Ok(url) => offloaded(&vmm, move |v| manager::receive_migration(v, &url)).await,
        Err(e) => failure(e.into()),
    }
}

async fn wrong_method(method: axum::http::Method, OriginalUri(uri): OriginalUri) -> Response {
    message(StatusCode::BAD_REQUEST, format!("{method} is not a method of {}", uri.path()))
}

async fn unknown(uri: axum::http::Uri) -> Response {
    message(StatusCode::NOT_FOUND, format!("no endpoint {}", uri.path()))
}
