//! Leases and the lease file.
//!
//! The file is text, one lease a line after a version header, in the spirit of dnsmasq's:
//!
//! ```text
//! # hv-dhcp leases v1
//! 1795600000 52:54:00:12:34:56 192.168.100.10 guest1
//! 1795600042 52:54:00:12:34:57 192.168.100.11 *
//! ```
//!
//! (expiry in Unix seconds, MAC, address, host name or `*`). It is replaced atomically: written to
//! a temporary file beside it, fsynced, renamed over the old one, and the directory fsynced, so a
//! crash leaves either the old or the new file, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{sanitize_hostname, DhcpError, MacAddr};

const HEADER: &str = "# hv-dhcp leases v1";

/// One address lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The client's MAC address.
    pub mac: MacAddr,
    /// The leased address.
    pub ip: Ipv4Addr,
    /// The client's host name (from its reservation, else the one it sent), if any.
    pub hostname: Option<String>,
    /// When the lease ends (whole seconds).
    pub expires: SystemTime,
}

impl Lease {
    /// True while the lease has not expired at `now`.
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.expires > now
    }
}

/// What went wrong with a lease file (wrapped in [`DhcpError::LeaseFile`] with its path).
#[derive(Debug, thiserror::Error)]
pub enum LeaseFileError {
    /// An I/O operation failed (`op` says which).
    #[error("{op}: {source}")]
    Io {
        /// The failed operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A line is not a lease record.
    #[error("line {line}: {problem}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Reads every lease recorded in a lease file, expired ones included (see [`Lease::is_active`]).
/// A file that does not exist yet holds no leases.
pub fn read_leases(path: &Path) -> Result<Vec<Lease>, DhcpError> {
    let wrap = |source| DhcpError::LeaseFile { path: path.to_path_buf(), source };
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(wrap(LeaseFileError::Io { op: "read", source })),
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        None => return Ok(Vec::new()),
        Some((_, first)) if first.trim() == HEADER => {}
        Some(_) => return Err(wrap(LeaseFileError::Parse { line: 1, problem: "missing header" })),
    }
    let mut leases = Vec::new();
    for (i, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        leases.push(
            parse_line(line)
                .map_err(|problem| wrap(LeaseFileError::Parse { line: i + 1, problem }))?,
        );
    }
    Ok(leases)
}

fn parse_line(line: &str) -> Result<Lease, &'static str> {
    let mut fields = line.split_ascii_whitespace();
    let mut next = || fields.next().ok_or("too few fields");
    let expires: u64 = next()?.parse().map_err(|_| "bad expiry")?;
    let mac: MacAddr = next()?.parse().map_err(|_| "bad MAC address")?;
    let ip: Ipv4Addr = next()?.parse().map_err(|_| "bad IPv4 address")?;
    let hostname = match next()? {
        "*" => None,
        name => Some(sanitize_hostname(name).ok_or("bad host name")?),
    };
    if fields.next().is_some() {
        return Err("too many fields");
    }
    let expires = UNIX_EPOCH.checked_add(Duration::from_secs(expires)).ok_or("bad expiry")?;
    Ok(Lease { mac, ip, hostname, expires })
}

/// Replaces the lease file with `leases`, crash-safely (temporary file, fsync, rename, fsync of
/// the directory). The directory must exist.
pub fn write_leases(path: &Path, leases: &[Lease]) -> Result<(), DhcpError> {
    let wrap = |op, source| DhcpError::LeaseFile {
        path: path.to_path_buf(),
        source: LeaseFileError::Io { op, source },
    };
    let mut text = String::with_capacity(64 * (leases.len() + 1));
    text.push_str(HEADER);
    text.push('\n');
    for l in leases {
        let secs = l.expires.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        // Host names were sanitized on the way in; a bad one here would corrupt the file.
        let name = l.hostname.as_deref().and_then(sanitize_hostname).unwrap_or_else(|| "*".into());
        text.push_str(&format!("{secs} {} {} {name}\n", l.mac, l.ip));
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| wrap("create temporary file", e))?;
        f.write_all(text.as_bytes()).map_err(|e| wrap("write temporary file", e))?;
        f.sync_all().map_err(|e| wrap("fsync temporary file", e))?;
        fs::rename(&tmp, path).map_err(|e| wrap("rename temporary file over it", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| wrap("fsync directory", e))
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(n: u8, host: Option<&str>) -> Lease {
        Lease {
            mac: MacAddr([0x52, 0x54, 0, 0, 0, n]),
            ip: Ipv4Addr::new(10, 0, 0, n),
            hostname: host.map(String::from),
            expires: UNIX_EPOCH + Duration::from_secs(1_800_000_000 + u64::from(n)),
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.leases");
        assert_eq!(read_leases(&path).unwrap(), vec![]);
        let leases = vec![lease(10, Some("guest-a")), lease(11, None)];
        write_leases(&path, &leases).unwrap();
        assert_eq!(read_leases(&path).unwrap(), leases);
        write_leases(&path, &leases[1..]).unwrap();
        assert_eq!(read_leases(&path).unwrap(), leases[1..]);
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn corrupt_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.leases");
        for (text, want_line) in [
            ("garbage\n", 1),
            ("# hv-dhcp leases v1\n1 52:54:00:00:00:01 10.0.0.1 *\nx y z w\n", 3),
            ("# hv-dhcp leases v1\n1 52:54:00:00:00:01 10.0.0.1\n", 2),
            ("# hv-dhcp leases v1\n1 52:54:00:00:00:01 10.0.0.1 a b\n", 2),
        ] {
            fs::write(&path, text).unwrap();
            match read_leases(&path) {
                Err(DhcpError::LeaseFile {
                    path: p,
                    source: LeaseFileError::Parse { line, .. },
                }) => {
                    assert_eq!(p, path);
                    assert_eq!(line, want_line, "{text:?}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn write_into_missing_directory_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope/net.leases");
        let err = write_leases(&path, &[lease(1, None)]).unwrap_err();
        assert!(err.to_string().contains("net.leases"), "{err}");
    }
}
