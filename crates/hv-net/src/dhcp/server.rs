//! The DHCP server's socket and loop: UDP port 67 bound to one interface, each datagram handed
//! to the [`DhcpCore`], each reply sent where RFC 2131 says.
//!
//! An embedder either runs [`DhcpServer::run_until`] on a thread of its own (as hvctl's
//! per-network server process does) or lets [`DhcpServer::spawn`] start that thread and keeps
//! the [`DhcpHandle`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use dhcproto::Encodable;
use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
};

use super::{DhcpConfig, DhcpCore, DhcpError, DhcpStats, Lease};

/// The DHCP server port.
pub const SERVER_PORT: u16 = 67;

/// How long the loop waits for a packet before it looks at its stop flag and the clock.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How often expired leases are reclaimed while no packets arrive.
const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// Larger than any DHCP message a client on an Ethernet link sends.
const RECV_BUFFER: usize = 4096;

/// A DHCP server for one network: its socket and its [`DhcpCore`].
#[derive(Debug)]
pub struct DhcpServer {
    socket: UdpSocket,
    core: Arc<Mutex<DhcpCore>>,
    interface: String,
}

impl DhcpServer {
    /// Validates `config`, reloads the lease file, and binds UDP port 67 on `config.interface`
    /// with `SO_BINDTODEVICE` (set before binding, so servers on different bridges run side by
    /// side while a second server on the same bridge, or any server when another program holds
    /// port 67 on all interfaces, fails with "Address in use") and `SO_BROADCAST`. Needs
    /// `CAP_NET_RAW` and `CAP_NET_BIND_SERVICE` (root).
    pub fn new(config: DhcpConfig) -> Result<Self, DhcpError> {
        let interface = config.interface.clone();
        let core = DhcpCore::new(config, SystemTime::now())?;
        let socket = open_socket(&interface)?;
        Ok(DhcpServer { socket, core: Arc::new(Mutex::new(core)), interface })
    }

    /// Starts a server for `config` on a thread of its own (named `dhcp-<interface>`). Errors in
    /// the configuration, the lease file or the socket are returned here, before the thread runs.
    pub fn spawn(config: DhcpConfig) -> Result<DhcpHandle, DhcpError> {
        let server = DhcpServer::new(config)?;
        let stop = Arc::new(AtomicBool::new(false));
        let core = Arc::clone(&server.core);
        let interface = server.interface.clone();
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("dhcp-{interface}"))
            .spawn(move || server.run_until(&flag))
            .map_err(|source| DhcpError::Thread { interface: interface.clone(), source })?;
        Ok(DhcpHandle { stop, thread: Some(thread), core, interface })
    }

    /// The interface served.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The current leases, ordered by address.
    pub fn leases(&self) -> Vec<Lease> {
        lock(&self.core).leases()
    }

    /// The counters so far.
    pub fn stats(&self) -> DhcpStats {
        lock(&self.core).stats()
    }

    /// Takes the last lease-file error, if one happened since the last call (the server keeps
    /// running and retries the write).
    pub fn take_error(&self) -> Option<DhcpError> {
        lock(&self.core).take_error()
    }

    /// Serves until `stop` becomes true, noticing it within about 200 ms. Socket errors while
    /// running (an interface going down, say) are counted and the loop goes on; only failing to
    /// set up the wait is an error.
    pub fn run_until(&self, stop: &AtomicBool) -> Result<(), DhcpError> {
        let sock_err =
            |op, source| DhcpError::Socket { interface: self.interface.clone(), op, source };
        self.socket
            .set_read_timeout(Some(POLL_INTERVAL))
            .map_err(|e| sock_err("set SO_RCVTIMEO", e))?;
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut last_tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match self.socket.recv_from(&mut buf) {
                Ok((len, _from)) => self.serve(&buf[..len]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Anything else (ENETDOWN...) is transient from where we stand: wait and retry.
                Err(_) => std::thread::sleep(POLL_INTERVAL),
            }
            if last_tick.elapsed() >= TICK_INTERVAL {
                last_tick = Instant::now();
                let mut core = lock(&self.core);
                // A failed write is kept for take_error() and retried at the next tick.
                if let Err(e) = core.tick(SystemTime::now()) {
                    core.record_persist_error(e);
                }
            }
        }
        Ok(())
    }

    fn serve(&self, packet: &[u8]) {
        let mut core = lock(&self.core);
        let request = match super::decode_request(packet) {
            Ok(msg) => msg,
            Err(reason) => {
                core.count_drop(reason);
                return;
            }
        };
        let Some(reply) = core.handle(&request, SystemTime::now()) else { return };
        let dest = super::reply_destination(&request, &reply);
        let sent =
            reply.to_vec().ok().map(|bytes| self.socket.send_to(&bytes, SocketAddr::V4(dest)));
        if !matches!(sent, Some(Ok(_))) {
            core.count_send_error();
        }
    }
}

/// A running [`DhcpServer`] thread. Dropping it stops the server too.
#[derive(Debug)]
pub struct DhcpHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), DhcpError>>>,
    core: Arc<Mutex<DhcpCore>>,
    interface: String,
}

impl DhcpHandle {
    /// The interface served.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The current leases, ordered by address.
    pub fn leases(&self) -> Vec<Lease> {
        lock(&self.core).leases()
    }

    /// The counters so far.
    pub fn stats(&self) -> DhcpStats {
        lock(&self.core).stats()
    }

    /// Takes the last lease-file error, if one happened since the last call (the server keeps
    /// running and retries the write).
    pub fn take_error(&self) -> Option<DhcpError> {
        lock(&self.core).take_error()
    }

    /// Stops the server and waits for its thread (at most about 200 ms); returns what the loop
    /// returned.
    pub fn stop(mut self) -> Result<(), DhcpError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), DhcpError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(DhcpError::Panicked { interface: self.interface.clone() })),
            None => Ok(()),
        }
    }
}

impl Drop for DhcpHandle {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// Locks the core; a poisoned lock (a panic elsewhere while holding it) still yields the core,
/// whose state is updated only by whole operations.
fn lock(core: &Mutex<DhcpCore>) -> MutexGuard<'_, DhcpCore> {
    core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn open_socket(interface: &str) -> Result<UdpSocket, DhcpError> {
    let err = |op, errno: nix::Error| DhcpError::Socket {
        interface: interface.to_string(),
        op,
        source: std::io::Error::from(errno),
    };
    let fd: OwnedFd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| err("socket", e))?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(|e| err("set SO_BROADCAST", e))?;
    setsockopt(&fd, sockopt::BindToDevice, &interface.into())
        .map_err(|e| err("set SO_BINDTODEVICE", e))?;
    let addr = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT));
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map_err(|e| err("bind 0.0.0.0:67", e))?;
    Ok(UdpSocket::from(fd))
}
