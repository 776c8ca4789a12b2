//! Network namespaces for tests: each test makes its own, runs its body inside it on a
//! dedicated thread, and the namespace is removed afterwards, even when the body panics.
//!
//! The thread joins the namespace with `setns(2)`, so netlink sockets, TAP devices and child
//! processes (`nft`, `ping`) made on that thread live in the namespace; the rest of the test
//! process and the host's own networking are never touched. Namespaces are made and removed
//! with iproute2's `ip netns` (a test may shell out; the library may not), so they appear under
//! `/run/netns/NAME` and `ip netns exec NAME ...` works in them.
//!
//! ```no_run
//! # fn t() {
//! use hv_test_support::netns::NetNs;
//! hv_test_support::require!(hv_test_support::is_root(), "network namespaces need root");
//! let ns = NetNs::new("demo");
//! ns.run(|| { /* netlink, TAP, nft here act inside `ns` */ });
//! ns.exec(&["ip", "link", "show"]);
//! // `ns` is deleted when dropped.
//! # }
//! ```

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const CLONE_NEWNET: i32 = 0x4000_0000;

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace that exists while this value lives.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Makes a new, uniquely named namespace (`PREFIX-PID-N`, kept under 15 characters where
    /// the prefix allows) with its loopback up. Panics if `ip netns add` fails.
    pub fn new(prefix: &str) -> NetNs {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let out =
            Command::new("ip").args(["netns", "add", &name]).output().expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let ns = NetNs { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind-mount file, usable with `setns(2)` or `IFLA_NET_NS_FD`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Opens the namespace file (for moving a link into it by file descriptor).
    pub fn open(&self) -> File {
        File::open(self.path()).expect("open netns file")
    }

    /// Runs `f` on a new thread that has joined this namespace and returns its result; a panic
    /// in `f` is re-raised on the caller's thread.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        let file = self.open();
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                // SAFETY: `file` is an open namespace file; setns only changes the calling
                // thread's network namespace and reports failure through its return value.
                let rc = unsafe { setns(file.as_raw_fd(), CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                drop(file);
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs a command inside the namespace (`ip netns exec NAME ARGS...`).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// Like [`NetNs::exec`] but panics, showing stderr, unless the command succeeds; returns
    /// its stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in netns {}: {:?} failed: {}{}",
            self.name,
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// True when `ping -c COUNT -W 1 ADDR` inside the namespace gets an answer.
    pub fn ping(&self, addr: &str, count: u32) -> bool {
        let count = count.to_string();
        self.exec(&["ping", "-n", "-q", "-c", &count, "-i", "0.2", "-W", "1", addr])
            .status
            .success()
    }

    /// Pings `addr` from the namespace until one reply comes back or `deadline` passes: for a
    /// guest that may answer slowly (a Linux kernel emulated on a PVM host under load).
    pub fn ping_within(&self, addr: &str, deadline: std::time::Duration) -> bool {
        let secs = deadline.as_secs().max(1).to_string();
        self.exec(&["ping", "-n", "-q", "-c", "1", "-i", "0.5", "-w", &secs, addr]).status.success()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// True when iproute2's `ip` and iputils' `ping` are on `PATH` (namespace tests need both).
pub fn have_netns_tools() -> bool {
    let ok =
        |c: &str| Command::new(c).arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
    ok("ip") && ok("ping")
}
