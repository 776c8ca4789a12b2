//! hvd: the host daemon. One per host: it owns the host's domains (each running domain an
//! `hv-vmm` process), pools and networks, and serves them to `hvctl` and to the cloud's
//! compute service on `STATE_DIR/hvd.sock` (and, with `--listen tcp:HOST:PORT`, on TCP with a shared key).
//!
//! hvd can be killed or upgraded at any time: running domains keep running, and the next hvd on
//! the same state directory finds them again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hv::host::daemon::{self, DaemonOptions};
use hv::host::{Host, HostConfig};

/// hvd: the hv host daemon (libvirtd's role).
#[derive(Debug, Parser)]
#[command(name = "hvd", version, about)]
struct Args {
    /// The host's state directory (domains, pools, networks, runtime records, hvd.sock).
    #[arg(long, default_value = "/var/lib/hv")]
    state_dir: PathBuf,
    /// Also listen on TCP for remote clients and migration: `tcp:HOST:PORT`.
    #[arg(long, value_name = "tcp:HOST:PORT")]
    listen: Option<String>,
    /// The shared key TCP clients must present (a file readable by root only).
    #[arg(long, value_name = "FILE")]
    auth_key_file: Option<PathBuf>,
    /// Exit after this many seconds without requests while no domain is active.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// The `hv-vmm` binary to run domains with (default: next to this binary).
    #[arg(long, value_name = "PATH")]
    vmm_binary: Option<PathBuf>,
    /// Log to this file instead of stderr.
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Run network NAME's DHCP server in this process until SIGTERM (hvd starts itself so
    /// for each active network: the server outlives a restart of the daemon).
    #[arg(long, value_name = "NAME", hide = true)]
    dhcp_serve: Option<String>,
    /// More log output (-v info, -vv debug); `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    hv::logging::init(args.verbose, args.log_file.as_deref());
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("hvd: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if let Some(network) = &args.dhcp_serve {
        let mgr =
            hv::net::network::NetworkManager::open(&args.state_dir).map_err(|e| e.to_string())?;
        return mgr.run_dhcp_daemon(network).map_err(|e| e.to_string());
    }
    let vmm_binary = match args.vmm_binary {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find my own binary: {e}"))?
            .with_file_name("hv-vmm"),
    };
    let tcp = match args.listen.as_deref() {
        None => None,
        Some(l) => Some(
            l.strip_prefix("tcp:")
                .ok_or_else(|| format!("--listen {l}: want tcp:HOST:PORT"))?
                .to_string(),
        ),
    };
    let tcp_key = match &args.auth_key_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read key file {}: {e}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    std::fs::create_dir_all(&args.state_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.state_dir.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        let cfg = HostConfig { state_dir: args.state_dir.clone(), vmm_binary };
        let host = Host::open(cfg).await.map_err(|e| e.to_string())?;
        let me = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
        let state_dir = std::path::absolute(&args.state_dir).map_err(|e| e.to_string())?;
        host.set_dhcp_command(
            me,
            vec!["--state-dir".into(), state_dir.into_os_string(), "--dhcp-serve".into()],
        );
        let host = Arc::new(host);
        let opts =
            DaemonOptions { tcp, tcp_key, idle_timeout: args.timeout.map(Duration::from_secs) };
        daemon::serve(host, &args.state_dir, opts).await.map_err(|e| e.to_string())
    })
}
