//! Shared helpers for hv tests: prerequisite checks that skip locally and fail loudly in CI,
//! the test guest, the guest kit (kernels, initramfs), network namespaces, and split
//! virtqueues built by hand in guest memory ([`virtq`]).
//!
//! A test that needs KVM, root or a guest kernel starts with [`require!`]:
//!
//! ```no_run
//! # fn t() {
//! hv_test_support::require!(hv_test_support::have_kvm(), "/dev/kvm is not usable");
//! let Some(kernel) = hv_test_support::mini_kernel() else {
//!     hv_test_support::require!(false, hv_test_support::KIT_MISSING);
//!     return;
//! };
//! # let _ = kernel;
//! # }
//! ```
//!
//! The test guest ([`test_guest`]) is built from source on first use; the guest kit (Linux
//! kernels and an initramfs) is made by `guests/kit.sh`, which tests never run themselves
//! (it takes minutes and installs packages).

use std::path::PathBuf;

pub mod netns;
pub mod postgres;
pub mod state_dir;
pub mod virtq;

mod guest;

pub use guest::{
    blk_pattern, check_dirty_transcript, dirty_rounds, hvtest_lines, test_guest, whole_lines,
    HVTEST_PREFIX,
};

/// True when running under CI (`CI=true`): missing prerequisites are failures there.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Decides what to do about a prerequisite: `true` when it is met; otherwise panics in CI and
/// prints a skip notice (returning `false`) elsewhere.
pub fn check(met: bool, what: &str) -> bool {
    if met {
        return true;
    }
    if in_ci() {
        panic!("prerequisite missing in CI: {what}");
    }
    eprintln!("SKIPPED: prerequisite missing: {what}");
    false
}

/// Returns from the calling test when a prerequisite is not met (after [`check`]).
#[macro_export]
macro_rules! require {
    ($met:expr, $what:expr) => {
        if !$crate::check($met, $what) {
            return;
        }
    };
}

/// True when `/dev/kvm` can be opened read-write.
pub fn have_kvm() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// True when the process runs as root (needed for network namespaces, TAP, loop devices).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// The workspace root (where the top `Cargo.toml` is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// The guest kit cache directory (`guests/cache`), where the kit script puts kernels and
/// initramfs images.
pub fn kit_dir() -> PathBuf {
    std::env::var_os("HV_GUEST_KIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("guests/cache"))
}

/// A file from the guest kit, if the kit script has made it.
pub fn kit_file(name: &str) -> Option<PathBuf> {
    let p = kit_dir().join(name);
    p.is_file().then_some(p)
}

/// What to say when a kit file is missing (for [`require!`]).
pub const KIT_MISSING: &str = "guest kit missing: run guests/kit.sh";

/// Debian's stock cloud kernel (`vmlinuz-debian`, a bzImage), if the kit has it.
pub fn stock_kernel() -> Option<PathBuf> {
    kit_file("vmlinuz-debian")
}

/// The minimal kernel built from `linux-source-6.1` (`vmlinux-mini`, an ELF with a PVH
/// entry, everything built in), if the kit has it.
pub fn mini_kernel() -> Option<PathBuf> {
    kit_file("vmlinux-mini")
}

/// The uncompressed busybox initramfs (`initramfs.cpio`), if the kit has it.
pub fn initramfs() -> Option<PathBuf> {
    kit_file("initramfs.cpio")
}

/// The initramfs with only `/dev/console` and a 1 KB `/init` that prints `HV-INIT-OK` and powers
/// off (`initramfs-tiny.cpio`), if the kit has it. On PVM hosts it unpacks at once, where the
/// busybox one costs the emulated kernel about 50 s.
pub fn tiny_initramfs() -> Option<PathBuf> {
    kit_file("initramfs-tiny.cpio")
}

/// The busybox initramfs plus the stock kernel's virtio modules, which its `/init` loads
/// (`initramfs-debian.cpio`), if the kit has it.
pub fn debian_initramfs() -> Option<PathBuf> {
    kit_file("initramfs-debian.cpio")
}

/// The stock kernel's virtio modules (`debian-modules/<version>/kernel/...`), if the kit has
/// them.
pub fn debian_modules() -> Option<PathBuf> {
    let p = kit_dir().join("debian-modules");
    p.is_dir().then_some(p)
}

/// Every thread of this process as (name, seccomp mode from `/proc/self/task/*/status`:
/// 0 none, 1 strict, 2 filter).
pub fn thread_seccomp_modes() -> Vec<(String, u8)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let field = |key: &str| {
            status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_owned())
        };
        let name = field("Name:").unwrap_or_default();
        let mode = field("Seccomp:").and_then(|v| v.parse().ok()).unwrap_or(0);
        out.push((name, mode));
    }
    out
}

/// The `hv-vmm` binary for tests that run VMs through hv-host: `$HV_VMM_BINARY`, else the one
/// next to the test executable's target directory (`target/<profile>/hv-vmm`), built once per
/// process with `cargo build --bin hv-vmm` when it is not there yet.
///
/// # Panics
/// When the build fails, with cargo's output.
pub fn vmm_binary() -> PathBuf {
    static VMM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VMM.get_or_init(|| {
        if let Some(p) = std::env::var_os("HV_VMM_BINARY") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/<test> -> target/<profile>/hv-vmm
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
        let bin = profile_dir.join("hv-vmm");
        if !bin.is_file() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let target_dir = profile_dir.parent().expect("target dir");
            let out = std::process::Command::new(cargo)
                .current_dir(workspace_root())
                .args(["build", "--bin", "hv-vmm", "--target-dir"])
                .arg(target_dir)
                .output()
                .expect("run cargo build --bin hv-vmm");
            assert!(
                out.status.success(),
                "cargo build --bin hv-vmm failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(bin.is_file(), "{} is missing", bin.display());
        bin
    })
    .clone()
}
