//! The serial port's interactive backends, as Cloud Hypervisor has them: `--serial pty` (a
//! pseudo-terminal whose other end, `/dev/pts/N`, a user opens with `screen` or hvd's
//! console) and `--serial socket=PATH` (a Unix socket; one client at a time).
//!
//! A [`SerialConsole`] lives as long as the VM's configuration, across reboots (an attached
//! client stays attached), and is made anew in a process that restores or receives a VM (a
//! new pty; the configuration then names it). Output from the guest is written without ever
//! blocking the vCPU: bytes nobody can take (no client, a full pty buffer) are dropped, as on a
//! serial line with nothing attached. Input is read by one thread, which feeds it to the VM's
//! UART ([`hv_core::Vm::serial_input`], which holds up to 4 KiB beyond the 16550's FIFO) and
//! waits while the guest has not read what it holds.
//!
//! The pty is in raw mode (no echo, no line editing, no CR/LF translation), so the bytes are
//! the guest's; this process keeps the terminal end open too, so the pty stays usable
//! between clients.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use hv_core::Vm;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

use crate::config::{ConsoleMode, VmConfig};

/// How long the input thread waits in `poll` before looking at its stop flag.
const POLL_MS: u16 = 100;
/// How long it waits for the guest to read held input before offering the rest again.
const FEED_WAIT: Duration = Duration::from_millis(5);

