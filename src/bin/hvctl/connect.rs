//! Finding and talking to the host daemon: URIs, the on-demand local daemon, calls.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hv::host::http::{self, Endpoint, Method};
use hv::host::protocol::{Call, ErrorReply, Reply};

/// The default host when neither `-c` nor `--state-dir` is given.
const DEFAULT_STATE_DIR: &str = "/var/lib/hv";

/// How long a call may take (a shutdown with a timeout waits inside the daemon).
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// A connection to one host daemon.
pub struct Conn {
    endpoint: Endpoint,
    key: Option<String>,
}

/// Parses `hv+unix:///ABS/PATH` or `hv+tcp://HOST:PORT`.
pub fn parse_uri(uri: &str) -> Result<Endpoint, String> {
    Endpoint::parse_uri(uri).map_err(|e| e.to_string())
}

/// The shared key for TCP hosts: `--auth-key-file`, else `$HV_AUTH_KEY_FILE`.
pub fn read_key(key_file: Option<&Path>) -> Result<String, String> {
    let file = key_file
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("HV_AUTH_KEY_FILE").map(PathBuf::from))
        .ok_or("hv+tcp:// hosts need a key: --auth-key-file or HV_AUTH_KEY_FILE")?;
    Ok(std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read key file {}: {e}", file.display()))?
        .trim()
        .to_string())
}

impl Conn {
    /// Connects as the command line says; `--state-dir` starts the local daemon if needed.
    pub async fn open(
        uri: Option<&str>,
        state_dir: Option<&Path>,
        key_file: Option<&Path>,
    ) -> Result<Conn, String> {
        let endpoint = match (uri, state_dir) {
            (Some(u), _) => parse_uri(u)?,
            (None, Some(dir)) => {
                let sock = hv::host::daemon::socket_path(dir);
                if !ping(&Endpoint::Unix(sock.clone())).await {
                    start_local_daemon(dir).await?;
                }
                Endpoint::Unix(sock)
            }
            (None, None) => {
                Endpoint::Unix(hv::host::daemon::socket_path(Path::new(DEFAULT_STATE_DIR)))
            }
        };
        let key = match &endpoint {
            Endpoint::Tcp(_) => Some(read_key(key_file)?),
            Endpoint::Unix(_) => None,
        };
        Ok(Conn { endpoint, key })
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        self.key.iter().map(|k| ("authorization", format!("Bearer {k}"))).collect()
    }

    /// Sends one call; the daemon's error is returned as its message.
    pub async fn call(&self, call: &Call) -> Result<Reply, String> {
        let body = serde_json::to_vec(call).map_err(|e| e.to_string())?;
        let h = self.headers();
        let hdrs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r =
            http::call(&self.endpoint, Method::POST, "/v1/call", &hdrs, Some(body), CALL_TIMEOUT)
                .await
                .map_err(|e| format!("failed to connect to the hypervisor: {e}"))?;
        answer(r)
    }

    /// Sends the chunks `body` yields to `path` (a `PUT`), `len` bytes in all.
    pub async fn upload(
        &self,
        path: &str,
        len: u64,
        body: tokio::sync::mpsc::Receiver<std::io::Result<http::Bytes>>,
    ) -> Result<Reply, String> {
        let h = self.headers();
        let len = len.to_string();
        let mut hdrs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        hdrs.push(("x-hv-length", &len));
        let r = http::upload(&self.endpoint, Method::PUT, path, &hdrs, body)
            .await
            .map_err(|e| e.to_string())?;
        answer(r)
    }

    /// Hands the body of `GET path` to `sink` as it arrives.
    pub async fn download(
        &self,
        path: &str,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), String> {
        let h = self.headers();
        let hdrs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r =
            http::download(&self.endpoint, path, &hdrs, sink).await.map_err(|e| e.to_string())?;
        if r.status.is_success() {
            Ok(())
        } else {
            answer(r).map(drop)
        }
    }

    /// Attaches to `domain`'s console (`force`: take it from a session that holds it); the
    /// connection then carries the console's bytes both ways.
    pub async fn console(&self, domain: &str, force: bool) -> Result<http::Upgraded, String> {
        let h = self.headers();
        let hdrs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let path = format!("/v1/domains/{domain}/console{}", if force { "?force=1" } else { "" });
        let protocol = hv::host::console::UPGRADE_PROTOCOL;
        match http::upgrade(&self.endpoint, &path, protocol, &hdrs).await {
            Ok(Ok(io)) => Ok(io),
            Ok(Err(r)) => answer(r).and(Err(format!("hvd did not attach the console of {domain}"))),
            Err(e) => Err(format!("failed to connect to the hypervisor: {e}")),
        }
    }
}

/// The daemon's answer: its reply, or its error's message.
fn answer(r: http::Response) -> Result<Reply, String> {
    if r.status.is_success() {
        serde_json::from_slice(&r.body).map_err(|e| format!("bad answer from hvd: {e}"))
    } else {
        match serde_json::from_slice::<ErrorReply>(&r.body) {
            Ok(e) => Err(e.message),
            Err(_) => {
                Err(format!("hvd answered {}: {}", r.status, String::from_utf8_lossy(&r.body)))
            }
        }
    }
}

async fn ping(endpoint: &Endpoint) -> bool {
    matches!(
        http::call(endpoint, Method::GET, "/v1/ping", &[], None, Duration::from_secs(2)).await,
        Ok(r) if r.status.is_success()
    )
}

/// Starts `hvd --state-dir DIR --timeout 30` in a session of its own and waits for its socket.
async fn start_local_daemon(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let hvd = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("hvd");
    let log = dir.join("hvd.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&hvd);
    cmd.arg("--state-dir")
        .arg(dir)
        .args(["--timeout", "30"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: runs in the child between fork and exec and only calls setsid(2), which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", hvd.display()))?;
    let sock = Endpoint::Unix(hv::host::daemon::socket_path(dir));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ping(&sock).await {
            // The daemon lives on; its exit is reaped by init once this process ends.
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("hvd exited ({status}) at start: see {}", log.display()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("hvd did not come up in time: see {}", log.display()))
}
