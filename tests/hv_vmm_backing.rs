//! `hv-vmm --disk ...,image_type=qcow2,backing_files=on` (Cloud Hypervisor's option): a guest
//! boots on a qcow2 overlay, reads its base's bytes through it and writes into the overlay
//! only; the chain is confined to the overlay's own directory; without `backing_files` a
//! qcow2 with a backing file does not open.

mod vmm_process;

use std::path::Path;
use std::process::Command;

use vmm_process::{can_run_guests, VmmProcess};

const MIB: u64 = 1 << 20;

fn have_qemu_img() -> bool {
    Command::new("qemu-img").arg("--version").output().is_ok()
}

/// `qemu-img create -f qcow2 -b BACKING -F FMT OVERLAY` (the name is stored as given).
fn overlay(backing: &str, fmt: &str, overlay: &Path) {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b", backing, "-F", fmt])
        .arg(overlay)
        .output()
        .expect("qemu-img create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs the test guest on one disk; the exit code, the guest's lines and the log.
fn boot(disk_flag: &str, cmdline: &str) -> (Option<i32>, Vec<String>, String) {
    let (vmm, status) = VmmProcess::run_with_disk(disk_flag, cmdline);
    (status.code(), vmm.hvtest_lines(), vmm.log_text())
}

/// The overlay's guest-visible bytes `[0, len)`, as qemu-img reads them through its chain.
fn read_through(overlay: &Path, len: usize) -> Vec<u8> {
    let raw = overlay.with_extension("converted");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(overlay)
        .arg(&raw)
        .output()
        .expect("qemu-img convert");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut bytes = std::fs::read(&raw).expect("converted");
    bytes.truncate(len);
    bytes
}

#[test]
fn a_guest_reads_the_base_through_an_overlay_and_writes_only_the_overlay() {
    if !can_run_guests() {
        return;
    }
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().expect("temp dir");
    // The base: 16 MiB raw, a known pattern in its first 2 MiB (seed 99).
    let base = dir.path().join("base.raw");
    let base_data = hv_test_support::blk_pattern(99, 0, 4096);
    let mut bytes = base_data.clone();
    bytes.resize(16 * MIB as usize, 0);
    std::fs::write(&base, &bytes).expect("base");
    let top = dir.path().join("vm1.qcow2");
    overlay("base.raw", "raw", &top);

    // The guest writes across the end of the base's data: its partial clusters are filled
    // from the base (read through the chain), the rest of the disk still reads as the base.
    let flag = format!("path={},image_type=qcow2,backing_files=on", top.display());
    let (code, l, log) = boot(&flag, "test=blk sector=4000 count=160 seed=5");
    assert_eq!(code, Some(0), "log:\n{log}");
    assert!(l.contains(&"blk capacity=32768".to_string()), "{l:?}");
    assert!(l.contains(&"blk verify ok".to_string()), "{l:?}");

    // The overlay reads as base + the guest's bytes; the base file did not change.
    let len = 6000 * 512;
    let mut want = base_data.clone();
    want.resize(len, 0);
    want[4000 * 512..4160 * 512].copy_from_slice(&hv_test_support::blk_pattern(5, 4000, 160));
    assert!(read_through(&top, len) == want, "the overlay is not base + the guest's writes");
    assert!(std::fs::read(&base).expect("base") == bytes, "the guest's writes reached the base");
    // Only the touched clusters live in the overlay.
    let allocated = std::fs::metadata(&top).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    assert!(allocated.expect("overlay") < 2 * MIB, "the overlay holds more than its writes");
    let check = Command::new("qemu-img").arg("check").arg(&top).output().expect("qemu-img check");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
}

#[test]
fn backing_chains_open_only_with_backing_files_and_only_next_to_the_overlay() {
    if !can_run_guests() {
        return;
    }
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().expect("temp dir");
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![7u8; MIB as usize]).expect("base");
    let top = dir.path().join("vm1.qcow2");
    overlay("base.raw", "raw", &top);

    // backing_files off (Cloud Hypervisor's default): refused, the backing file named.
    let (code, l, log) =
        boot(&format!("path={},image_type=qcow2", top.display()), "test=blk count=1");
    assert_ne!(code, Some(0), "{l:?}");
    assert!(log.contains("backing file") && log.contains("base.raw"), "log:\n{log}");
    assert!(!l.iter().any(|l| l.starts_with("blk")), "the guest saw the disk: {l:?}");

    // backing_files on, but the backing file elsewhere: by '..', by absolute path, or through a
    // symlink next to the overlay that leads out of its directory.
    let sub = dir.path().join("instances");
    std::fs::create_dir(&sub).expect("subdir");
    let up = sub.join("up.qcow2");
    overlay("../base.raw", "raw", &up);
    let abs = sub.join("abs.qcow2");
    overlay(base.to_str().expect("utf-8"), "raw", &abs);
    std::os::unix::fs::symlink(&base, sub.join("link.raw")).expect("symlink");
    let via_link = sub.join("link.qcow2");
    overlay("link.raw", "raw", &via_link);
    for disk in [&up, &abs, &via_link] {
        let flag = format!("path={},image_type=qcow2,backing_files=on", disk.display());
        let (code, l, log) = boot(&flag, "test=blk count=1");
        assert_ne!(code, Some(0), "{}: {l:?}", disk.display());
        assert!(log.contains("backing file"), "{}: log:\n{log}", disk.display());
        assert!(!l.iter().any(|l| l.starts_with("blk")), "{}: {l:?}", disk.display());
    }
    // A loop (an overlay backed by itself) is refused too.
    let lp = sub.join("loop.qcow2");
    overlay("../base.raw", "raw", &lp);
    let out = Command::new("qemu-img")
        .args(["rebase", "-u", "-f", "qcow2", "-b", "loop.qcow2", "-F", "qcow2"])
        .arg(&lp)
        .output()
        .expect("qemu-img rebase");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let flag = format!("path={},image_type=qcow2,backing_files=on", lp.display());
    let (code, _, log) = boot(&flag, "test=blk count=1");
    assert_ne!(code, Some(0));
    assert!(log.contains("already in its chain"), "log:\n{log}");
}
