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

/// A `ping` running in a namespace, sending an echo every 200 ms with one ICMP id (so one
/// tracked connection), its answers collected as they come: for checking that a connection
/// stops being answered when a rule goes ([`NetNs::ping_session`]). The `ping` is killed
/// when this is dropped.
pub struct PingSession {
    child: std::process::Child,
    replies: std::sync::Arc<std::sync::Mutex<Vec<(u32, std::time::Instant)>>>,
}

impl PingSession {
    /// True once `n` echoes have been answered, waiting up to `deadline`.
    pub fn wait_for_replies(&self, n: usize, deadline: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + deadline;
        while std::time::Instant::now() < end {
            if self.replies().len() >= n {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    /// The sequence numbers of the echoes answered so far, each with when its answer came.
    pub fn replies(&self) -> Vec<(u32, std::time::Instant)> {
        self.replies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The sequence numbers of the echoes answered after `t`.
    pub fn replies_after(&self, t: std::time::Instant) -> Vec<u32> {
        self.replies().into_iter().filter(|(_, at)| *at > t).map(|(seq, _)| seq).collect()
    }
}

impl Drop for PingSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NetNs {
    /// Starts pinging `addr` from the namespace until the session is dropped (at most 10
    /// minutes): see [`PingSession`].
    pub fn ping_session(&self, addr: &str) -> PingSession {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "ping", "-n", "-i", "0.2", "-w", "600", addr])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run ping in the namespace");
        let out = BufReader::new(child.stdout.take().expect("ping's stdout"));
        let replies = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let seen = replies.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let seq = line.split_whitespace().find_map(|w| w.strip_prefix("icmp_seq="));
                if let Some(n) = seq.and_then(|n| n.parse::<u32>().ok()) {
                    let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    seen.push((n, std::time::Instant::now()));
                }
            }
        });
        PingSession { child, replies }
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
