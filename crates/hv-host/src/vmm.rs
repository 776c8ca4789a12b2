//! A domain's VMM: one `hv-vmm` process, started with Cloud Hypervisor's command line and
//! driven through its REST API on a Unix socket.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde::Deserialize;

use crate::domain::{DiskFormat, DomainDef};
use crate::http::{self, Endpoint};
use crate::process::ProcessRecord;

/// How long the VMM gets to answer its API.
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// A disk as the VMM opens it: a host path and its format, both decided by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDisk {
    /// The file or block device; for a logical volume, only its name (`/dev/VG/LV`).
    pub path: PathBuf,
    /// A logical volume's extents (hv-vmm's `segments`), which the VMM opens instead of
    /// `path`; empty for a file.
    pub segments: Vec<hv_storage::block::SegmentPath>,
    /// Its format.
    pub format: DiskFormat,
    /// Read-only for the guest.
    pub read_only: bool,
    /// The qcow2 may open its backing chain (checked by the host first).
    pub backing_files: bool,
}

/// A NIC as the VMM opens it: a TAP the host made and plugged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedNic {
    /// The TAP's name.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: String,
}

/// Errors driving a VMM process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmmError {
    /// The binary could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The `hv-vmm` binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The process ended before its API answered.
    #[error("hv-vmm exited during start-up: {log}")]
    DiedAtStart {
        /// The end of its log.
        log: String,
    },
    /// Its API did not come up in time.
    #[error("hv-vmm did not answer on {0} in time")]
    NoApi(PathBuf),
    /// An API call failed.
    #[error("hv-vmm API {path}: {why}")]
    Api {
        /// The endpoint.
        path: String,
        /// The status and body, or the transport error.
        why: String,
    },
    /// A host file could not be set up.
    #[error("cannot open {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The files of one running domain, under `DIR/run/NAME/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmPaths {
    /// The VMM's API socket.
    pub api_socket: PathBuf,
    /// Its log (stdout and stderr too).
    pub log: PathBuf,
}

impl VmmPaths {
    /// The paths under `run_dir`.
    pub fn new(run_dir: &Path) -> VmmPaths {
        VmmPaths { api_socket: run_dir.join("api.sock"), log: run_dir.join("vmm.log") }
    }
}

/// The `hv-vmm` command line (Cloud Hypervisor's flags) for a domain.
pub fn command_line(
    def: &DomainDef,
    disks: &[ResolvedDisk],
    nics: &[ResolvedNic],
    serial: &SerialSink,
    paths: &VmmPaths,
) -> Vec<String> {
    let mut a = vec![
        "--api-socket".to_string(),
        format!("path={}", paths.api_socket.display()),
        "--log-file".into(),
        paths.log.display().to_string(),
        // Info level: the log then says how the guest ended ("the guest powered off"), which
        // is how a host that adopted the VMM after a restart (not its parent) learns it.
        "-v".into(),
        "--kernel".into(),
        def.os.kernel.display().to_string(),
        "--cpus".into(),
        format!("boot={}", def.vcpus),
        "--memory".into(),
        format!("size={}M", def.memory_mib()),
    ];
    if let Some(c) = &def.os.cmdline {
        a.extend(["--cmdline".into(), c.clone()]);
    }
    if let Some(i) = &def.os.initrd {
        a.extend(["--initramfs".into(), i.display().to_string()]);
    }
    for d in disks {
        let mut spec = format!("path={},image_type={}", d.path.display(), d.format.as_str());
        if d.read_only {
            spec.push_str(",readonly=on");
        }
        if d.backing_files {
            spec.push_str(",backing_files=on");
        }
        if !d.segments.is_empty() {
            let extents: Vec<String> = d
                .segments
                .iter()
                .map(|s| format!("{}:{}:{}", s.path.display(), s.file_offset, s.len))
                .collect();
            spec.push_str(&format!(",segments={}", extents.join(";")));
        }
        a.extend(["--disk".into(), spec]);
    }
    for n in nics {
        a.extend(["--net".into(), format!("tap={},mac={}", n.tap, n.mac)]);
    }
    a.push("--serial".into());
    a.push(match serial {
        SerialSink::File(p) => format!("file={}", p.display()),
        SerialSink::Pty => "pty".into(),
    });
    a.extend(["--console".into(), "off".into()]);
    a
}

/// Starts `binary` with `args` in a session of its own (so that the host daemon can exit or be
/// killed without taking the VMM with it), its output appended to the log.
pub fn spawn(
    binary: &Path,
    args: &[String],
    paths: &VmmPaths,
) -> Result<(Child, ProcessRecord), VmmError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(|source| VmmError::Io { path: paths.log.clone(), source })?;
    let log2 =
        log.try_clone().map_err(|source| VmmError::Io { path: paths.log.clone(), source })?;
    let _ = std::fs::remove_file(&paths.api_socket);
    let mut cmd = Command::new(binary);
    cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: the closure runs in the child between fork and exec and only calls setsid(2),
    // which is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let child =
        cmd.spawn().map_err(|source| VmmError::Spawn { binary: binary.to_path_buf(), source })?;
    let rec = ProcessRecord::of(child.id())
        .ok_or_else(|| VmmError::DiedAtStart { log: log_tail(&paths.log) })?;
    Ok((child, rec))
}

