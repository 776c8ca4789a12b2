//! `hv-vmm`: one VM per process behind Cloud Hypervisor's REST API on a Unix socket.
//!
//! ```text
//! hv-vmm --api-socket path=/run/vm1.sock                       # wait for vm.create
//! hv-vmm --api-socket /run/vm1.sock --kernel K --cmdline C \
//!     --cpus boot=2 --memory size=256M --disk path=D,image_type=qcow2 \
//!     --net tap=tap0 --serial file=/tmp/vm1.serial           # create and boot at once
//! ```
//!
//! A thin shell over the `hv-vmm` crate: parse the flags into the API's `VmConfig`, install the
//! logger, start the API thread, wait for `vmm.shutdown` or the guest's end. Exit code 0 for a
//! requested shutdown or a guest power-off, 1 for a guest crash or a failure, 2 for bad flags.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hv::core::seccomp::{self, SeccompMode};
use hv::vmm::config::{ConsoleConfig, PayloadConfig, VmConfig};
use hv::vmm::{cli, server, Vmm};

/// Runs one VM behind Cloud Hypervisor's REST API.
#[derive(Parser, Debug)]
#[command(name = "hv-vmm", version, about)]
struct Args {
    /// The API socket: `path=S` or a bare path.
    #[arg(long, value_parser = cli::parse_api_socket)]
    api_socket: Option<PathBuf>,
    /// The kernel (bzImage, ELF vmlinux or PVH ELF); with it the VM is created and booted.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// An initramfs.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// `boot=N[,max=N]`.
    #[arg(long, value_parser = cli::parse_cpus)]
    cpus: Option<hv::vmm::config::CpusConfig>,
    /// `size=64M[,shared=on][,hugepages=on][,hugepage_size=2M][,mergeable=on][,thp=off]`.
    #[arg(long, value_parser = cli::parse_memory)]
    memory: Option<hv::vmm::config::MemoryConfig>,
    /// `path=P[,readonly=on][,direct=on][,image_type=raw|qcow2][,id=I][,serial=S]` (repeatable).
    #[arg(long, value_parser = cli::parse_disk, num_args = 1..)]
    disk: Vec<hv::vmm::config::DiskConfig>,
    /// `tap=T[,mac=M][,num_queues=N][,id=I]` (repeatable).
    #[arg(long, value_parser = cli::parse_net, num_args = 1..)]
    net: Vec<hv::vmm::config::NetConfig>,
    /// `off`, `null`, `pty`, `tty`, `file=F` or `socket=S` (default null). A pty's path is
    /// logged (`-v`) and shown by `vm.info` in `serial.file`.
    #[arg(long, value_parser = |s: &str| cli::parse_console("serial", s))]
    serial: Option<ConsoleConfig>,
    /// The virtio console: only `off` (hv has none).
    #[arg(long, value_parser = |s: &str| cli::parse_console("console", s))]
    console: Option<ConsoleConfig>,
    /// `source_url=file:///DIR[,prefault=on][,resume=on]`: restore a snapshot (paused, unless
    /// `resume=on`) instead of booting.
    #[arg(long, value_parser = cli::parse_restore, conflicts_with = "kernel")]
    restore: Option<hv::vmm::api::RestoreConfig>,
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Write the log here instead of standard error.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// `true` (default): a seccomp filter on every thread; `false`: none; `log`: the kernel
    /// logs forbidden calls instead.
    #[arg(long, value_parser = cli::parse_seccomp, default_value = "true")]
    seccomp: SeccompMode,
}

fn install_logger(args: &Args) -> Result<(), String> {
    let level = match args.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let mut b = env_logger::Builder::new();
    b.filter_level(level).parse_default_env();
    if let Some(path) = &args.log_file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("--log-file {}: {e}", path.display()))?;
        b.target(env_logger::Target::Pipe(Box::new(file)));
    }
    b.try_init().map_err(|e| e.to_string())
}

/// The VM the flags describe, if they name a kernel.
fn config_from(args: &Args) -> Option<VmConfig> {
    let kernel = args.kernel.clone()?;
    let mut c = VmConfig::with_kernel(kernel);
    c.payload = PayloadConfig {
        kernel: c.payload.kernel,
        cmdline: args.cmdline.clone(),
        initramfs: args.initramfs.clone(),
        ..Default::default()
    };
    if let Some(cpus) = &args.cpus {
        c.cpus = cpus.clone();
    }
    if let Some(memory) = &args.memory {
        c.memory = memory.clone();
    }
    c.disks = (!args.disk.is_empty()).then(|| args.disk.clone());
    c.net = (!args.net.is_empty()).then(|| args.net.clone());
    if let Some(serial) = &args.serial {
        c.serial = serial.clone();
    }
    if let Some(console) = &args.console {
        c.console = console.clone();
    }
    Some(c)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = install_logger(&args) {
        eprintln!("hv-vmm: {e}");
        return ExitCode::from(2);
    }
    let config = config_from(&args);
    if config.is_none() && args.restore.is_none() && args.api_socket.is_none() {
        log::error!("nothing to do: give --kernel to boot a VM, or --api-socket to wait for one");
        return ExitCode::from(2);
    }
    // The main thread's filter covers building and controlling the VM and serving the API;
    // every thread started from here on inherits it (the API thread, its runtime's threads,
    // the VM's vCPU and device threads, which add their own narrower filters on top). The
    // API thread's tokio runtime also makes a socketpair for its signal driver (tokio's
    // `signal` feature is on in this binary).
    if let Err(e) = seccomp::install_main_thread_filter(args.seccomp, &[nix::libc::SYS_socketpair])
    {
        log::error!("{e}");
        return ExitCode::FAILURE;
    }
    let vmm = Arc::new(Vmm::with_seccomp(args.seccomp));
    if let Some(config) = config {
        let mut manager = vmm.manager();
        let booted = manager.create(config).and_then(|()| manager.boot());
        drop(manager);
        if let Err(e) = booted {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(r) = &args.restore {
        // The URL was checked by the flag's parser.
        let dir = hv::vmm::urls::snapshot_dir(&r.source_url).unwrap_or_default();
        let restored =
            vmm.manager().restore(&dir, r.prefault.unwrap_or(false), r.resume.unwrap_or(false));
        if let Err(e) = restored {
            log::error!("--restore {}: {e}", r.source_url);
            return ExitCode::FAILURE;
        }
    }
    let api = match &args.api_socket {
        // The API thread inherits the main thread's filter (it builds VMs too).
        Some(path) => match server::spawn(path, vmm.clone(), None) {
            Ok(api) => {
                log::info!("API listening on {}", path.display());
                Some(api)
            }
            Err(e) => {
                log::error!("{e}");
                vmm.manager().shutdown_vmm();
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let exit = vmm.wait_exit();
    if let Some(api) = api {
        api.stop(Duration::from_secs(1));
    }
    vmm.manager().shutdown_vmm();
    if let Some(v) = seccomp::last_violation() {
        log::error!("a thread made {v}, which its seccomp filter forbids");
    }
    ExitCode::from(exit.code())
}
