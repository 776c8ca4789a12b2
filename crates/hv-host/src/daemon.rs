//! The host daemon (`hvd`): serves a [`Host`] over HTTP/1.1 on `DIR/hvd.sock` and, optionally,
//! on TCP for remote clients.
//!
//! Paths: `GET /v1/ping`; `POST /v1/call` with a [`Call`] as JSON, answered with a [`Reply`]
//! (200) or an [`ErrorReply`] (its kind's status); `POST /v1/domains/{name}/console[?force=1]`
//! with `Connection: Upgrade` and `Upgrade: hv-console` is answered `101 Switching Protocols`,
//! and the connection becomes the domain's console, raw bytes both ways (see
//! [`crate::console`]).
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

use crate::console::{self as consoles, ConsoleSessions};
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
    /// Byte streams in progress (volume uploads and downloads): the daemon is not idle.
    transfers: AtomicU64,
    /// Interactive console sessions, one per domain.
    consoles: Arc<ConsoleSessions>,
}

impl App {
    fn touch(&self) {
        self.last_request.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Counts a transfer in progress until dropped.
struct Transfer(Arc<App>);

impl Transfer {
    fn new(app: &Arc<App>) -> Transfer {
        app.touch();
        app.transfers.fetch_add(1, Ordering::Relaxed);
        Transfer(app.clone())
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.0.touch();
        self.0.transfers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many body chunks may wait between the network and the pool in a transfer.
const TRANSFER_QUEUE: usize = 8;

/// The request body of an upload as a blocking [`std::io::Read`] (for the pool's copy), fed
/// chunk by chunk through a bounded channel.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    chunk: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// A blocking [`std::io::Write`] that hands each write to a response body stream.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx.blocking_send(Ok(Bytes::copy_from_slice(buf))).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `PUT /v1/pools/{pool}/volumes/{vol}/data`: `vol-upload`, the body streamed into the volume
/// (`x-hv-length` announces its length, for an early size check).
async fn vol_upload(
    State(app): State<Arc<App>>,
    UrlPath((pool, vol)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    use futures_util::StreamExt;
    let _transfer = Transfer::new(&app);
    let len = headers
        .get("x-hv-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel(TRANSFER_QUEUE);
    let forward = tokio::spawn(async move {
        let mut data = body.into_data_stream();
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(std::io::Error::other);
            let stop = chunk.is_err();
            if tx.send(chunk).await.is_err() || stop {
                return;
            }
        }
    });
    let reader = ChannelReader { rx, chunk: Bytes::new() };
    let r = app.host.vol_upload(&pool, &vol, Box::new(reader), len).await;
    forward.abort();
    match r {
        Ok(_) => Json(Reply::Done { domain: None }).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/pools/{pool}/volumes/{vol}/data`: `vol-download`, the volume's bytes streamed as
/// they are read (`x-hv-length` is the volume's capacity). A failure midway aborts the body.
async fn vol_download(
    State(app): State<Arc<App>>,
    UrlPath((pool, vol)): UrlPath<(String, String)>,
) -> Response {
    let transfer = Transfer::new(&app);
    let info = match app.host.vol_info(&pool, &vol).await {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(TRANSFER_QUEUE);
    let host = app.host.clone();
    tokio::spawn(async move {
        let _transfer = transfer;
        let writer = ChannelWriter { tx: tx.clone() };
        if let Err(e) = host.vol_download(&pool, &vol, Box::new(writer)).await {
            log::warn!("vol-download {pool}/{vol}: {e}");
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    Response::builder()
        .header("content-type", "application/octet-stream")
        .header("x-hv-length", info.capacity)
        .body(Body::from_stream(tokio_stream_from(rx)))
        .unwrap_or_else(|e| error_response(ErrorKind::Internal, e.to_string()))
}

/// The daemon's socket in a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("hvd.sock")
}

impl From<&HostError> for ErrorKind {
    fn from(e: &HostError) -> ErrorKind {
        match e {
            HostError::NoDomain(_) | HostError::NoDisk { .. } => ErrorKind::NotFound,
            HostError::State(_) | HostError::NotRunning(_) | HostError::VolumeBusy { .. } => {
                ErrorKind::InvalidState
            }
            HostError::ConsoleBusy(_) => ErrorKind::Conflict,
            HostError::Xml(_) | HostError::Unsupported(_) | HostError::Migration(_) => {
                ErrorKind::InvalidArgument
            }
            HostError::NameInUse { .. } | HostError::UuidInUse { .. } => ErrorKind::Conflict,
            HostError::Pool(p) => {
                use hv_storage::pool::PoolError as P;
                match p {
                    P::PoolNotFound(_) | P::VolumeNotFound { .. } => ErrorKind::NotFound,
                    P::BadState { .. } | P::VolumeInUse { .. } => ErrorKind::InvalidState,
                    P::PoolExists(_) | P::VolumeExists { .. } => ErrorKind::Conflict,
                    P::InvalidName { .. } | P::Invalid { .. } => ErrorKind::InvalidArgument,
                    _ => ErrorKind::Internal,
                }
            }
            HostError::Net(n) => {
                use hv_net::network::NetworkError as N;
                match n {
                    N::NotFound(_) => ErrorKind::NotFound,
                    N::InvalidState { .. } => ErrorKind::InvalidState,
                    N::Invalid { .. } => ErrorKind::InvalidArgument,
                    _ => ErrorKind::Internal,
                }
            }
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
        Call::Save { domain, file } => done(host.save(&domain, &file).await?),
        Call::Restore { file } => done(host.restore(&file).await?),
        Call::Migrate { domain, dest_uri, dest_key, flags } => {
            let dest = crate::http::Endpoint::parse_uri(&dest_uri)
                .map_err(|e| HostError::Migration(e.to_string()))?;
            done(host.migrate(&domain, &dest, dest_key.as_deref(), flags).await?)
        }
        Call::MigratePrepare { xml, taps, disks, tcp } => {
            Reply::MigrateReady { receiver: host.migrate_prepare(&xml, &taps, &disks, tcp).await? }
        }
        Call::MigrateFinish { domain, sent } => done(host.migrate_finish(&domain, sent).await?),
        Call::PoolDefineAs(spec) => Reply::Done { domain: Some(host.pool_define_as(spec).await?) },
        Call::Pool { pool, action } => {
            host.pool_action(&pool, action).await?;
            Reply::Done { domain: None }
        }
        Call::PoolUndefine { pool } => {
            host.pool_undefine(&pool).await?;
            Reply::Done { domain: None }
        }
        Call::PoolList => Reply::Pools { pools: host.pool_list().await? },
        Call::PoolInfo { pool } => Reply::PoolInfo(host.pool_info(&pool).await?),
        Call::VolCreateAs(spec) => {
            host.vol_create_as(spec).await?;
            Reply::Done { domain: None }
        }
        Call::VolList { pool } => Reply::Volumes { volumes: host.vol_list(&pool).await? },
        Call::VolInfo { pool, vol } => Reply::VolInfo(host.vol_info(&pool, &vol).await?),
        Call::VolPath { pool, vol } => Reply::Path { path: host.vol_path(&pool, &vol).await? },
        Call::VolDelete { pool, vol } => {
            host.vol_delete(&pool, &vol).await?;
            Reply::Done { domain: None }
        }
        Call::VolWipe { pool, vol } => {
            host.vol_wipe(&pool, &vol).await?;
            Reply::Done { domain: None }
        }
        Call::VolResize(r) => Reply::Resized { capacity: host.vol_resize(r).await? },
        Call::VolClone { pool, vol, new_name } => {
            host.vol_clone(&pool, &vol, &new_name).await?;
            Reply::Done { domain: None }
        }
        Call::NetDefine { def } => Reply::Done { domain: Some(host.net_define(def).await?) },
        Call::NetStart { network } => {
            host.net_start(&network).await?;
            Reply::Done { domain: None }
        }
        Call::NetDestroy { network } => {
            host.net_destroy(&network).await?;
            Reply::Done { domain: None }
        }
        Call::NetUndefine { network } => {
            host.net_undefine(&network).await?;
            Reply::Done { domain: None }
        }
        Call::NetList => Reply::Networks { networks: host.net_list().await? },
        Call::NetInfo { network } => Reply::NetInfo(host.net_info(&network).await?),
        Call::NetDhcpLeases { network, mac } => {
            let mac = match mac {
                Some(m) => {
                    Some(m.parse().map_err(|e| HostError::Unsupported(format!("--mac {m}: {e}")))?)
                }
                None => None,
            };
            Reply::Leases { leases: host.net_dhcp_leases(&network, mac).await? }
        }
    })
}

/// The query of a console attach.
#[derive(Debug, Default, serde::Deserialize)]
struct AttachQuery {
    /// End a session that holds the console and take it (`virsh console --force`).
    #[serde(default)]
    force: Option<u8>,
}

/// `POST /v1/domains/{name}/console` with `Upgrade: hv-console`: claims the domain's console
/// and, once the connection is upgraded, runs the session on it.
async fn console_attach(
    State(app): State<Arc<App>>,
    UrlPath(name): UrlPath<String>,
    axum::extract::Query(q): axum::extract::Query<AttachQuery>,
    mut req: Request,
) -> Response {
    use axum::http::header::{CONNECTION, UPGRADE};
    app.touch();
    let wants = req.headers().get(UPGRADE).and_then(|v| v.to_str().ok());
    if !wants.is_some_and(|v| v.eq_ignore_ascii_case(consoles::UPGRADE_PROTOCOL)) {
        let why = format!("a console needs Upgrade: {}", consoles::UPGRADE_PROTOCOL);
        return error_response(ErrorKind::InvalidArgument, why);
    }
    let (dname, source) = match app.host.console_source(&name).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let session = match app.consoles.claim(dname.as_str(), q.force.unwrap_or(0) != 0) {
        Ok(s) => s,
        Err(_) => return HostError::ConsoleBusy(dname.to_string()).into_response(),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let host = app.host.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => {
                let io = hyper_util::rt::TokioIo::new(io);
                log::info!("console of domain {dname} attached");
                if let Err(e) = consoles::run(io, &source, session, host).await {
                    log::warn!("console of domain {dname}: {e}");
                }
                log::info!("console of domain {dname} detached");
            }
            Err(e) => log::warn!("console of domain {dname}: the upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, consoles::UPGRADE_PROTOCOL)
        .body(Body::empty())
        .unwrap_or_else(|e| error_response(ErrorKind::Internal, e.to_string()))
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
        transfers: AtomicU64::new(0),
        consoles: Arc::default(),
    });
    let router = Router::new()
        .route("/v1/ping", get(ping))
        .route("/v1/call", post(call))
        .route("/v1/domains/{name}/console", post(console_attach))
        .route("/v1/pools/{pool}/volumes/{vol}/data", get(vol_download).put(vol_upload))
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
                    let busy = app.transfers.load(Ordering::Relaxed) > 0;
                    if !active && !busy && quiet >= idle {
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
