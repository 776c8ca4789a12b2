//! The `hv-vmm` binary as a user runs it: a VM booted from Cloud Hypervisor's flags, the
//! process ending with its guest (power-off 0, crash 1 with the reason logged at error),
//! a reset rebooting the guest, the power button over the API, disks opened with an explicit
//! format, every thread confined by a seccomp filter (unless `--seccomp false`), and bad
//! flags refused.

mod vmm_process;

use std::process::Command;

use vmm_process::{can_run_guests, get, guest_config, put, VmmProcess};

fn lines(vmm: &VmmProcess) -> Vec<String> {
    vmm.hvtest_lines()
}

#[test]
fn boots_from_flags_and_ends_when_the_guest_powers_off() {
    if !can_run_guests() {
        return;
    }
    let guest = hv_test_support::test_guest();
    let mut vmm = VmmProcess::spawn(
        &[
            "--kernel",
            guest.to_str().expect("utf-8"),
            "--cmdline",
            "test=smp",
            "--cpus",
            "boot=2",
            "--memory",
            "size=64M,mergeable=on",
            "--serial",
            "file={serial}",
            "--console",
            "off",
        ],
        false,
    );
    let status = vmm.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", vmm.log_text());
    let l = lines(&vmm);
    for want in ["mem=63 MiB", "cpus=2", "smp ok 2", "done"] {
        assert!(l.iter().any(|x| x == want), "{want:?} missing from {l:?}");
    }
    assert!(vmm.log_text().contains("the guest powered off"), "{}", vmm.log_text());
}

#[test]
fn the_power_button_endpoint_reaches_the_guest() {
    if !can_run_guests() {
        return;
    }
    let mut vmm = VmmProcess::spawn(&[], true);
    let c = vmm.client();
    assert_eq!(
        put(&c, "vm.create", Some(&guest_config("test=power-button", &vmm.serial))).status,
        204
    );
    assert_eq!(put(&c, "vm.boot", None).status, 204);
    vmm.wait_for_line("waiting for the power button", 1);
    assert_eq!(put(&c, "vm.power-button", None).status, 204);
    let status = vmm.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", vmm.log_text());
    let l = lines(&vmm);
    assert!(l.contains(&"power button pressed".to_string()), "{l:?}");
    assert_eq!(l.last().map(String::as_str), Some("done"));
}

#[test]
fn a_guest_crash_ends_the_process_with_its_reason_logged_at_error() {
    if !can_run_guests() {
        return;
    }
    let guest = hv_test_support::test_guest();
    let args = ["--kernel", guest.to_str().expect("utf-8"), "--cmdline", "test=triple"];
    let mut vmm = VmmProcess::spawn(&[&args[..], &["--serial", "file={serial}"]].concat(), false);
    let status = vmm.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert!(lines(&vmm).contains(&"triple-faulting".to_string()));
    let log = vmm.log_text();
    let line =
        log.lines().find(|l| l.contains("the guest stopped")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("ERROR") && line.contains("triple fault"), "{line}");
}

#[test]
fn a_guest_reset_reboots_the_vm() {
    if !can_run_guests() {
        return;
    }
    let mut vmm = VmmProcess::spawn(&[], true);
    let c = vmm.client();
    assert_eq!(put(&c, "vm.create", Some(&guest_config("test=reset", &vmm.serial))).status, 204);
    assert_eq!(put(&c, "vm.boot", None).status, 204);
    // Each boot resets, and each reset boots the guest again from the same configuration.
    vmm.wait_for_line("resetting", 3);
    assert!(vmm.child.try_wait().expect("try_wait").is_none(), "a reset must not end the process");
    assert_eq!(put(&c, "vmm.shutdown", None).status, 204);
    assert!(vmm.wait_exit().success());
}

fn blk_lines(disk_flag: &str, cmdline: &str) -> (Vec<String>, String) {
    let (vmm, status) = VmmProcess::run_with_disk(disk_flag, cmdline);
    assert_eq!(status.code(), Some(0), "log:\n{}", vmm.log_text());
    (vmm.hvtest_lines(), vmm.log_text())
}

