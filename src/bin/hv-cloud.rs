//! hv-cloud: the OpenStack API server (Keystone, Nova, Glance, Neutron and Cinder paths, as
//! devstack lays them out) over the hv control plane.
//!
//! `hv-cloud serve --state-dir DIR --listen HOST:PORT [--database URL] [--public-url URL]
//! [--tls-cert F --tls-key F] [--control-plane-only | --vmm-binary F] [--volume-pv PATH]...
//! [--volume-pv-size-gb N]`: this host serves as a
//! compute host (its servers are hv-vmm processes) unless `--control-plane-only`; the first start bootstraps the admin user with the password in
//! `HV_ADMIN_PASSWORD`. SIGTERM stops it cleanly.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// hv-cloud: the OpenStack API for hv.
#[derive(Debug, Parser)]
#[command(name = "hv-cloud", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Log to this file instead of stderr.
    #[arg(long, value_name = "FILE", global = true)]
    log_file: Option<PathBuf>,
    /// More log output (-v info, -vv debug); `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API until SIGTERM.
    Serve {
        /// State: the SQLite database (unless --database) and the image pool.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// Where to listen (`HOST:PORT`; port 0 picks one and prints it).
        #[arg(long, value_name = "HOST:PORT")]
        listen: String,
        /// `postgresql://...` for a shared PostgreSQL store (default: SQLite in DIR).
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// The base URL clients reach, for the catalog and version documents.
        #[arg(long, value_name = "URL")]
        public_url: Option<String>,
        /// PEM certificate chain for HTTPS.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for HTTPS.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve the API only: this host runs no servers (they end in ERROR) and has no
        /// block storage.
        #[arg(long, conflicts_with = "vmm_binary")]
        control_plane_only: bool,
        /// The `hv-vmm` binary servers run as (default: `$HV_VMM_BINARY`, else the one next to
        /// hv-cloud).
        #[arg(long, value_name = "FILE")]
        vmm_binary: Option<PathBuf>,
        /// Virtual CPUs the scheduler places per physical CPU of this host (Nova's
        /// `cpu_allocation_ratio`; default: the ratio stored for the host, 16.0 at first).
        #[arg(long, value_name = "RATIO", conflicts_with = "control_plane_only")]
        cpu_allocation_ratio: Option<f64>,
        /// A physical volume (block device or file) of the volume pool, a logical pool
        /// (repeatable; read only when the pool is first made). Default: a sparse file
        /// `host/volumes.pv` in the state directory.
        #[arg(long = "volume-pv", value_name = "PATH", conflicts_with = "control_plane_only")]
        volume_pvs: Vec<PathBuf>,
        /// The size of that sparse file, in GiB (default 64).
        #[arg(
            long,
            value_name = "GIB",
            conflicts_with = "control_plane_only",
            value_parser = clap::value_parser!(u64).range(1..=1 << 20)
        )]
        volume_pv_size_gb: Option<u64>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    hv::logging::init(args.verbose, args.log_file.as_deref());
    let Command::Serve {
        state_dir,
        listen,
        database,
        public_url,
        tls_cert,
        tls_key,
        control_plane_only,
        vmm_binary,
        cpu_allocation_ratio,
        volume_pvs,
        volume_pv_size_gb,
    } = args.command;
    let vmm_binary = vmm_binary.or_else(|| std::env::var_os("HV_VMM_BINARY").map(PathBuf::from));
    let compute = (!control_plane_only).then(|| {
        let mut c = match vmm_binary {
            Some(vmm_binary) => hv_cloud::ComputeOptions::new(vmm_binary),
            None => hv_cloud::ComputeOptions::beside_exe(),
        };
        c.cpu_allocation_ratio = cpu_allocation_ratio;
        c.volume_pvs = volume_pvs;
        c.volume_pv_size = volume_pv_size_gb.map(|g| g << 30);
        c
    });
    let opts = hv_cloud::Options {
        state_dir,
        listen,
        database,
        public_url,
        tls: tls_cert.zip(tls_key),
        admin_password: std::env::var("HV_ADMIN_PASSWORD").unwrap_or_default(),
        compute,
    };
    match hv_cloud::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("hv-cloud: error: {e}");
            ExitCode::FAILURE
        }
    }
}
