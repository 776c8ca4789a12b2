//! VM state through the `hv-vmm` binary, as a user drives it: the memory-checking test guest
//! (`test=dirty`: rewrites pages in a loop, checks each before rewriting it) is snapshotted
//! and restored in a new process (`--restore`, and `vm.restore` on a bare process), migrated
//! live between processes over `unix:` and `tcp:`, and a restored VM migrates again. Every VM
//! appends to the one serial file, so its transcript must show the rounds going on one report
//! at a time with no page ever wrong. Bad snapshots are refused with a typed error before any
//! vCPU runs.

mod vmm_process;

use std::path::Path;

use hv::vmm::client::Client;
use vmm_process::{
    can_run_guests, dirty_config, get, migrate, put, vm_state, wait_dirty_round, VmmProcess,
    DIRTY_EVERY,
};

/// Starts a bare process and boots the dirty guest in it; waits for its first reports.
fn dirty_vmm(pages: u64) -> VmmProcess {
    let vmm = VmmProcess::spawn(&[], true);
    let c = vmm.client();
    let r = put(&c, "vm.create", Some(&dirty_config(pages, 64, &vmm.serial)));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(put(&c, "vm.boot", None).status, 204);
    wait_dirty_round(&vmm.serial, DIRTY_EVERY);
    vmm
}

fn snapshot(c: &Client, dir: &Path) {
    let body = serde_json::json!({"destination_url": format!("file://{}", dir.display())});
    let r = put(c, "vm.snapshot", Some(&body.to_string()));
    assert_eq!(r.status, 204, "{}", r.body);
}

fn restore_body(dir: &Path, prefault: bool) -> String {
    serde_json::json!({"source_url": format!("file://{}", dir.display()), "prefault": prefault})
        .to_string()
}

/// The last round in `serial` (every page right so far).
fn last_round(serial: &Path) -> u64 {
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    hv_test_support::check_dirty_transcript(&text, DIRTY_EVERY).unwrap_or_else(|e| panic!("{e}"))
}

/// Pauses `src`, snapshots it to `dir`, checks it stays paused, and ends the process.
fn snapshot_and_end(mut src: VmmProcess, dir: &Path) -> (VmmProcess, u64) {
    let c = src.client();
    assert_eq!(put(&c, "vm.pause", None).status, 204);
    snapshot(&c, dir);
    assert_eq!(vm_state(&c), "Paused");
    for f in ["config.json", "state.json", "memory.bin", hv::vmm::manager::VMM_CONFIG_FILE] {
        assert!(dir.join(f).is_file(), "{f} missing from the snapshot");
    }
    let last = last_round(&src.serial);
    assert_eq!(put(&c, "vmm.shutdown", None).status, 204);
    assert!(src.wait_exit().success());
    (src, last)
}

/// Resumes the restored VM in `dst` (whose serial output appends to `serial`) and checks the
/// guest goes on from round `last` with every page right.
fn resume_and_check(dst: &VmmProcess, serial: &Path, last: u64) {
    let c = dst.client();
    assert_eq!(vm_state(&c), "Paused");
    let info = c.info().expect("info");
    let memory = info.memory_file.expect("vm.info names the mapped memory file");
    assert!(memory.ends_with("memory.bin"), "{}", memory.display());
    assert_eq!(info.config.memory.size, 64 << 20);
    assert_eq!(last_round(serial), last, "the restored VM ran before vm.resume");
    assert_eq!(put(&c, "vm.resume", None).status, 204);
    assert_eq!(vm_state(&c), "Running");
    wait_dirty_round(serial, last + 2 * DIRTY_EVERY);
}

#[test]
fn a_snapshot_restores_in_a_new_process_with_the_flag_and_every_page_is_right() {
    if !can_run_guests() {
        return;
    }
    let snap = tempfile::tempdir().expect("temp dir");
    let (src, last) = snapshot_and_end(dirty_vmm(512), snap.path());
    let url = format!("source_url=file://{}", snap.path().display());
    let dst = VmmProcess::spawn(&["--restore", &url], true);
    resume_and_check(&dst, &src.serial, last);
}

#[test]
fn vm_restore_on_a_bare_process_then_the_restored_vm_migrates_over_tcp() {
    if !can_run_guests() {
        return;
    }
    let snap = tempfile::tempdir().expect("temp dir");
    let (src, last) = snapshot_and_end(dirty_vmm(512), snap.path());
    let restored = VmmProcess::spawn(&[], true);
    let c = restored.client();
    let r = put(&c, "vm.restore", Some(&restore_body(snap.path(), true)));
    assert_eq!(r.status, 204, "{}", r.body);
    // A second restore into the same process: it has a VM (Cloud Hypervisor's 404).
    assert_eq!(put(&c, "vm.restore", Some(&restore_body(snap.path(), false))).status, 404);
    resume_and_check(&restored, &src.serial, last);

    // Migrate the restored VM on to a third process over TCP.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("tcp:127.0.0.1:{port}");
    let mut restored = restored;
    let dst = migrate(&mut restored, &url);
    let now = last_round(&src.serial);
    wait_dirty_round(&src.serial, now + 2 * DIRTY_EVERY);
    drop(dst);
}

