//! The test guest (`guests/test-guest`): building it once per test process, and reading what it
//! says.
//!
//! The guest is a PVH ELF; every line it prints on COM1 starts with `hvtest: ` (the protocol is
//! in `guests/README.md`). A VMM test boots [`test_guest()`] with a command line such as
//! `test=pio` and checks the lines:
//!
//! ```no_run
//! let elf = hv_test_support::test_guest();
//! # let serial_output = String::new();
//! // ... boot `elf` with the command line "test=pio", collect its serial output ...
//! let lines = hv_test_support::hvtest_lines(&serial_output);
//! assert!(lines.contains(&"pio read 0x12345678"));
//! assert_eq!(lines.last(), Some(&"done"));
//! ```

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::workspace_root;

/// The prefix of every line the test guest prints.
pub const HVTEST_PREFIX: &str = "hvtest: ";

/// The target the guest is built for (set in its `.cargo/config.toml`).
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds the test guest (release) once per process and returns the path of its ELF.
///
/// Runs `cargo build --release` in `guests/test-guest`, so that its own `.cargo/config.toml`
/// (freestanding link flags) applies, into `<workspace>/target/test-guest`. Variables an outer
/// cargo or nextest sets (`RUSTFLAGS`, `CARGO_*`, jobserver flags...) are removed so they cannot
/// override the guest's flags. Parallel test processes are serialised by cargo's own lock on
/// the target directory; after the first build, the others find it fresh.
///
/// # Panics
/// When the build fails, with cargo's output.
pub fn test_guest() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(build_test_guest).clone()
}

/// Whether an environment variable of the calling process must not reach the guest's build.
fn leaks_into_build(key: &OsStr) -> bool {
    let Some(key) = key.to_str() else { return false };
    const KEEP: &[&str] =
        &["CARGO_HOME", "CARGO_NET_", "CARGO_HTTP_", "CARGO_REGISTR", "CARGO_TERM_"];
    const DROP: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "MAKEFLAGS",
        "MFLAGS",
    ];
    if key.starts_with("CARGO") || key.starts_with("__CARGO") {
        // CARGO, CARGO_TARGET_DIR, CARGO_BUILD_*, CARGO_ENCODED_RUSTFLAGS, CARGO_MAKEFLAGS,
        // CARGO_PROFILE_*, CARGO_TARGET_<triple>_*, CARGO_PRIMARY_PACKAGE, CARGO_PKG_*...
        return !KEEP.iter().any(|k| key.starts_with(k));
    }
    DROP.contains(&key)
}

