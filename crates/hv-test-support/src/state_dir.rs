//! A temporary directory for a test's host state whose processes end with it.
//!
//! The VMMs a host layer starts outlive the process that started them by design (each layer
//! restarts without stopping the guests below it), so a test that fails half-way would leave
//! its guests running, slowing every test after it. [`StateDir`] kills, when dropped, every
//! process whose command line names its directory (a VMM's API socket, log and serial files
//! live there), then removes the directory.
//!
//! ```no_run
//! let state = hv_test_support::state_dir::StateDir::new();
//! // ... start VMs with their state under state.path() ...
//! drop(state); // no process of it is left
//! ```

use std::path::Path;

/// A temporary directory; see the [module docs](self).
#[derive(Debug)]
pub struct StateDir {
    dir: tempfile::TempDir,
}

impl StateDir {
    /// Makes a fresh temporary directory.
    pub fn new() -> StateDir {
        StateDir { dir: tempfile::tempdir().expect("make a temporary state directory") }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for StateDir {
    fn default() -> Self {
        StateDir::new()
    }
}

/// The ids of the processes whose command line mentions `needle`.
pub fn processes_naming(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.path().to_str() else { return };
        for pid in processes_naming(dir) {
            // SAFETY: kill(2) takes plain integers; a pid that ended meanwhile gets ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_process_naming_the_directory_ends_with_it() {
        let state = StateDir::new();
        let file = state.path().join("console.log");
        std::fs::write(&file, "").unwrap();
        let mut tail = std::process::Command::new("tail").arg("-f").arg(&file).spawn().unwrap();
        let other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let dir = state.path().to_path_buf();
        drop(state);
        assert_eq!(tail.wait().unwrap().signal(), Some(libc::SIGKILL), "tail named the dir");
        assert!(!dir.exists(), "the directory is removed");
        let mut other = other;
        assert_eq!(other.try_wait().unwrap(), None, "a process not naming it runs on");
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
