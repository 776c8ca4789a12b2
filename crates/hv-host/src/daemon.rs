//! The host daemon (`hvd`): serves a [`Host`] over HTTP/1.1 on `DIR/hvd.sock` and, optionally,
//! on TCP for remote clients.
//!
//! Paths: `GET /v1/ping`; `POST /v1/call` with a [`Call`] as JSON, answered with a [`Reply`]
//! (200) or an [`ErrorReply`] (its kind's status); `GET /v1/domains/{name}/console` streams the
//! domain's serial output as it is written (from the start of the current log).
//!
//! TCP connections are authenticated by a shared secret (`Authorization: Bearer KEY`, compared
//! in constant time), read from a file only root can read: a libvirt-style management network
//! between hosts of one cloud, where every host holds the same key. It does not encrypt; run the
//! TCP listener on a trusted management network (or through a tunnel), as libvirt's plain `tcp`
//! transport is run. The Unix socket is protected by its file mode (0600, root).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::{TcpListener, UnixListener};

use crate::domain::{DomainName, DomainState};
use crate::error::HostError;
use crate::host::Host;
use crate::protocol::{Call, ErrorKind, ErrorReply, Reply, PROTOCOL_VERSION};

/// How the daemon runs.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Also listen on this TCP address (`HOST:PORT`).
    pub tcp: Option<String>,
    /// The shared secret TCP clients must present (required with `tcp`).
    pub tcp_key: Option<String>,
    /// Exit after this long with no request while no domain is active (libvirt's `--timeout`).
    pub idle_timeout: Option<Duration>,
}

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// A listener could not be set up.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The socket path or address.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another daemon already serves this state directory.
    #[error("another hvd already serves {0}")]
    Running(PathBuf),
    /// TCP without a key.
    #[error("--listen tcp needs a shared key (--auth-key-file)")]
    NoKey,
}

struct App {
    host: Arc<Host>,
    last_request: AtomicU64,
    started: Instant,
}

impl App {
    fn touch(&self) {
        self.last_request.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The daemon's socket in a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("hvd.sock")
}

impl From<&HostError> for ErrorKind {
    fn from(e: &HostError) -> ErrorKind {
        match e {
            HostError::NoDomain(_) | HostError::NoDisk { .. } => ErrorKind::NotFound,
            HostError::State(_) => ErrorKind::InvalidState,
            HostError::Xml(_) | HostError::Unsupported(_) => ErrorKind::InvalidArgument,
            HostError::NameInUse { .. } | HostError::UuidInUse { .. } => ErrorKind::Conflict,
            _ => ErrorKind::Internal,
        }
    }
}

fn error_response(kind: ErrorKind, message: String) -> Response {
    let status = StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(ErrorReply { kind, message })).into_response()
}

impl IntoResponse for HostError {
    fn into_response(self) -> Response {
        error_response(ErrorKind::from(&self), self.to_string())
    }
}

async fn ping(State(app): State<Arc<App>>) -> Json<Reply> {
    app.touch();
    Json(Reply::Pong { version: PROTOCOL_VERSION, pid: std::process::id() })
}

async fn call(State(app): State<Arc<App>>, body: Bytes) -> Response {
    app.touch();
    let call: Call = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error_response(ErrorKind::InvalidArgument, format!("malformed call: {e}"))
        }
    };
    match dispatch(&app.host, call).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Runs one call against the host.
pub async fn dispatch(host: &Host, call: Call) -> Result<Reply, HostError> {
    let done = |n: DomainName| Reply::Done { domain: Some(n.to_string()) };
    Ok(match call {
        Call::Ping => Reply::Pong { version: PROTOCOL_VERSION, pid: std::process::id() },
        Call::Define { xml } => {
            let (name, new) = host.define(&xml).await?;
            Reply::Defined { domain: name.to_string(), new }
        }
        Call::Undefine { domain } => done(host.undefine(&domain).await?),
        Call::Start { domain } => done(host.start(&domain).await?),
        Call::Shutdown { domain, timeout_secs } => {
            done(host.shutdown(&domain, timeout_secs.map(Duration::from_secs)).await?)
        }
        Call::Destroy { domain } => done(host.destroy(&domain).await?),
        Call::Reboot { domain } => done(host.reboot(&domain).await?),
        Call::Suspend { domain } => done(host.suspend(&domain).await?),
        Call::Resume { domain } => done(host.resume(&domain).await?),
        Call::List { all } => Reply::Domains { domains: host.list(all).await },
        Call::DomInfo { domain } => Reply::Info(host.info(&domain).await?),
        Call::DomState { domain } => {
            let (state, reason) = host.state(&domain).await?;
            Reply::State { state, reason }
        }
        Call::DumpXml { domain } => Reply::Xml { xml: host.dumpxml(&domain).await? },
        Call::Autostart { domain, enable } => done(host.set_autostart(&domain, enable).await?),
        Call::DomBlkList { domain } => Reply::Disks { disks: host.blklist(&domain).await? },
        Call::DomIfList { domain } => Reply::Interfaces { interfaces: host.iflist(&domain).await? },
        Call::AttachDisk { domain, source, target, format, read_only } => {
            done(host.attach_disk(&domain, &source, &target, format.as_deref(), read_only).await?)
        }
        Call::DetachDisk { domain, target } => done(host.detach_disk(&domain, &target).await?),
        Call::Save { .. } | Call::Restore { .. } => {
            return Err(HostError::Unsupported("save/restore (needs hv-vmm snapshots)".into()))
        }
    })
}