#[test]
fn disks_open_in_the_format_given_raw_by_default() {
    if !can_run_guests() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = dir.path().join("raw.img");
    std::fs::write(&raw, vec![0u8; 8 << 20]).expect("raw image");
    let (l, _) = blk_lines(&format!("path={}", raw.display()), "test=blk count=16");
    assert!(l.contains(&"blk capacity=16384".to_string()), "{l:?}");
    assert!(l.contains(&"blk verify ok".to_string()), "{l:?}");

    let (l, _) = blk_lines(&format!("path={},readonly=on", raw.display()), "test=blk count=4");
    assert!(l.contains(&"blk read-only".to_string()), "{l:?}");

    let have_qemu_img = Command::new("qemu-img").arg("--version").output().is_ok();
    hv_test_support::require!(have_qemu_img, "qemu-img is not installed");
    let q = dir.path().join("disk.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("16M")
        .output()
        .expect("qemu-img create");
    assert!(out.status.success());
    let (l, _) = blk_lines(&format!("path={},image_type=qcow2", q.display()), "test=blk count=16");
    assert!(l.contains(&"blk capacity=32768".to_string()), "{l:?}");
    assert!(l.contains(&"blk verify ok".to_string()), "{l:?}");
    let check = Command::new("qemu-img").arg("check").arg(&q).output().expect("qemu-img check");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    // Without image_type the same file is a raw disk: its bytes are never probed for a format.
    let size = std::fs::metadata(&q).expect("qcow2 size").len();
    let (l, _) = blk_lines(&format!("path={},readonly=on", q.display()), "test=blk count=1");
    assert!(l.contains(&format!("blk capacity={}", size / 512)), "{l:?}");
}

#[test]
fn a_device_that_cannot_open_fails_the_boot_not_the_process() {
    if !can_run_guests() {
        return;
    }
    let vmm = VmmProcess::spawn(&[], true);
    let c = vmm.client();
    let mut config: serde_json::Value =
        serde_json::from_str(&guest_config("test=hlt", &vmm.serial)).expect("json");
    let missing = vmm.dir.path().join("missing.img");
    config["disks"] = serde_json::json!([{"path": missing}]);
    assert_eq!(put(&c, "vm.create", Some(&config.to_string())).status, 204);
    let r = put(&c, "vm.boot", None);
    assert_eq!(r.status, 500);
    assert!(r.body.contains("missing.img"), "{}", r.body);
    assert_eq!(serde_json::to_value(c.info().expect("info").state).expect("state"), "Created");
    assert!(vmm.log_text().contains("WARN"), "a failed boot is logged at warn");
}

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hv-vmm")).args(args).output().expect("run hv-vmm");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_flags_are_refused() {
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("nothing to do"), "{err}");
    for (flag, value) in [
        ("--disk", "readonly=on"),
        ("--disk", "path=/x,image_type=vmdk"),
        ("--memory", "size=lots"),
        ("--cpus", "boot=two"),
        ("--serial", "socket="),
        ("--net", "mac=52:54:00:00:00:01"),
        ("--seccomp", "trap"),
    ] {
        let (code, err) = run(&["--kernel", "/nonexistent", flag, value]);
        assert_eq!(code, Some(2), "{flag} {value}: {err}");
        assert!(err.contains(value), "{flag} {value}: {err}");
    }
    let (code, err) = run(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/vmlinux"), "{err}");
    // A snapshot directory that is not there: the process fails with the file it missed.
    let (code, err) = run(&["--restore", "source_url=file:///nonexistent/snap"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/snap/vmm-config.json"), "{err}");
    for bad in ["file:///s", "source_url=/s", "source_url=file:///s,bogus=1"] {
        let (code, err) = run(&["--restore", bad]);
        assert_eq!(code, Some(2), "{bad}: {err}");
    }
    let (code, _) = run(&["--restore", "source_url=file:///s", "--kernel", "/k"]);
    assert_eq!(code, Some(2), "--restore and --kernel exclude each other");
}

#[test]
fn a_socket_another_vmm_serves_is_not_taken_over() {
    let first = VmmProcess::spawn(&[], true);
    let sock = format!("path={}", first.socket.display());
    let (code, err) = run(&["--api-socket", &sock]);
    assert_eq!(code, Some(1));
    assert!(err.contains("in use"), "{err}");
    assert!(first.client().ping().is_ok(), "the first hv-vmm still answers");
}

#[test]
fn a_nic_on_a_tap_by_name_carries_the_guests_traffic_and_counts_it() {
    use hv_test_support::netns::{have_netns_tools, NetNs};
    if !can_run_guests() {
        return;
    }
    hv_test_support::require!(hv_test_support::is_root(), "TAPs need root");
    hv_test_support::require!(have_netns_tools(), "ip and ping are needed");
    let ns = NetNs::new("hvvmm");
    ns.exec_ok(&["ip", "tuntap", "add", "dev", "hvvt0", "mode", "tap"]);
    ns.exec_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]);
    ns.exec_ok(&["ip", "addr", "add", "10.77.0.1/24", "dev", "hvvt0"]);
    ns.exec_ok(&["ip", "link", "set", "hvvt0", "up"]);
    let guest = hv_test_support::test_guest();
    let mut vmm = VmmProcess::spawn_in(
        Some(ns.name()),
        &[
            "--kernel",
            guest.to_str().expect("utf-8"),
            "--cmdline",
            "test=net ip=10.77.0.2/24 ping=10.77.0.1 count=3 serve=4",
            "--memory",
            "size=64M",
            "--net",
            "tap=hvvt0,mac=52:54:00:77:00:02",
            "--serial",
            "file={serial}",
        ],
        true,
    );
    vmm.wait_for_line("net serving", 1);
    assert!(ns.ping("10.77.0.2", 2), "the host reaches the guest; serial:\n{}", vmm.serial_text());
    let c = vmm.client();
    let counters: serde_json::Value =
        serde_json::from_str(&get(&c, "vm.counters").body).expect("counters JSON");
    let nic = &counters["_net0"];
    assert!(nic["tx_frames"].as_u64().expect("tx_frames") >= 5, "{counters}");
    assert!(nic["rx_frames"].as_u64().expect("rx_frames") >= 5, "{counters}");
    assert!(nic["rx_bytes"].as_u64().expect("rx_bytes") > 0, "{counters}");
    let status = vmm.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", vmm.log_text());
    let l = lines(&vmm);
    assert!(l.contains(&"net mac=52:54:00:77:00:02".to_string()), "{l:?}");
    assert!(l.contains(&"net ping 10.77.0.1 ok 3/3".to_string()), "{l:?}");
}

