//! The serial console of the `hv-vmm` binary as a user reaches it: `--serial pty` (the pty's
//! path in `vm.info`'s `serial.file`, as Cloud Hypervisor reports it) and `--serial
//! socket=PATH`, driven with the echoing test guest (`test=echo`: each input line comes back as
//! `hvtest: echo LINE`), under the default seccomp filters; a restored or migrated VM gets a
//! new pty, named in its process's `vm.info`, that works the same.

mod vmm_process;

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hv::vmm::client::Client;
use vmm_process::{can_run_guests, put, vm_state, VmmProcess};

/// Reads from `fd` until what arrived contains `needle` (at most 30 s); answers all of it.
fn read_until(fd: impl AsFd, needle: &str, what: &str) -> String {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{what}: {needle:?} never came; got {:?}",
            String::from_utf8_lossy(&got)
        );
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::from(200u16)), Ok(n) if n > 0) {
            continue;
        }
        match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(0) => panic!("{what}: end of stream before {needle:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("{what}: read: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The seccomp mode (`/proc/PID/task/TID/status`'s `Seccomp:`, 2 = filter) of the thread of
/// process `pid` named `name`.
fn thread_seccomp(pid: u32, name: &str) -> Option<String> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("Seccomp:"))?;
            return Some(line.trim_start_matches("Seccomp:").trim().to_owned());
        }
    }
    None
}

fn echo_args(guest: &Path, serial: &str) -> Vec<String> {
    [
        "--kernel",
        guest.to_str().expect("utf-8"),
        "--cmdline",
        "test=echo",
        "--memory",
        "size=64M",
        "--serial",
        serial,
        "--console",
        "off",
    ]
    .map(String::from)
    .to_vec()
}

fn spawn(args: &[String]) -> VmmProcess {
    VmmProcess::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>(), true)
}

/// The pty `vm.info` names for a `Pty` serial port.
fn pty_of(c: &Client) -> PathBuf {
    let info = c.info().expect("vm.info");
    let serial = serde_json::to_value(&info.config.serial).expect("serial");
    assert_eq!(serial["mode"], "Pty", "{serial}");
    let path = PathBuf::from(serial["file"].as_str().expect("vm.info names the pty in file"));
    assert!(path.starts_with("/dev/pts/"), "{}", path.display());
    path
}