fn build_test_guest() -> PathBuf {
    let root = workspace_root();
    let source = root.join("guests/test-guest");
    let target_dir = root.join("target/test-guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&source).args(["build", "--release", "--target-dir"]).arg(&target_dir);
    for (key, _) in std::env::vars_os() {
        if leaks_into_build(&key) {
            cmd.env_remove(&key);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {}: {e}", source.display()));
    if !out.status.success() {
        panic!(
            "building the test guest in {} failed ({}):\n{}{}",
            source.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let elf = target_dir.join(GUEST_TARGET).join("release/test-guest");
    assert!(elf.is_file(), "cargo built the test guest but {} is missing", elf.display());
    elf
}

/// The whole lines of a serial transcript read while the guest may still be writing: the text
/// up to and including its last newline (the last line may still be arriving).
pub fn whole_lines(serial: &str) -> &str {
    &serial[..serial.rfind('\n').map_or(0, |i| i + 1)]
}

/// The test guest's lines in a serial transcript, without the `hvtest: ` prefix (other output,
/// such as a VMM's or firmware's, is skipped; `\r` is ignored).
pub fn hvtest_lines(serial: &str) -> Vec<&str> {
    serial
        .lines()
        .filter_map(|line| line.trim_end_matches('\r').strip_prefix(HVTEST_PREFIX))
        .collect()
}

/// The round numbers of `test=dirty`'s `dirty round R ok` lines in a serial transcript.
pub fn dirty_rounds(serial: &str) -> Vec<u64> {
    hvtest_lines(serial)
        .iter()
        .filter_map(|l| l.strip_prefix("dirty round ")?.strip_suffix(" ok")?.parse().ok())
        .collect()
}

/// Checks a `test=dirty` transcript that may span snapshots, restores and migrations (each
/// VM appending to the same serial file): no page was ever wrong (no `dirty mismatch`), and
/// the rounds go on one report (`every` rounds) at a time, none lost or repeated. Answers the
/// last round, or why the transcript is wrong.
pub fn check_dirty_transcript(serial: &str, every: u64) -> Result<u64, String> {
    if let Some(bad) = hvtest_lines(serial).iter().find(|l| l.starts_with("dirty mismatch")) {
        return Err(format!("the guest found a bad page: {bad}"));
    }
    let rounds = dirty_rounds(serial);
    for w in rounds.windows(2) {
        if w[1] != w[0] + every {
            return Err(format!("round {} follows round {} (every {every})", w[1], w[0]));
        }
    }
    rounds.last().copied().ok_or_else(|| "no dirty round reported".into())
}

/// The bytes the test guest's `test=blk sector=S count=C seed=N` writes: for each 8-byte word
/// at disk byte `offset`, `pattern_word(seed, offset)` little-endian (the same function as
/// `guests/test-guest/src/virtio/blk.rs`).
pub fn blk_pattern(seed: u64, sector: u64, count: u64) -> Vec<u8> {
    let word = |offset: u64| {
        let mut x = seed ^ offset.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^ (x >> 32)
    };
    (0..count * 64).flat_map(|i| word(sector * 512 + 8 * i).to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_still_arriving_is_left_out() {
        assert_eq!(whole_lines("hvtest: net lease\nhvtest: net ping 10.0."), "hvtest: net lease\n");
        assert_eq!(whole_lines("a\r\nb\n"), "a\r\nb\n");
        assert_eq!(whole_lines("half"), "");
    }

    #[test]
    fn dirty_transcripts_are_checked() {
        let good =
            "hvtest: dirty pages=8 at 0x1000\nhvtest: dirty round 4 ok\nhvtest: dirty round 8 ok\n";
        assert_eq!(check_dirty_transcript(good, 4), Ok(8));
        let gap = "hvtest: dirty round 4 ok\nhvtest: dirty round 12 ok\n";
        assert!(check_dirty_transcript(gap, 4).is_err());
        let bad = "hvtest: dirty round 4 ok\nhvtest: dirty mismatch page 1 word 0 round 5\n";
        assert!(check_dirty_transcript(bad, 4).is_err());
        assert!(check_dirty_transcript("", 4).is_err());
    }

    #[test]
    fn lines_are_filtered_and_stripped() {
        let out = "noise\nhvtest: boot\r\nhvtest: cpus=2\nmore\nhvtest: done\n";
        assert_eq!(hvtest_lines(out), ["boot", "cpus=2", "done"]);
    }

    #[test]
    fn outer_cargo_variables_are_dropped() {
        for key in
            ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET"]
        {
            assert!(leaks_into_build(OsStr::new(key)), "{key}");
        }
        for key in ["CARGO_HOME", "PATH", "HOME", "RUSTUP_TOOLCHAIN", "CARGO_NET_OFFLINE"] {
            assert!(!leaks_into_build(OsStr::new(key)), "{key}");
        }
    }

    /// The guest must build from a test process (where cargo has set RUSTFLAGS-like variables)
    /// and be a PVH ELF; where QEMU and KVM are at hand, it must also run and power off.
    #[test]
    fn test_guest_builds_and_runs_under_qemu() {
        let elf = test_guest();
        let bytes = std::fs::read(&elf).expect("read the test guest");
        assert_eq!(&bytes[..4], b"\x7fELF");
        // The PVH note: namesz 4, descsz 8, type 18, "Xen\0".
        let note =
            [4u32.to_le_bytes(), 8u32.to_le_bytes(), 18u32.to_le_bytes(), *b"Xen\0"].concat();
        assert!(bytes.windows(note.len()).any(|w| w == note), "no PVH note in {}", elf.display());
        assert_eq!(test_guest(), elf, "built once per process");

        let qemu = "qemu-system-x86_64";
        let have_qemu = Command::new(qemu).arg("--version").output().is_ok();
        if !crate::check(
            have_qemu && crate::have_kvm(),
            "the QEMU run needs qemu-system-x86_64 and /dev/kvm",
        ) {
            return;
        }
        let out = Command::new("timeout")
            .args(["60", qemu, "-M", "microvm,acpi=on", "-accel", "kvm", "-m", "64", "-smp", "2"])
            .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel"])
            .arg(&elf)
            .args(["-append", "test=smp"])
            .output()
            .expect("run qemu");
        let serial = String::from_utf8_lossy(&out.stdout);
        let lines = hvtest_lines(&serial);
        assert_eq!(lines.first(), Some(&"boot"), "{serial}");
        assert!(lines.contains(&"cmdline=test=smp"), "{serial}");
        assert!(lines.contains(&"cpus=2"), "{serial}");
        assert!(lines.contains(&"smp ok 2"), "{serial}");
        assert_eq!(lines.last(), Some(&"done"), "{serial}");
        assert!(out.status.success(), "qemu did not power off: {}\n{serial}", out.status);
    }
}
