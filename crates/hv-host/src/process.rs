//! Processes the host supervises (a domain's `hv-vmm`), recognised again after a restart.
//!
//! A pid alone is not an identity: once a process exits its pid can be reused. A
//! [`ProcessRecord`] is the pid plus the process's start time (field 22 of `/proc/PID/stat`,
//! in clock ticks since boot), which no later process with the same pid can share.

use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process, identified across restarts of its supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks after boot.
    pub start_time: u64,
}

/// Field 22 (start time) and field 3 (state) of `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

impl ProcessRecord {
    /// The record for the live process `pid`, if there is one.
    pub fn of(pid: u32) -> Option<ProcessRecord> {
        proc_stat(pid).map(|(start_time, _)| ProcessRecord { pid, start_time })
    }

    /// True while this very process (same pid and start time) exists and is not a zombie.
    pub fn is_running(&self) -> bool {
        matches!(proc_stat(self.pid), Some((start, state)) if start == self.start_time && state != 'Z')
    }

    /// Sends `sig` if the process is still this one.
    pub fn signal(&self, sig: Signal) -> nix::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        signal::kill(Pid::from_raw(self.pid as i32), sig)
    }

    /// Waits until the process is gone, up to `timeout`; true when it went.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the process and waits for it to go (at most `timeout`); true when gone.
    pub fn kill(&self, timeout: Duration) -> bool {
        let _ = self.signal(Signal::SIGKILL);
        self.wait_gone(timeout)
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn a_record_names_one_process_only() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let rec = ProcessRecord::of(child.id()).unwrap();
        assert!(rec.is_running());
        let impostor = ProcessRecord { start_time: rec.start_time + 1, ..rec };
        assert!(!impostor.is_running(), "same pid, other start time");
        // A child of ours stays a zombie until reaped; is_running already counts that as gone.
        assert!(rec.kill(Duration::from_secs(5)));
        child.wait().unwrap();
        assert!(!rec.is_running());
        assert!(ProcessRecord::of(u32::MAX / 2).is_none());
    }
}