/// Why a serial console could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The pseudo-terminal could not be made.
    #[error("serial pty: {what}: {source}")]
    Pty {
        /// The step that failed.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Unix socket could not be bound.
    #[error("serial socket {}: {source}", path.display())]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The input thread could not be started.
    #[error("serial console thread: {0}")]
    Thread(#[source] std::io::Error),
}

fn pty_err(what: &'static str) -> impl FnOnce(Errno) -> ConsoleError {
    move |e| ConsoleError::Pty { what, source: e.into() }
}

/// The host end of the console.
enum Backend {
    /// A pty: the master, and the terminal end kept open (so reads never fail with EIO when
    /// no client has it open).
    Pty { master: PtyMaster, _terminal: File },
    /// A listening Unix socket and its client, if one is connected.
    Socket { listener: UnixListener, client: Mutex<Option<Arc<UnixStream>>> },
}

impl Backend {
    /// Writes guest output, never blocking and never failing: what cannot be taken is dropped.
    fn write_out(&self, buf: &[u8]) {
        match self {
            Backend::Pty { master, .. } => {
                // Non-blocking: EAGAIN (the pty's buffer is full: nobody reads) drops the rest.
                let _ = write_all_nonblocking(master.as_fd(), buf);
            }
            Backend::Socket { client, .. } => {
                let mut guard = client.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(stream) = guard.as_ref() {
                    match write_all_nonblocking(stream.as_fd(), buf) {
                        Ok(()) | Err(Errno::EAGAIN) => {}
                        // The client went away: the input thread sees it too.
                        Err(_) => *guard = None,
                    }
                }
            }
        }
    }
}

fn write_all_nonblocking(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The guest's serial output, for hv-core's UART (written on vCPU threads).
struct Output(Arc<Backend>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_out(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A pty or socket serial console and the thread that reads its input.
pub struct SerialConsole {
    backend: Arc<Backend>,
    /// The VM input goes to (none between a shutdown and the next boot: input is dropped).
    target: Arc<Mutex<Weak<Vm>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The pty's terminal (`/dev/pts/N`) or the socket's path.
    path: PathBuf,
    /// The socket file this process bound (device, inode), removed on drop only if still ours.
    bound: Option<(u64, u64)>,
}

impl std::fmt::Debug for SerialConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialConsole").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SerialConsole {
    /// A new pseudo-terminal in raw mode, its terminal end at the returned console's
    /// [`path`](Self::path).
    pub fn pty() -> Result<Self, ConsoleError> {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .map_err(pty_err("posix_openpt"))?;
        grantpt(&master).map_err(pty_err("grantpt"))?;
        unlockpt(&master).map_err(pty_err("unlockpt"))?;
        let path = PathBuf::from(ptsname_r(&master).map_err(pty_err("ptsname"))?);
        let terminal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(&path)
            .map_err(|source| ConsoleError::Pty { what: "opening the terminal end", source })?;
        let mut t = tcgetattr(&terminal).map_err(pty_err("tcgetattr"))?;
        cfmakeraw(&mut t);
        tcsetattr(&terminal, SetArg::TCSANOW, &t).map_err(pty_err("tcsetattr"))?;
        set_nonblocking(master.as_fd()).map_err(pty_err("O_NONBLOCK"))?;
        log::info!("serial console on pty {}", path.display());
        Self::start(Backend::Pty { master, _terminal: terminal }, path, None)
    }

    /// A Unix socket listening at `path` (a socket file left there by an earlier process is
    /// replaced; any other file is an error).
    pub fn socket(path: &Path) -> Result<Self, ConsoleError> {
        let err = |source| ConsoleError::Socket { path: path.to_owned(), source };
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if !m.file_type().is_socket() {
                return Err(err(std::io::Error::from(std::io::ErrorKind::AlreadyExists)));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let bound = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        log::info!("serial console on socket {}", path.display());
        let backend = Backend::Socket { listener, client: Mutex::new(None) };
        Self::start(backend, path.to_owned(), bound)
    }

    fn start(
        backend: Backend,
        path: PathBuf,
        bound: Option<(u64, u64)>,
    ) -> Result<Self, ConsoleError> {
        let backend = Arc::new(backend);
        let target = Arc::new(Mutex::new(Weak::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (backend, target, stop) = (backend.clone(), target.clone(), stop.clone());
            std::thread::Builder::new()
                .name("serial-in".into())
                .spawn(move || input_loop(&backend, &target, &stop))
                .map_err(ConsoleError::Thread)?
        };
        Ok(Self { backend, target, stop, thread: Some(thread), path, bound })
    }

    /// The pty's terminal end (`/dev/pts/N`) or the socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A writer for the UART's output (any number of them share the console).
    pub fn output(&self) -> Box<dyn Write + Send> {
        Box::new(Output(self.backend.clone()))
    }

    /// Sends input to `vm` from now on.
    pub fn attach(&self, vm: &Arc<Vm>) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(vm);
    }
}

impl Drop for SerialConsole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Remove the socket file only if it is still the one bound here (a VM migrated to
        // another process on this host may have bound the same path since).
        let ours = std::fs::metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
        if self.bound.is_some() && ours == self.bound {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// Gives `bytes` to the attached VM, waiting while its UART holds all it can; drops them when
/// no VM is attached or the console stops.
fn deliver(target: &Mutex<Weak<Vm>>, stop: &AtomicBool, mut bytes: &[u8]) {
    while !bytes.is_empty() && !stop.load(Ordering::Relaxed) {
        let vm = target.lock().unwrap_or_else(|e| e.into_inner()).upgrade();
        let Some(vm) = vm else { return };
        let n = vm.serial_input(bytes);
        drop(vm);
        bytes = bytes.get(n..).unwrap_or_default();
        if !bytes.is_empty() {
            std::thread::sleep(FEED_WAIT);
        }
    }
}

/// The input thread: waits for bytes (and, for a socket, clients) until told to stop.
fn input_loop(backend: &Backend, target: &Mutex<Weak<Vm>>, stop: &AtomicBool) {
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        match backend {
            Backend::Pty { master, .. } => {
                let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut fds, PollTimeout::from(POLL_MS)), Ok(n) if n > 0) {
                    continue;
                }
                match nix::unistd::read(master.as_fd(), &mut buf) {
                    Ok(n) if n > 0 => deliver(target, stop, &buf[..n]),
                    Err(Errno::EAGAIN | Errno::EINTR) => {}
                    // Cannot happen while the terminal end is held open; do not spin if it does.
                    _ => std::thread::sleep(Duration::from_millis(u64::from(POLL_MS))),
                }
            }
            Backend::Socket { listener, client } => {
                let current = client.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                if let Some(c) = &current {
                    fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
                }
                if !matches!(poll(&mut fds, PollTimeout::from(POLL_MS)), Ok(n) if n > 0) {
                    continue;
                }
                let new_client = fds[0].any().unwrap_or(false);
                let readable = fds.get(1).and_then(PollFd::any).unwrap_or(false);
                drop(fds);
                if new_client {
                    accept_client(listener, client, current.is_some());
                }
                if let (true, Some(c)) = (readable, current) {
                    match nix::unistd::read(c.as_fd(), &mut buf) {
                        Ok(n) if n > 0 => deliver(target, stop, &buf[..n]),
                        Err(Errno::EAGAIN | Errno::EINTR) => {}
                        // End of stream or an error: the client is gone.
                        _ => {
                            let mut g = client.lock().unwrap_or_else(|e| e.into_inner());
                            if g.as_ref().is_some_and(|g| Arc::ptr_eq(g, &c)) {
                                *g = None;
                            }
                            log::info!("serial console client disconnected");
                        }
                    }
                }
            }
        }
    }
}

/// Accepts a waiting connection: it becomes the client, or is closed at once when one is
/// connected already.
fn accept_client(listener: &UnixListener, client: &Mutex<Option<Arc<UnixStream>>>, busy: bool) {
    let Ok((stream, _)) = listener.accept() else { return };
    if busy {
        log::warn!("serial console: refusing a second client (one at a time)");
        return;
    }
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    log::info!("serial console client connected");
    *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(stream));
}

/// The console `config.serial` asks for, kept in `slot` (made there if missing, or if it no
/// longer matches), and the UART output to give hv-core; `None` for the other modes, whose
/// output [`crate::machine`] opens itself. A pty's path is written into `config.serial.file`,
/// where Cloud Hypervisor's `vm.info` reports it.
pub fn prepare(
    slot: &mut Option<SerialConsole>,
    config: &mut VmConfig,
) -> Result<Option<Box<dyn Write + Send>>, ConsoleError> {
    let serial = &mut config.serial;
    let wanted = match serial.mode {
        ConsoleMode::Pty => None,
        ConsoleMode::Socket => serial.socket.clone(),
        _ => {
            *slot = None;
            return Ok(None);
        }
    };
    let matches = slot.as_ref().is_some_and(|c| match (&wanted, &*c.backend) {
        (None, Backend::Pty { .. }) => true,
        (Some(p), Backend::Socket { .. }) => c.path == *p,
        _ => false,
    });
    if !matches {
        *slot = None;
        *slot = Some(match &wanted {
            None => SerialConsole::pty()?,
            Some(p) => SerialConsole::socket(p)?,
        });
    }
    let Some(console) = slot.as_ref() else { return Ok(None) };
    if wanted.is_none() {
        serial.file = Some(console.path.clone());
    }
    Ok(Some(console.output()))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn pty_output_reaches_the_terminal_end_unchanged() {
        let c = SerialConsole::pty().unwrap();
        assert!(c.path().starts_with("/dev/pts"), "{}", c.path().display());
        let mut term = std::fs::OpenOptions::new().read(true).open(c.path()).unwrap();
        let mut out = c.output();
        // Raw mode: "\n" is not turned into "\r\n", nothing is echoed back.
        out.write_all(b"hello\n").unwrap();
        let mut buf = [0u8; 6];
        term.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello\n");
    }

    #[test]
    fn output_with_nobody_reading_never_blocks() {
        let c = SerialConsole::pty().unwrap();
        let mut out = c.output();
        // Far more than a pty buffers: must return (dropping the excess), not block.
        for _ in 0..1024 {
            out.write_all(&[b'x'; 1024]).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let s = SerialConsole::socket(&dir.path().join("s")).unwrap();
        s.output().write_all(b"no client").unwrap();
    }

    #[test]
    fn a_socket_takes_one_client_and_its_file_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.sock");
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(SerialConsole::socket(&dir.path().join("file")).is_err());
        let c = SerialConsole::socket(&path).unwrap();
        let first = UnixStream::connect(&path).unwrap();
        // Wait until the input thread has taken it as the client.
        let mut out = c.output();
        first.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = [0u8; 2];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            out.write_all(b"ok").unwrap();
            std::thread::sleep(Duration::from_millis(20));
            let mut probe = first.try_clone().unwrap();
            probe.set_nonblocking(true).unwrap();
            if probe.read(&mut got).is_ok_and(|n| n > 0) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the client never got output");
        }
        let mut second = UnixStream::connect(&path).unwrap();
        second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Refused: closed at once.
        assert_eq!(second.read(&mut got).unwrap_or(0), 0);
        drop(c);
        assert!(!path.exists());
    }
}
