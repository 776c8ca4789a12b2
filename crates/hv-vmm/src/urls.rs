//! The URLs of the state endpoints, parsed into types at the edge: `file:///DIR` for
//! snapshots, `unix:/PATH` and `tcp:HOST:PORT` for migrations (Cloud Hypervisor's forms).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why a URL is refused (an HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Not `file:///DIR`.
    #[error("{0:?} is not a snapshot URL: give file:///DIR (an absolute path)")]
    NotFile(String),
    /// Not `unix:/PATH` or `tcp:HOST:PORT`.
    #[error("{0:?} is not a migration URL: give unix:/PATH or tcp:HOST:PORT")]
    NotMigration(String),
    /// A `tcp:` URL whose host and port do not resolve.
    #[error("{url:?}: {reason}")]
    Address {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// The directory of a `file:///DIR` URL.
pub fn snapshot_dir(url: &str) -> Result<PathBuf, UrlError> {
    let path = url.strip_prefix("file://").ok_or_else(|| UrlError::NotFile(url.into()))?;
    let path = Path::new(path);
    if !path.is_absolute() || path.as_os_str().len() <= 1 {
        return Err(UrlError::NotFile(url.into()));
    }
    Ok(path.to_path_buf())
}

/// Where a migration goes or comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationUrl {
    /// `unix:/PATH`.
    Unix(PathBuf),
    /// `tcp:HOST:PORT`.
    Tcp(SocketAddr),
}

impl MigrationUrl {
    /// Parses `unix:/PATH` or `tcp:HOST:PORT` (the host resolved now).
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        if let Some(path) = url.strip_prefix("unix:") {
            let path = Path::new(path);
            if !path.is_absolute() || path.file_name().is_none() {
                return Err(UrlError::NotMigration(url.into()));
            }
            return Ok(MigrationUrl::Unix(path.to_path_buf()));
        }
        let Some(addr) = url.strip_prefix("tcp:") else {
            return Err(UrlError::NotMigration(url.into()));
        };
        let address = |reason: String| UrlError::Address { url: url.into(), reason };
        let mut addrs = addr.to_socket_addrs().map_err(|e| address(e.to_string()))?;
        let addr = addrs.next().ok_or_else(|| address("resolves to no address".into()))?;
        Ok(MigrationUrl::Tcp(addr))
    }

    /// Connects to a destination listening there.
    pub fn connect(&self) -> std::io::Result<Stream> {
        Ok(match self {
            MigrationUrl::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
            MigrationUrl::Tcp(addr) => {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        })
    }

    /// Listens there (a stale Unix socket at the path is replaced).
    pub fn listen(&self) -> std::io::Result<Listener> {
        Ok(match self {
            MigrationUrl::Unix(path) => {
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(path)?;
                }
                Listener::Unix(UnixListener::bind(path)?, path.clone())
            }
            MigrationUrl::Tcp(addr) => Listener::Tcp(TcpListener::bind(addr)?),
        })
    }
}

/// A destination listening for its source.
#[derive(Debug)]
pub enum Listener {
    /// On a Unix socket at this path.
    Unix(UnixListener, PathBuf),
    /// On TCP.
    Tcp(TcpListener),
}

impl Listener {
    /// Accepts one connection and stops listening (a Unix socket's file is removed).
    pub fn accept(self) -> std::io::Result<Stream> {
        Ok(match self {
            Listener::Unix(listener, path) => {
                let accepted = listener.accept();
                let _ = std::fs::remove_file(path);
                Stream::Unix(accepted?.0)
            }
            Listener::Tcp(listener) => {
                let (s, _) = listener.accept()?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        })
    }
}

impl std::fmt::Display for MigrationUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrationUrl::Unix(p) => write!(f, "unix:{}", p.display()),
            MigrationUrl::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A migration's connection.
#[derive(Debug)]
pub enum Stream {
    /// Over a Unix socket.
    Unix(UnixStream),
    /// Over TCP.
    Tcp(TcpStream),
}

impl Stream {
    /// Bounds every read and write to `timeout` (none when zero), so a peer that stops
    /// answering ends the migration instead of holding it forever.
    pub fn set_timeout(&self, timeout: std::time::Duration) -> std::io::Result<()> {
        let t = (!timeout.is_zero()).then_some(timeout);
        match self {
            Stream::Unix(s) => s.set_read_timeout(t).and_then(|()| s.set_write_timeout(t)),
            Stream::Tcp(s) => s.set_read_timeout(t).and_then(|()| s.set_write_timeout(t)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_types_or_are_refused() {
        assert_eq!(snapshot_dir("file:///var/snap").unwrap(), Path::new("/var/snap"));
        for bad in ["file://rel/dir", "file:///", "/var/snap", "http://x/y", ""] {
            assert!(snapshot_dir(bad).is_err(), "{bad}");
        }
        assert_eq!(
            MigrationUrl::parse("unix:/run/m.sock").unwrap(),
            MigrationUrl::Unix("/run/m.sock".into())
        );
        assert_eq!(
            MigrationUrl::parse("tcp:127.0.0.1:6000").unwrap(),
            MigrationUrl::Tcp("127.0.0.1:6000".parse().unwrap())
        );
        for bad in ["unix:rel.sock", "unix:", "unix:/", "tcp:127.0.0.1", "tcp:", "udp:1:2", "x"] {
            assert!(MigrationUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
