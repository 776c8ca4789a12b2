//! A network's DHCP server as a process of its own (what dnsmasq is to libvirt): the process
//! runs [`NetworkManager::run_dhcp_daemon`] until SIGTERM or SIGINT, after recording itself in
//! the network's runtime state; `destroy` signals it and waits for it to go.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use super::{DhcpProcess, NetworkError, NetworkManager, Result};
use crate::dhcp::DhcpServer;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Field 22 (start time) and field 3 (state) of `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

impl DhcpProcess {
    /// The record for process `pid`, if it exists.
    pub fn of(pid: u32) -> Option<DhcpProcess> {
        proc_stat(pid).map(|(start_time, _)| DhcpProcess { pid, start_time })
    }

    /// True while the recorded process (same pid and start time) runs and is not a zombie.
    pub fn is_running(&self) -> bool {
        matches!(proc_stat(self.pid), Some((start, state)) if start == self.start_time && state != 'Z')
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to end, then SIGKILL.
    pub fn stop(&self, network: &str, timeout: Duration) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let pid = Pid::from_raw(self.pid as i32);
        let fail = |why: String| NetworkError::DhcpProcess {
            name: network.to_string(),
            pid: self.pid,
            why,
        };
        signal::kill(pid, Signal::SIGTERM).map_err(|e| fail(format!("SIGTERM: {e}")))?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = signal::kill(pid, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(100));
        if self.is_running() {
            return Err(fail("still running after SIGKILL".into()));
        }
        Ok(())
    }
}

impl NetworkManager {
    /// Runs the network's DHCP server in this process until SIGTERM or SIGINT: the body of a
    /// per-network DHCP process (hvctl's `net-dhcp-serve`). The process records itself in the
    /// network's runtime state once its socket is bound, so a supervisor can wait for that.
    pub fn run_dhcp_daemon(&self, name: &str) -> Result<()> {
        let config = self.dhcp_config(name)?;
        let server = DhcpServer::new(config)
            .map_err(|source| NetworkError::Dhcp { name: name.to_string(), source })?;
        let action =
            SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
        for sig in [Signal::SIGTERM, Signal::SIGINT] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe { signal::sigaction(sig, &action) }.map_err(|e| NetworkError::DhcpProcess {
                name: name.to_string(),
                pid: std::process::id(),
                why: format!("install {sig} handler: {e}"),
            })?;
        }
        let me = DhcpProcess::of(std::process::id()).ok_or_else(|| NetworkError::DhcpProcess {
            name: name.to_string(),
            pid: std::process::id(),
            why: "cannot read own /proc entry".into(),
        })?;
        self.record_dhcp_process(name, Some(me))?;
        let result = server
            .run_until(&STOP)
            .map_err(|source| NetworkError::Dhcp { name: name.to_string(), source });
        // Forget ourselves unless someone else took over meanwhile.
        if self.dhcp_process(name)?.map(|p| p.pid) == Some(me.pid) {
            self.record_dhcp_process(name, None)?;
        }
        result
    }

    /// Waits until the network's runtime state names process `pid` as its DHCP server (it has
    /// bound its socket), or `timeout` passes; true when it did.
    pub fn wait_dhcp_process(&self, name: &str, pid: u32, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.dhcp_process(name)?.is_some_and(|p| p.pid == pid) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