/// Streams the domain's serial log: what is there, then what is appended, until the domain
/// stops or the client goes away.
async fn console(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>) -> Response {
    app.touch();
    let info = match app.host.info(&name).await {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    if !info.state.is_active() {
        return HostError::State(crate::domain::TransitionError {
            state: info.state,
            op: crate::domain::DomainOp::Resume,
        })
        .into_response();
    }
    let Ok(dname) = info.name.parse::<DomainName>() else {
        return error_response(ErrorKind::Internal, "bad stored name".into());
    };
    let path = app.host.serial_log_of(&dname).await;
    let host = app.host.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut offset = 0u64;
        loop {
            let chunk = tokio::task::spawn_blocking({
                let path = path.clone();
                move || read_from(&path, offset)
            })
            .await
            .unwrap_or_default();
            if !chunk.is_empty() {
                offset += chunk.len() as u64;
                if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                    return;
                }
                continue;
            }
            if !host.state(&name).await.map(|(s, _)| s.is_active()).unwrap_or(false) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let stream = tokio_stream_from(rx);
    Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error_response(ErrorKind::Internal, e.to_string()))
}

fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut buf);
    buf
}

/// Adapts a channel receiver to a `Stream` without another dependency.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn require_key(
    State(key): State<Arc<String>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
        return error_response(ErrorKind::Unauthorized, "missing or wrong key".into());
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves `host` until SIGTERM/SIGINT or the idle timeout; running domains keep running.
pub async fn serve(
    host: Arc<Host>,
    state_dir: &Path,
    opts: DaemonOptions,
) -> Result<(), DaemonError> {
    let sock = socket_path(state_dir);
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        return Err(DaemonError::Running(state_dir.to_path_buf()));
    }
    let _ = std::fs::remove_file(&sock);
    let unix = UnixListener::bind(&sock)
        .map_err(|source| DaemonError::Listen { what: sock.display().to_string(), source })?;
    let _ = std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600));
    let app = Arc::new(App {
        host: host.clone(),
        last_request: AtomicU64::new(0),
        started: Instant::now(),
    });
    let router = Router::new()
        .route("/v1/ping", get(ping))
        .route("/v1/call", post(call))
        .route("/v1/domains/{name}/console", get(console))
        .with_state(app.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    {
        let mut rx = stop_rx.clone();
        let r = router.clone();
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(unix, r)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    if let Some(addr) = &opts.tcp {
        let key = Arc::new(opts.tcp_key.clone().ok_or(DaemonError::NoKey)?);
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen { what: addr.clone(), source })?;
        let r = router.clone().layer(middleware::from_fn_with_state(key, require_key));
        let mut rx = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(tcp, r)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    log::info!("hvd serving {} (pid {})", sock.display(), std::process::id());
    let poller = {
        let host = host.clone();
        tokio::spawn(async move {
            loop {
                host.poll().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    host.start_autostart().await;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| DaemonError::Listen { what: "SIGTERM".into(), source })?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|source| DaemonError::Listen { what: "SIGINT".into(), source })?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some(idle) = opts.idle_timeout {
                    let last = Duration::from_millis(app.last_request.load(Ordering::Relaxed));
                    let quiet = app.started.elapsed().saturating_sub(last);
                    let active = host.list(false).await.iter().any(|d| d.state != DomainState::ShutOff);
                    if !active && quiet >= idle {
                        log::info!("hvd: idle for {idle:?} with no active domain, exiting");
                        break;
                    }
                }
            }
        }
    }
    poller.abort();
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    let _ = std::fs::remove_file(&sock);
    log::info!("hvd stopped; running domains keep running");
    Ok(())
}