#[test]
fn live_migration_between_two_processes_over_a_unix_socket() {
    if !can_run_guests() {
        return;
    }
    let mut src = dirty_vmm(1024);
    let serial = src.serial.clone();
    let sock = src.dir.path().join("migration.sock");
    let url = format!("unix:{}", sock.display());
    let dst = migrate(&mut src, &url);
    let info = dst.client().info().expect("info");
    assert_eq!(info.memory_file, None, "a migrated VM's RAM is allocated");
    assert_eq!(info.config.memory.size, 64 << 20);
    let now = last_round(&serial);
    wait_dirty_round(&serial, now + 2 * DIRTY_EVERY);
}

#[test]
fn a_failed_migration_leaves_the_source_running() {
    if !can_run_guests() {
        return;
    }
    let src = dirty_vmm(256);
    let c = src.client();
    let nowhere = src.dir.path().join("nobody-listens.sock");
    let body = serde_json::json!({"destination_url": format!("unix:{}", nowhere.display())});
    let r = put(&c, "vm.send-migration", Some(&body.to_string()));
    assert_eq!(r.status, 500, "{}", r.body);
    let msgs: Vec<String> = serde_json::from_str(&r.body).expect("JSON error list");
    assert!(msgs[0].contains("cannot connect"), "{msgs:?}");
    assert_eq!(vm_state(&c), "Running");
    let now = last_round(&src.serial);
    wait_dirty_round(&src.serial, now + DIRTY_EVERY);

    // A receiver that is not hv-vmm (it closes at once): the source goes on too.
    let listener = std::os::unix::net::UnixListener::bind(&nowhere).expect("bind");
    let closer = std::thread::spawn(move || drop(listener.accept()));
    let r = put(&c, "vm.send-migration", Some(&body.to_string()));
    closer.join().unwrap();
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(vm_state(&c), "Running");
    let now = last_round(&src.serial);
    wait_dirty_round(&src.serial, now + DIRTY_EVERY);
}

/// Copies a snapshot directory.
fn copy_snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn bad_snapshots_are_typed_errors_and_no_vcpu_runs() {
    if !can_run_guests() {
        return;
    }
    let root = tempfile::tempdir().expect("temp dir");
    let good = root.path().join("good");
    let (src, last) = snapshot_and_end(dirty_vmm(256), &good);

    let truncated = root.path().join("truncated");
    copy_snapshot(&good, &truncated);
    let state = std::fs::read(good.join("state.json")).unwrap();
    std::fs::write(truncated.join("state.json"), &state[..state.len() / 2]).unwrap();

    let version = root.path().join("version");
    copy_snapshot(&good, &version);
    let text = std::fs::read_to_string(good.join("state.json")).unwrap();
    std::fs::write(version.join("state.json"), text.replacen("\"version\":1", "\"version\":7", 1))
        .unwrap();

    let short = root.path().join("short-memory");
    copy_snapshot(&good, &short);
    let f = std::fs::OpenOptions::new().write(true).open(short.join("memory.bin")).unwrap();
    f.set_len(32 << 20).unwrap();

    let vmm = VmmProcess::spawn(&[], true);
    let c = vmm.client();
    for (dir, want) in [
        (&truncated, "truncated"),
        (&version, "version 7"),
        (&short, "bytes, the snapshot's RAM needs exactly"),
        (&root.path().join("missing"), "No such file"),
    ] {
        let r = put(&c, "vm.restore", Some(&restore_body(dir, false)));
        assert_eq!(r.status, 500, "{}: {}", dir.display(), r.body);
        let msgs: Vec<String> = serde_json::from_str(&r.body).expect("JSON error list");
        assert!(msgs.iter().any(|m| m.contains(want)), "{}: {msgs:?}", dir.display());
        assert_eq!(get(&c, "vm.info").status, 404, "a failed restore leaves no VM");
    }
    // No vCPU of the bad snapshots ran: the transcript still ends where the snapshot was.
    assert_eq!(last_round(&src.serial), last);
    // The good one still restores in the same process.
    let r = put(&c, "vm.restore", Some(&restore_body(&good, false)));
    assert_eq!(r.status, 204, "{}", r.body);
    resume_and_check(&vmm, &src.serial, last);
}