/// `(thread name, Seccomp: value)` of every thread of `pid`.
fn thread_seccomp(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = task.expect("task").path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let mode = status.lines().find_map(|l| l.strip_prefix("Seccomp:")).expect("Seccomp:");
        out.push((comm.trim().to_owned(), mode.trim().to_owned()));
    }
    out
}

/// Boots the power-button guest through the API with `flags`, answers the threads' seccomp
/// modes while it runs, then presses the button and checks the process ends cleanly.
fn seccomp_of_a_running_vmm(flags: &[&str]) -> Vec<(String, String)> {
    let mut vmm = VmmProcess::spawn(flags, true);
    let c = vmm.client();
    assert_eq!(
        put(&c, "vm.create", Some(&guest_config("test=power-button", &vmm.serial))).status,
        204
    );
    assert_eq!(put(&c, "vm.boot", None).status, 204);
    vmm.wait_for_line("waiting for the power button", 1);
    let threads = thread_seccomp(vmm.child.id());
    assert_eq!(get(&c, "vm.info").status, 200);
    assert_eq!(put(&c, "vm.power-button", None).status, 204);
    let status = vmm.wait_exit();
    let log = vmm.log_text();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(!log.contains("forbids"), "a thread made a forbidden call:\n{log}");
    threads
}

#[test]
fn every_thread_of_a_running_vmm_is_confined_unless_seccomp_is_false() {
    if !can_run_guests() {
        return;
    }
    let threads = seccomp_of_a_running_vmm(&[]);
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    // The main thread, the API thread and the vCPU at least.
    assert!(threads.len() >= 3, "{threads:?}");
    assert!(names.contains(&"hv-vmm") && names.contains(&"hv-vmm-api"), "{names:?}");
    let unconfined: Vec<_> = threads.iter().filter(|(_, mode)| mode != "2").collect();
    assert!(unconfined.is_empty(), "threads without a seccomp filter: {unconfined:?}");

    let threads = seccomp_of_a_running_vmm(&["--seccomp", "false"]);
    assert!(threads.iter().all(|(_, mode)| mode == "0"), "{threads:?}");
}