fn open_pty(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

#[test]
fn a_pty_serial_echoes_the_guest_and_quits_it() {
    if !can_run_guests() {
        return;
    }
    let guest = hv_test_support::test_guest();
    let mut vmm = spawn(&echo_args(&guest, "pty"));
    let pty = pty_of(&vmm.client());
    assert!(vmm.log_text().contains(&format!("pty {}", pty.display())), "{}", vmm.log_text());
    let mut term = open_pty(&pty);
    read_until(&term, "hvtest: echo ready", "boot");
    // The input thread runs under the process's filter.
    assert_eq!(thread_seccomp(vmm.child.id(), "serial-in").as_deref(), Some("2"));
    term.write_all(b"hello over the pty\r").expect("write");
    let got = read_until(&term, "hvtest: echo hello over the pty\n", "echo");
    // Raw mode: the pty neither echoes the input back nor turns "\n" into "\r\n".
    assert!(!got.contains("\r\n") && !got.contains("hello over the pty\r"), "{got:?}");
    // More than the UART's 64-byte FIFO at once: held and fed as the guest reads.
    let long = "x".repeat(150);
    term.write_all(format!("{long}\n").as_bytes()).expect("write");
    read_until(&term, &format!("hvtest: echo {long}\n"), "long line");
    term.write_all(b"quit\n").expect("write");
    read_until(&term, "hvtest: done", "quit");
    let status = vmm.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", vmm.log_text());
    assert!(!vmm.log_text().contains("forbids"), "a forbidden call:\n{}", vmm.log_text());
}

#[test]
fn a_restored_vm_gets_a_new_pty_that_works() {
    if !can_run_guests() {
        return;
    }
    let guest = hv_test_support::test_guest();
    let mut src = spawn(&echo_args(&guest, "pty"));
    let c = src.client();
    let term = open_pty(&pty_of(&c));
    read_until(&term, "hvtest: echo ready", "boot");
    let snap = tempfile::tempdir().expect("temp dir");
    assert_eq!(put(&c, "vm.pause", None).status, 204);
    let body = serde_json::json!({"destination_url": format!("file://{}", snap.path().display())});
    let r = put(&c, "vm.snapshot", Some(&body.to_string()));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(put(&c, "vmm.shutdown", None).status, 204);
    assert!(src.wait_exit().success());
    drop(term);

    let restore = format!("source_url=file://{},resume=on", snap.path().display());
    let mut dst = spawn(&["--restore".to_string(), restore]);
    let c = dst.client();
    assert_eq!(vm_state(&c), "Running");
    let mut term = open_pty(&pty_of(&c));
    term.write_all(b"after restore\n").expect("write");
    read_until(&term, "hvtest: echo after restore\n", "restored echo");
    term.write_all(b"quit\n").expect("write");
    read_until(&term, "hvtest: done", "quit");
    assert_eq!(dst.wait_exit().code(), Some(0), "log:\n{}", dst.log_text());
}

#[test]
fn a_migrated_vm_gets_a_pty_of_its_own_process() {
    if !can_run_guests() {
        return;
    }
    let guest = hv_test_support::test_guest();
    let mut src = spawn(&echo_args(&guest, "pty"));
    let src_pty = pty_of(&src.client());
    let src_term = open_pty(&src_pty);
    read_until(&src_term, "hvtest: echo ready", "boot");
    let dst = VmmProcess::spawn(&[], true);
    let url = format!("unix:{}", dst.dir.path().join("migration.sock").display());
    let receive = {
        let c = dst.client();
        let body = serde_json::json!({"receiver_url": url}).to_string();
        std::thread::spawn(move || put(&c, "vm.receive-migration", Some(&body)))
    };
    dst.wait_for_log("listening for a migration");
    let body = serde_json::json!({"destination_url": url}).to_string();
    let sent = put(&src.client(), "vm.send-migration", Some(&body));
    assert_eq!(sent.status, 204, "{}; log:\n{}", sent.body, src.log_text());
    let received = receive.join().expect("receiver thread");
    assert_eq!(received.status, 204, "{}; log:\n{}", received.body, dst.log_text());
    // Made while the source's was still open: another pty, named in the destination's info.
    let dst_pty = pty_of(&dst.client());
    assert_ne!(dst_pty, src_pty);
    assert_eq!(src.wait_exit().code(), Some(0), "{}", src.log_text());
    let mut term = open_pty(&dst_pty);
    term.write_all(b"after migration\n").expect("write");
    read_until(&term, "hvtest: echo after migration\n", "migrated echo");
}

#[test]
fn a_socket_serial_serves_one_client_at_a_time() {
    if !can_run_guests() {
        return;
    }
    let guest = hv_test_support::test_guest();
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("serial.sock");
    let mut vmm = spawn(&echo_args(&guest, &format!("socket={}", sock.display())));
    let info =
        serde_json::to_value(vmm.client().info().expect("vm.info").config.serial).expect("serial");
    assert_eq!((info["mode"].as_str(), info["socket"].as_str()), (Some("Socket"), sock.to_str()));
    let mut client = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    // The guest said `echo ready` before anyone listened: gone, as on a line with nothing
    // attached. Input sent now waits in the socket until the client is taken.
    client.write_all(b"ping\n").expect("write");
    read_until(&client, "hvtest: echo ping\n", "first echo");
    let mut second = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    second.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 16];
    assert_eq!(std::io::Read::read(&mut second, &mut buf).unwrap_or(0), 0, "second client kept");
    client.write_all(b"over the socket\n").expect("write");
    read_until(&client, "hvtest: echo over the socket\n", "socket echo");
    client.write_all(b"quit\n").expect("write");
    read_until(&client, "hvtest: done", "quit");
    assert_eq!(vmm.wait_exit().code(), Some(0), "log:\n{}", vmm.log_text());
    assert!(!sock.exists(), "the socket file outlived the process");
}