/// The line `hv-vmm` logs when its guest powers off normally.
pub const POWERED_OFF_LINE: &str = "the guest powered off";

/// The start of the line `hv-vmm` logs when its guest stops any other way (a crash, a triple
/// fault, a failed vCPU).
pub const GUEST_STOPPED_LINE: &str = "the guest stopped:";

/// The last ~2 KiB of a log, for error messages.
pub fn log_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2048)));
    let mut s = String::new();
    let _ = f.take(2048).read_to_string(&mut s);
    s.trim()
        .lines()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A client for one VMM's API socket.
#[derive(Debug, Clone)]
pub struct VmmApi {
    endpoint: Endpoint,
}

/// The part of Cloud Hypervisor's `VmInfo` the host reads.
#[derive(Debug, Clone, Deserialize)]
pub struct VmInfo {
    /// `Created`, `Running`, `Paused` or `Shutdown`.
    pub state: String,
    /// The VM's configuration (only its serial port is read).
    #[serde(default)]
    pub config: Option<VmInfoConfig>,
}

/// The part of `VmConfig` the host reads.
#[derive(Debug, Clone, Deserialize)]
pub struct VmInfoConfig {
    /// The serial port.
    #[serde(default)]
    pub serial: Option<VmInfoSerial>,
}

/// Cloud Hypervisor's `SerialConfig`: its `file` names the pty in `Pty` mode.
#[derive(Debug, Clone, Deserialize)]
pub struct VmInfoSerial {
    /// `Off`, `Null`, `Pty`, `Tty`, `File` or `Socket`.
    pub mode: String,
    /// The file, or the pty's terminal end.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl VmInfo {
    /// The pty the serial port is on (`/dev/pts/N`), in `Pty` mode.
    pub fn pty(&self) -> Option<&Path> {
        let s = self.config.as_ref()?.serial.as_ref()?;
        (s.mode == "Pty").then_some(s.file.as_deref()).flatten()
    }
}

/// Where a domain's VMM sends its serial port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialSink {
    /// Appended to a file.
    File(PathBuf),
    /// A pty the VMM makes (`--serial pty`).
    Pty,
}

impl VmmApi {
    /// The API on `socket`.
    pub fn new(socket: &Path) -> VmmApi {
        VmmApi { endpoint: Endpoint::Unix(socket.to_path_buf()) }
    }

    /// Sends one request; 2xx answers give their body.
    pub async fn request(
        &self,
        method: Method,
        what: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Vec<u8>, VmmError> {
        self.request_within(method, what, body, API_TIMEOUT).await
    }

    /// [`VmmApi::request`] with its own time limit (migrations take as long as they take).
    pub async fn request_within(
        &self,
        method: Method,
        what: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<Vec<u8>, VmmError> {
        let path = format!("/api/v1/{what}");
        let body = body.map(|b| b.to_string().into_bytes());
        let r = http::call(&self.endpoint, method, &path, &[], body, timeout)
            .await
            .map_err(|e| VmmError::Api { path: path.clone(), why: e.to_string() })?;
        if r.status.is_success() {
            Ok(r.body.to_vec())
        } else {
            Err(VmmError::Api {
                path,
                why: format!("{}: {}", r.status, String::from_utf8_lossy(&r.body).trim()),
            })
        }
    }

    /// `PUT` with no body (pause, resume, power-button, ...).
    pub async fn put(&self, what: &str) -> Result<(), VmmError> {
        self.request(Method::PUT, what, None).await.map(drop)
    }

    /// `GET vm.info`.
    pub async fn info(&self) -> Result<VmInfo, VmmError> {
        let body = self.request(Method::GET, "vm.info", None).await?;
        serde_json::from_slice(&body)
            .map_err(|e| VmmError::Api { path: "vm.info".into(), why: e.to_string() })
    }

    /// Waits until the API answers `vmm.ping`, the process ends, or `timeout` passes.
    pub async fn wait_ready(
        &self,
        proc_: &ProcessRecord,
        log: &Path,
        timeout: Duration,
    ) -> Result<(), VmmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = http::call(
                &self.endpoint,
                Method::GET,
                "/api/v1/vmm.ping",
                &[],
                None,
                Duration::from_secs(2),
            )
            .await
            {
                if r.status == StatusCode::OK {
                    return Ok(());
                }
            }
            if !proc_.is_running() {
                return Err(VmmError::DiedAtStart { log: log_tail(log) });
            }
            if Instant::now() >= deadline {
                let Endpoint::Unix(p) = &self.endpoint else {
                    unreachable!("VMM APIs are Unix sockets")
                };
                return Err(VmmError::NoApi(p.clone()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
