//! Interactive serial consoles, as `virsh console` has them: the daemon turns a client's
//! connection into a raw byte stream both ways between the client and the domain's pty (the
//! `hv-vmm --serial pty` of a `<serial type='pty'>` domain). A domain whose serial goes to a
//! file or to the host's log streams that file instead (output only; input is discarded).
//!
//! One session per domain at a time: a second is refused ([`ConsoleError::Busy`]) unless
//! forced, which ends the first (virsh's `console --force`). A session ends when the client
//! leaves, when it is forced off, or when the domain stops (its VMM closes the pty).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::host::Host;

/// The `Upgrade:` protocol name of a console connection.
pub const UPGRADE_PROTOCOL: &str = "hv-console";

/// How often a session checks that its domain is still active.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Why a console session could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    /// Another client holds the domain's console.
    #[error("operation failed: Active console session exists for this domain")]
    Busy,
}

/// Where a domain's console is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleSource {
    /// The terminal end of its VMM's pty (`/dev/pts/N`): both ways.
    Pty(PathBuf),
    /// The file its serial output is appended to: output only.
    Log(PathBuf),
}

/// The console sessions of one daemon, by domain name.
#[derive(Debug, Default)]
pub struct ConsoleSessions {
    next: AtomicU64,
    active: Mutex<HashMap<String, (u64, watch::Sender<bool>)>>,
}

/// A claimed console; dropping it frees the domain's console (unless a forced session took it).
#[derive(Debug)]
pub struct Session {
    sessions: Arc<ConsoleSessions>,
    domain: String,
    id: u64,
    stop: watch::Receiver<bool>,
}

impl ConsoleSessions {
    /// Claims `domain`'s console; with `force`, a session that holds it is told to end.
    pub fn claim(self: &Arc<Self>, domain: &str, force: bool) -> Result<Session, ConsoleError> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, stop)) = active.get(domain) {
            if !force {
                return Err(ConsoleError::Busy);
            }
            let _ = stop.send(true);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(false);
        active.insert(domain.to_owned(), (id, tx));
        Ok(Session { sessions: self.clone(), domain: domain.to_owned(), id, stop: rx })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut active = self.sessions.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.get(&self.domain).is_some_and(|(id, _)| *id == self.id) {
            active.remove(&self.domain);
        }
    }
}

/// Runs a claimed session: bytes between `client` and the domain's console until the client
/// leaves, the session is forced off, or the domain stops.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    client: S,
    source: &ConsoleSource,
    mut session: Session,
    host: Arc<Host>,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(client);
    let r = match source {
        ConsoleSource::Pty(path) => {
            pump_pty(&mut rd, &mut wr, path, &mut session.stop, &host, &session.domain).await
        }
        ConsoleSource::Log(path) => {
            pump_log(&mut rd, &mut wr, path, &mut session.stop, &host, &session.domain).await
        }
    };
    let _ = wr.shutdown().await;
    r
}

async fn active(host: &Host, domain: &str) -> bool {
    host.state(domain).await.map(|(s, _)| s.is_active()).unwrap_or(false)
}

/// Opens the terminal end of a pty, non-blocking and never as a controlling terminal.
fn open_pty(path: &Path) -> std::io::Result<AsyncFd<std::fs::File>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
        .open(path)?;
    // SAFETY: the File owns its descriptor and moves into the AsyncFd, which owns it from
    // then on: nothing else can close or replace it while it is registered.
    unsafe { AsyncFd::register(f) }.map_err(|e| e.into_parts().1)
}

async fn write_pty(fd: &AsyncFd<std::fs::File>, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|f| f.get_ref().write(bytes)) {
            Ok(Ok(n)) => bytes = bytes.get(n..).unwrap_or_default(),
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

async fn pump_pty<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut R,
    wr: &mut W,
    path: &Path,
    stop: &mut watch::Receiver<bool>,
    host: &Host,
    domain: &str,
) -> std::io::Result<()> {
    let pty = open_pty(path)?;
    let mut from_pty = [0u8; 4096];
    let mut from_client = [0u8; 4096];
    let mut check = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            ready = pty.readable() => {
                let mut guard = ready?;
                match guard.try_io(|f| f.get_ref().read(&mut from_pty)) {
                    Ok(Ok(n)) if n > 0 => {
                        wr.write_all(&from_pty[..n]).await?;
                        wr.flush().await?;
                    }
                    // End of file or EIO: the VMM closed its end, the domain stopped.
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => {}
                }
            }
            n = rd.read(&mut from_client) => {
                match n? {
                    0 => return Ok(()),
                    n => write_pty(&pty, &from_client[..n]).await?,
                }
            }
            _ = stop.changed() => return Ok(()),
            _ = check.tick() => {
                if !active(host, domain).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Reads what `path` holds from `offset` (at most 64 KiB).
fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut buf);
    buf
}

async fn pump_log<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut R,
    wr: &mut W,
    path: &Path,
    stop: &mut watch::Receiver<bool>,
    host: &Host,
    domain: &str,
) -> std::io::Result<()> {
    let mut offset = 0u64;
    let mut discard = [0u8; 1024];
    let mut last_check = tokio::time::Instant::now();
    loop {
        let p = path.to_owned();
        let chunk =
            tokio::task::spawn_blocking(move || read_from(&p, offset)).await.unwrap_or_default();
        if !chunk.is_empty() {
            offset += chunk.len() as u64;
            wr.write_all(&chunk).await?;
            wr.flush().await?;
            continue;
        }
        if last_check.elapsed() >= CHECK_EVERY {
            if !active(host, domain).await {
                return Ok(());
            }
            last_check = tokio::time::Instant::now();
        }
        tokio::select! {
            n = rd.read(&mut discard) => {
                if n? == 0 {
                    return Ok(());
                }
            }
            _ = stop.changed() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_session_per_domain_unless_forced() {
        let s = Arc::new(ConsoleSessions::default());
        let first = s.claim("web", false).unwrap();
        assert_eq!(s.claim("web", false).unwrap_err(), ConsoleError::Busy);
        let other = s.claim("db", false).unwrap();
        let stop = first.stop.clone();
        let forced = s.claim("web", true).unwrap();
        assert!(*stop.borrow(), "the first session was not told to end");
        // The first one ending does not free the console the forced one holds.
        drop(first);
        assert_eq!(s.claim("web", false).unwrap_err(), ConsoleError::Busy);
        drop(forced);
        drop(other);
        assert!(s.claim("web", false).is_ok());
        assert!(s.claim("db", false).is_ok());
    }
}
