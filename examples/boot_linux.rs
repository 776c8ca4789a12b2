//! Boots a kernel and streams its serial console to stdout.
//!
//! ```text
//! cargo run --release --example boot_linux -- --kernel K [--initrd I] [--cmdline "C"] \
//!     [--vcpus N] [--mem-mib M] [--timeout-secs S] \
//!     [--net tap=NAME[,mac=MAC][,queues=N]]... [--net network=NAME[,...]]... [--state-dir DIR] \
//!     [--disk PATH[,ro][,format=raw|qcow2|auto][,allow=PATH]...[,serial=S]]... \
//!     [--seccomp trap|log|off]
//! ```
//!
//! Each `--disk` adds a virtio-blk disk, raw unless `format=` says otherwise; backing files
//! open only where `allow=` says (see `boot_linux/disk.rs`).
//! Each `--net` adds a virtio-net NIC (see `boot_linux/net.rs`).
//!
//! Every thread is confined by a seccomp filter (`--seccomp trap`, the default): the vCPU and
//! device threads by hv-core's, this main thread by the main-thread filter once the VM is
//! built. A forbidden call ends the VM as crashed and names the call. `--seccomp log` lets
//! such calls through and has the kernel log them; `--seccomp off` (or `--no-seccomp`)
//! installs no filter, for debugging.
//!
//! Exits 0 when the guest powers off; otherwise prints the reason on stderr and exits 1
//! (2 for bad arguments or a VM that cannot be built).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hv::core::seccomp::{self, SeccompMode};
use hv::core::{ExitReason, VmBuilder};

#[path = "boot_linux/disk.rs"]
mod disk;
#[path = "boot_linux/net.rs"]
mod net;

struct Args {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    vcpus: usize,
    mem_mib: u64,
    timeout: Option<Duration>,
    nets: Vec<net::NetArg>,
    disks: Vec<disk::DiskArg>,
    state_dir: PathBuf,
    seccomp: SeccompMode,
}

const USAGE: &str = "usage: boot_linux --kernel K [--initrd I] [--cmdline C] [--vcpus N] \
                     [--mem-mib M] [--timeout-secs S] [--net tap=NAME[,mac=MAC]] \
                     [--net network=NAME[,mac=MAC]] [--state-dir DIR] \
                     [--disk PATH[,ro][,format=raw|qcow2|auto][,allow=PATH]...[,serial=S]] \
                     [--seccomp trap|log|off] [--no-seccomp]";

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut kernel = None;
    let mut a = Args {
        kernel: PathBuf::new(),
        initrd: None,
        cmdline: "console=ttyS0 reboot=k panic=-1".into(),
        vcpus: 1,
        mem_mib: 256,
        timeout: None,
        nets: Vec::new(),
        disks: Vec::new(),
        state_dir: PathBuf::from("/var/lib/hv"),
        seccomp: SeccompMode::Trap,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initrd" => a.initrd = Some(PathBuf::from(value()?)),
            "--cmdline" => a.cmdline = value()?,
            "--vcpus" => a.vcpus = value()?.parse().map_err(|e| format!("--vcpus: {e}"))?,
            "--mem-mib" => a.mem_mib = value()?.parse().map_err(|e| format!("--mem-mib: {e}"))?,
            "--timeout-secs" => {
                let s: u64 = value()?.parse().map_err(|e| format!("--timeout-secs: {e}"))?;
                a.timeout = Some(Duration::from_secs(s));
            }
            "--net" => a.nets.push(net::parse_net(&value()?)?),
            "--disk" => a.disks.push(disk::parse_disk(&value()?)?),
            "--state-dir" => a.state_dir = PathBuf::from(value()?),
            "--seccomp" => {
                a.seccomp = match value()?.as_str() {
                    "trap" => SeccompMode::Trap,
                    "log" => SeccompMode::Log,
                    "off" => SeccompMode::Off,
                    other => return Err(format!("--seccomp: {other:?} is not trap, log or off")),
                }
            }
            "--no-seccomp" => a.seccomp = SeccompMode::Off,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    a.kernel = kernel.ok_or_else(|| format!("--kernel is required\n{USAGE}"))?;
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("boot_linux: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = VmBuilder::new()
        .kernel(&args.kernel)
        .cmdline(&args.cmdline)
        .vcpus(args.vcpus)
        .memory_mib(args.mem_mib)
        .serial_output(std::io::stdout())
        .seccomp(args.seccomp);
    if let Some(initrd) = &args.initrd {
        builder = builder.initrd(initrd);
    }
    match disk::make_disks(&args.disks) {
        Ok(disks) => {
            for d in disks {
                eprintln!("boot_linux: {}", d.summary);
                builder = builder.virtio_device(Box::new(d.device));
            }
        }
        Err(e) => {
            eprintln!("boot_linux: {e}");
            return ExitCode::from(2);
        }
    }
    let nics = match net::make_nics(&args.nets, &args.state_dir) {
        Ok(nics) => nics,
        Err(e) => {
            eprintln!("boot_linux: {e}");
            return ExitCode::from(2);
        }
    };
    let mut nic_handles = Vec::new();
    for nic in nics {
        eprintln!("boot_linux: {}", nic.summary);
        builder = builder.virtio_device(Box::new(nic.device));
        nic_handles.push(nic.handle);
    }
    let vm = match builder.build() {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("boot_linux: cannot build the VM: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("boot_linux: host {:?}, cmdline: {}", vm.host(), vm.cmdline());
    // From here on this thread only starts, watches and stops the VM.
    if let Err(e) = seccomp::install_main_thread_filter(args.seccomp, &[]) {
        eprintln!("boot_linux: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = vm.start() {
        eprintln!("boot_linux: cannot start the VM: {e}");
        return ExitCode::from(2);
    }
    let reason = match args.timeout {
        Some(t) => match vm.wait_timeout(t) {
            Some(r) => r,
            None => {
                eprintln!("boot_linux: timed out after {}s", t.as_secs());
                if vm.pause().is_ok() {
                    for (i, r) in vm.vcpu_registers().unwrap_or_default().iter().enumerate() {
                        if let Some((regs, _)) = r {
                            eprintln!(
                                "boot_linux: vCPU {i} at rip={:#x} rsp={:#x}",
                                regs.rip, regs.rsp
                            );
                        }
                    }
                }
                let _ = vm.kill();
                let _ = vm.wait();
                return ExitCode::FAILURE;
            }
        },
        None => match vm.wait() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("boot_linux: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    eprintln!("boot_linux: guest {reason}");
    for (i, h) in nic_handles.iter().enumerate() {
        eprintln!("boot_linux: net{i}: {} pair(s) in use, {:?}", h.active_pairs(), h.stats());
    }
    match reason {
        ExitReason::PoweredOff => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
