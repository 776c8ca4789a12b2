//! hvctl's pool and volume verbs end to end through hvd: virsh's verbs, flags, sizes and
//! output, one-line errors with exit status 1 (usage errors: clap's, status 2). Each test runs
//! its own hvd on a temporary state directory and hvctl against it, as a user would.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

#[path = "../crates/hv-storage/tests/support/pattern.rs"]
mod pattern_impl;
use pattern_impl::pattern;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn have_qemu_img() -> bool {
    Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().expect("run qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// An hvd on a temporary state directory, stopped when dropped.
struct Ctl {
    state: PathBuf,
    hvd: Child,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ctl {
    fn new(state: PathBuf) -> Ctl {
        fs::create_dir_all(&state).unwrap();
        let hvd = Command::new(env!("CARGO_BIN_EXE_hvd"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--log-file")
            .arg(state.join("hvd.log"))
            .spawn()
            .expect("start hvd");
        let sock = state.join("hvd.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "hvd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ctl { state, hvd }
    }

    fn run(&self, args: &[&str]) -> Out {
        let out = Command::new(env!("CARGO_BIN_EXE_hvctl"))
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .output()
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a verb that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.code, 0, "hvctl {args:?} failed: {}", o.stderr);
        assert!(o.stderr.is_empty(), "hvctl {args:?} wrote to stderr: {}", o.stderr);
        o.stdout
    }

    /// Runs a verb that must fail with one `error:` line containing `want`.
    fn fails(&self, args: &[&str], want: &str) {
        let o = self.run(args);
        assert_eq!(o.code, 1, "hvctl {args:?} should fail: {}{}", o.stdout, o.stderr);
        assert_eq!(o.stderr.lines().count(), 1, "one line: {}", o.stderr);
        assert!(o.stderr.starts_with("error: "), "{}", o.stderr);
        assert!(o.stderr.contains(want), "hvctl {args:?}: wanted '{want}' in: {}", o.stderr);
    }

    /// Runs a verb that the command line refuses (status 2, clap's message naming `want`).
    fn usage_error(&self, args: &[&str], want: &str) {
        let o = self.run(args);
        assert_eq!(o.code, 2, "hvctl {args:?} should be refused: {}{}", o.stdout, o.stderr);
        assert!(o.stderr.contains(want), "hvctl {args:?}: wanted '{want}' in: {}", o.stderr);
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        let _ = self.hvd.kill();
        let _ = self.hvd.wait();
    }
}

fn field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .to_string()
}

#[test]
fn dir_pool_verbs() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Ctl::new(tmp.path().join("state"));
    let target = tmp.path().join("images");
    let t = p(&target);
    assert_eq!(
        ctl.ok(&["pool-define-as", "default", "dir", "--target", t]),
        "Pool default defined\n"
    );
    ctl.fails(&["pool-define-as", "default", "dir", "--target", t], "already defined");
    ctl.fails(&["vol-list", "default"], "cannot use volumes of pool 'default': it is inactive");
    assert!(ctl.ok(&["pool-list"]).lines().count() == 3, "inactive pools need --all");
    ctl.ok(&["pool-build", "default"]);
    assert_eq!(ctl.ok(&["pool-start", "default"]), "Pool default started\n");
    let list = ctl.ok(&["pool-list", "--all"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["Name", "State", "Autostart"]);
    assert!(lines[1].chars().all(|c| c == '-'));
    assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["default", "active", "no"]);
    let info = ctl.ok(&["pool-info", "default"]);
    assert_eq!(field(&info, "State"), "running");
    assert!(field(&info, "Capacity").ends_with("iB"));

    assert_eq!(
        ctl.ok(&["vol-create-as", "default", "base", "64M", "--format", "qcow2"]),
        "Vol base created\n"
    );
    ctl.ok(&[
        "vol-create-as",
        "default",
        "vm1",
        "64M",
        "--backing-vol",
        "base",
        "--backing-vol-format",
        "qcow2",
    ]);
    ctl.ok(&["vol-create-as", "default", "raw", "1GiB"]);
    ctl.fails(&["vol-create-as", "default", "raw", "1G"], "already exists");
    ctl.fails(&["vol-create-as", "default", "x", "10X"], "unknown unit");
    ctl.fails(
        &["vol-create-as", "default", "x", "1G", "--format", "vmdk"],
        "unknown volume format",
    );
    ctl.usage_error(&["vol-create-as", "default", "x", "1G", "--bogus"], "'--bogus'");
    let vols = ctl.ok(&["vol-list", "default"]);
    assert!(vols.contains(&format!(" vm1    {}", p(&target.join("vm1")))), "{vols}");
    let info = ctl.ok(&["vol-info", "vm1", "--pool", "default"]);
    assert_eq!(field(&info, "Type"), "file");
    assert_eq!(field(&info, "Format"), "qcow2");
    assert_eq!(field(&info, "Capacity"), "64.00 MiB");
    assert_eq!(field(&info, "Backing"), p(&target.join("base")));
    assert_eq!(field(&ctl.ok(&["vol-info", "raw", "--pool", "default"]), "Allocation"), "0.00 B");
    assert_eq!(ctl.ok(&["vol-path", "vm1", "--pool", "default"]).trim(), p(&target.join("vm1")));

    // Upload into the base, download through the overlay.
    let data = pattern(3_000_000, 9);
    let up = tmp.path().join("up");
    let down = tmp.path().join("down");
    fs::write(&up, &data).unwrap();
    ctl.ok(&["vol-upload", "base", p(&up), "--pool", "default"]);
    ctl.ok(&["vol-download", "vm1", p(&down), "--pool", "default"]);
    let got = fs::read(&down).unwrap();
    assert_eq!(got.len(), 64 << 20);
    assert!(got[..data.len()] == data[..]);

    ctl.ok(&["vol-resize", "vm1", "128M", "--pool", "default"]);
    ctl.ok(&["vol-resize", "raw", "+1G", "--delta", "--pool", "default"]);
    assert_eq!(field(&ctl.ok(&["vol-info", "raw", "--pool", "default"]), "Capacity"), "2.00 GiB");
    ctl.fails(&["vol-resize", "raw", "1M", "--pool", "default"], "needs the shrink flag");
    ctl.ok(&["vol-resize", "raw", "1M", "--shrink", "--pool", "default"]);
    let cap = |ctl: &Ctl| field(&ctl.ok(&["vol-info", "raw", "--pool", "default"]), "Capacity");
    // As virsh: --delta --shrink subtracts (it used to add).
    ctl.ok(&["vol-resize", "raw", "32M", "--delta", "--pool", "default"]);
    ctl.ok(&["vol-resize", "raw", "16M", "--delta", "--shrink", "--pool", "default"]);
    assert_eq!(cap(&ctl), "17.00 MiB");
    ctl.ok(&["vol-resize", "raw", "-8M", "--delta", "--shrink", "--pool", "default"]);
    assert_eq!(cap(&ctl), "9.00 MiB");
    // Fractions of a byte are refused, as virsh refuses them.
    for bad in ["1.5", "1.9"] {
        ctl.fails(&["vol-create-as", "default", "frac", bad], "whole number of bytes");
    }
    assert_eq!(
        ctl.ok(&["vol-clone", "vm1", "vm2", "--pool", "default"]),
        "Vol vm2 cloned from vm1\n"
    );
    ctl.ok(&["vol-wipe", "vm1", "--pool", "default"]);
    if have_qemu_img() {
        for v in ["base", "vm1", "vm2"] {
            qemu_img(&["check", p(&target.join(v))]);
        }
    }
    ctl.fails(&["vol-delete", "base", "--pool", "default"], "backing volume of 'vm1'");
    ctl.fails(&["vol-info", "nope", "--pool", "default"], "not found");
    ctl.usage_error(&["vol-info", "vm1"], "--pool <POOL>");
    ctl.fails(&["pool-delete", "default"], "it is running");
    ctl.ok(&["pool-destroy", "default"]);
    ctl.fails(&["pool-delete", "default"], "not empty");
    ctl.ok(&["pool-start", "default"]);
    for v in ["vm1", "vm2", "base", "raw"] {
        assert_eq!(ctl.ok(&["vol-delete", v, "--pool", "default"]), format!("Vol {v} deleted\n"));
    }
    ctl.ok(&["pool-destroy", "default"]);
    ctl.ok(&["pool-delete", "default"]);
    assert!(!target.exists());
    assert_eq!(ctl.ok(&["pool-undefine", "default"]), "Pool default has been undefined\n");
    ctl.fails(&["pool-info", "default"], "not defined");
    ctl.usage_error(&["pool-frobnicate"], "unrecognized subcommand 'pool-frobnicate'");
}

#[test]
fn logical_pool_verbs() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Ctl::new(tmp.path().join("state"));
    let pvs: Vec<PathBuf> = (0..2).map(|i| tmp.path().join(format!("pv{i}"))).collect();
    for pv in &pvs {
        fs::File::create(pv).unwrap().set_len(64 << 20).unwrap();
    }
    ctl.fails(&["pool-define-as", "vg", "logical"], "at least one --source-dev");
    ctl.ok(&[
        "pool-define-as",
        "vg",
        "logical",
        "--source-dev",
        p(&pvs[0]),
        "--source-dev",
        p(&pvs[1]),
    ]);
    ctl.ok(&["pool-build", "vg"]);
    ctl.fails(&["pool-build", "vg"], "already a PV of this volume group");
    ctl.ok(&["pool-start", "vg"]);
    let info = ctl.ok(&["pool-info", "vg"]);
    assert_eq!(field(&info, "Type"), "logical");
    assert_eq!(field(&info, "Capacity"), "120.00 MiB");
    ctl.ok(&["vol-create-as", "vg", "lv0", "100M"]);
    ctl.fails(&["vol-create-as", "vg", "lv1", "100M"], "not enough space");
    ctl.fails(&["vol-create-as", "vg", "q", "1M", "--format", "qcow2"], "logical volumes are raw");
    let vi = ctl.ok(&["vol-info", "lv0", "--pool", "vg"]);
    assert_eq!(field(&vi, "Type"), "block");
    assert_eq!(field(&vi, "Capacity"), "100.00 MiB");
    ctl.fails(&["vol-path", "lv0", "--pool", "vg"], "has no host path");
    assert!(ctl.ok(&["vol-list", "vg"]).contains(" lv0    vg/lv0"));
    let data = pattern(5_000_000, 4);
    let up = tmp.path().join("up");
    fs::write(&up, &data).unwrap();
    ctl.ok(&["vol-upload", "lv0", p(&up), "--pool", "vg"]);
    ctl.ok(&["vol-resize", "lv0", "8M", "--shrink", "--pool", "vg"]);
    ctl.ok(&["vol-create-as", "vg", "snap", "8M", "--backing-vol", "lv0"]);
    let down = tmp.path().join("down");
    ctl.ok(&["vol-download", "snap", p(&down), "--pool", "vg"]);
    assert!(fs::read(&down).unwrap()[..data.len()] == data[..]);
    ctl.ok(&["vol-wipe", "lv0", "--pool", "vg"]);
    ctl.ok(&["vol-download", "lv0", p(&down), "--pool", "vg"]);
    assert!(fs::read(&down).unwrap().iter().all(|&b| b == 0));
    // A second pool cannot take the same PVs.
    ctl.fails(
        &["pool-define-as", "vg2", "logical", "--source-dev", p(&pvs[1])],
        "already used by pool 'vg'",
    );
    ctl.ok(&["pool-destroy", "vg"]);
    ctl.fails(&["pool-delete", "vg"], "still holds 2 logical volume(s)");
    ctl.fails(&["pool-undefine", "vg2"], "not defined");
    ctl.ok(&["pool-undefine", "vg"]);
}
