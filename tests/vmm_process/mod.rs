//! Shared by the `hv-vmm` tests: spawning the binary, waiting for its socket and for the
//! guest's serial lines, and reaping it.

#![allow(dead_code)] // Each test file uses its own subset.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hv::vmm::client::{Client, Reply};

/// An `hv-vmm` process the test started, killed (by its pid) if the test ends first.
pub struct VmmProcess {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub serial: PathBuf,
    pub log: PathBuf,
}

impl VmmProcess {
    /// Starts `hv-vmm --api-socket S --log-file L -v` plus `args` (in which `{serial}` stands for
    /// the serial file's path); waits for the socket when `wait_socket`.
    pub fn spawn(args: &[&str], wait_socket: bool) -> Self {
        Self::spawn_in(None, args, wait_socket)
    }

    /// As [`spawn`](Self::spawn), inside the network namespace `netns` (`ip netns exec`, which
    /// execs, so the child is `hv-vmm` itself).
    pub fn spawn_in(netns: Option<&str>, args: &[&str], wait_socket: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("api.sock");
        let serial = dir.path().join("serial.log");
        let log = dir.path().join("vmm.log");
        let serial_s = serial.to_str().expect("utf-8 temp path").to_owned();
        let bin = env!("CARGO_BIN_EXE_hv-vmm");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--api-socket")
            .arg(format!("path={}", socket.display()))
            .arg("--log-file")
            .arg(&log)
            .arg("-v")
            .args(args.iter().map(|a| a.replace("{serial}", &serial_s)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn hv-vmm");
        let p = VmmProcess { child, dir, socket, serial, log };
        if wait_socket {
            p.wait_for_socket();
        }
        p
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    pub fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.client().ping().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("hv-vmm never answered on {}; log:\n{}", self.socket.display(), self.log_text());
    }

    /// Runs the test guest with `cmdline` on one `--disk disk_flag` (64 MiB, serial to the
    /// file) until the process ends by itself; returns it and its exit status.
    pub fn run_with_disk(disk_flag: &str, cmdline: &str) -> (Self, ExitStatus) {
        let guest = hv_test_support::test_guest();
        let args = [
            "--kernel",
            guest.to_str().expect("utf-8"),
            "--cmdline",
            cmdline,
            "--memory",
            "size=64M",
            "--disk",
            disk_flag,
            "--serial",
            "file={serial}",
        ];
        let mut vmm = Self::spawn(&args, false);
        let status = vmm.wait_exit();
        (vmm, status)
    }

    /// The guest's `hvtest:` lines so far.
    pub fn hvtest_lines(&self) -> Vec<String> {
        hv_test_support::hvtest_lines(&self.serial_text()).iter().map(|l| l.to_string()).collect()
    }

    pub fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the guest has printed `hvtest: <line>` `count` times.
    pub fn wait_for_line(&self, line: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let text = self.serial_text();
            if hv_test_support::hvtest_lines(&text).iter().filter(|l| **l == line).count() >= count
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the guest never printed {line:?} x{count}; serial:\n{}\nlog:\n{}",
            self.serial_text(),
            self.log_text()
        );
    }

    /// Waits for the process to end by itself (at most 60 s).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("hv-vmm did not end; log:\n{}", self.log_text());
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `PUT` with a body, answering the status.
pub fn put(c: &Client, endpoint: &str, body: Option<&str>) -> Reply {
    c.put(endpoint, body.map(str::as_bytes)).unwrap_or_else(|e| panic!("PUT {endpoint}: {e}"))
}

/// `GET`, answering the status.
pub fn get(c: &Client, endpoint: &str) -> Reply {
    c.get(endpoint).unwrap_or_else(|e| panic!("GET {endpoint}: {e}"))
}

/// A `vm.create` body for the test guest with `cmdline`, its serial port writing to `serial`.
pub fn guest_config(cmdline: &str, serial: &Path) -> String {
    serde_json::json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 64u64 << 20},
        "payload": {"kernel": hv_test_support::test_guest(), "cmdline": cmdline},
        "serial": {"mode": "File", "file": serial},
        "console": {"mode": "Off"},
    })
    .to_string()
}

/// The prerequisites of every test that runs a guest.
pub fn can_run_guests() -> bool {
    hv_test_support::check(hv_test_support::have_kvm(), "/dev/kvm is not usable")
}

/// Reports of `test=dirty` (a round report every `DIRTY_EVERY` rounds).
pub const DIRTY_EVERY: u64 = 4;

/// A `vm.create` body for the memory-checking test guest (`pages` pages rewritten and checked
/// in a loop) with `mib` MiB of RAM.
pub fn dirty_config(pages: u64, mib: u64, serial: &Path) -> String {
    serde_json::json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": mib << 20},
        "payload": {
            "kernel": hv_test_support::test_guest(),
            "cmdline": format!("test=dirty pages={pages} every={DIRTY_EVERY}"),
        },
        "serial": {"mode": "File", "file": serial},
        "console": {"mode": "Off"},
    })
    .to_string()
}

/// Waits until the dirty guest writing to `serial` has reported a round after `after`, with
/// every page right so far; answers that round.
pub fn wait_dirty_round(serial: &Path, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        match hv_test_support::check_dirty_transcript(&text, DIRTY_EVERY) {
            Ok(r) if r > after => return r,
            Err(e) if e.contains("bad page") || e.contains("follows") => {
                panic!("{e}; serial:\n{text}")
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "no dirty round after {after}; serial:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The VM's state as `vm.info` says.
pub fn vm_state(c: &Client) -> String {
    let info = c.info().expect("vm.info");
    serde_json::to_value(info.state).expect("state").as_str().expect("string").to_owned()
}

impl VmmProcess {
    /// Waits until the process's log has a line containing `text`.
    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log_text().contains(text) {
            assert!(Instant::now() < deadline, "{text:?} never logged:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Migrates the VM of `src` to a new process listening on `url`; checks the source process
/// ends with 0 and the destination runs.
pub fn migrate(src: &mut VmmProcess, url: &str) -> VmmProcess {
    let dst = VmmProcess::spawn(&[], true);
    let receive = {
        let c = dst.client();
        let body = serde_json::json!({"receiver_url": url}).to_string();
        std::thread::spawn(move || put(&c, "vm.receive-migration", Some(&body)))
    };
    dst.wait_for_log("listening for a migration");
    // The destination has no VM yet while it waits.
    assert_eq!(get(&dst.client(), "vm.info").status, 404);
    let c = src.client();
    let body = serde_json::json!({"destination_url": url}).to_string();
    let sent = put(&c, "vm.send-migration", Some(&body));
    assert_eq!(sent.status, 204, "{}; log:\n{}", sent.body, src.log_text());
    let received = receive.join().expect("receiver thread");
    assert_eq!(received.status, 204, "{}; log:\n{}", received.body, dst.log_text());
    let status = src.wait_exit();
    assert_eq!(status.code(), Some(0), "source log:\n{}", src.log_text());
    assert!(src.log_text().contains("migrated"), "{}", src.log_text());
    assert_eq!(vm_state(&dst.client()), "Running");
    dst
}
