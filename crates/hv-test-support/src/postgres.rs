//! A real PostgreSQL server for tests, in a temporary directory, stopped when dropped.
//!
//! Debian's `postgresql` package (installed by `.ci/setup`) provides the binaries under
//! `/usr/lib/postgresql/<version>/bin`. The server refuses to run as root, so `initdb` and
//! `postgres` run as the `postgres` user the package creates; it listens only on a Unix
//! socket in the temporary directory (no TCP port, nothing another test could reach).
//!
//! ```no_run
//! # fn t() {
//! let Some(pg) = hv_test_support::postgres::PgServer::start() else {
//!     hv_test_support::require!(false, hv_test_support::postgres::PG_MISSING);
//!     return;
//! };
//! let url = pg.url(); // "host=/tmp/... user=postgres dbname=postgres"
//! # let _ = url;
//! # }
//! ```

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// What to say when PostgreSQL is not installed (for `require!`).
pub const PG_MISSING: &str =
    "PostgreSQL server binaries missing (apt-get install postgresql), or not root";

/// A running server; dropping it stops the server and removes its directory.
#[derive(Debug)]
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    uid: u32,
    gid: u32,
    child: Option<Child>,
}

/// The directory of the newest installed server binaries.
pub fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").is_file() && p.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

/// The uid and gid of the `postgres` user, from `/etc/passwd`.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == "postgres")
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn chown(path: &Path, uid: u32, gid: u32) -> bool {
    Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

impl PgServer {
    /// Starts a fresh server; `None` when PostgreSQL is not installed or the process is not
    /// root. Panics if an installed server fails to start (that is a real failure).
    pub fn start() -> Option<PgServer> {
        let bin = pg_bin()?;
        if !crate::is_root() {
            return None;
        }
        let (uid, gid) = postgres_user()?;
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hv-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("create the server directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(chown(&dir, uid, gid), "chown {} to postgres", dir.display());
        let out = Command::new(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "-D"])
            .arg(dir.join("data"))
            .uid(uid)
            .gid(gid)
            .current_dir(&dir)
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let child = Command::new(bin.join("postgres"))
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-k")
            .arg(&dir)
            .args(["-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=200"])
            .uid(uid)
            .gid(gid)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let server = PgServer { dir, bin, uid, gid, child: Some(child) };
        server.wait_ready();
        Some(server)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(&self.dir)
                .args(["-U", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not become ready in 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The connection string (libpq key=value form) of the `postgres` database.
    pub fn url(&self) -> String {
        format!("host={} user=postgres dbname=postgres", self.dir.display())
    }

    /// The socket directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new(self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-w", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
