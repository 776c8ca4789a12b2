//! One queue pair's worker: the RX and TX queues, the pair's backend, and the fds its thread
//! waits on.
//!
//! Either queue may be missing: a driver need not make every queue ready (a transmit-only
//! driver is legal). Without an RX queue the backend is never read (frames for the guest stay
//! in the host's queue, as for a NIC without receive buffers); without a TX queue nothing is
//! sent.
//!
//! The thread waits on five things: the RX and TX queue eventfds (the guest's kicks), the
//! backend (a frame to receive), and one timer per direction for the rate limiter. The backend
//! sits in an epoll set of its own that the thread polls, so it can be switched off while the
//! guest has no RX buffers, the limiter says wait, or the pair is disabled: a level-triggered
//! TAP that stays readable would otherwise wake the thread in a loop.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use hv_core::virtio::{ActiveQueue, Interrupt};
use hv_mem::GuestMemory;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::queue_handler::{NetQueueHandler, QueueHandlerError, RxWait};

pub(crate) const RX_KICK: u64 = 0;
pub(crate) const TX_KICK: u64 = 1;
pub(crate) const BACKEND: u64 = 2;
pub(crate) const RX_TIMER: u64 = 3;
pub(crate) const TX_TIMER: u64 = 4;

/// The worker's own descriptors.
#[derive(Debug)]
pub(crate) struct Fds {
    backend_poll: Epoll,
    backend_fd: RawFd,
    rx_timer: TimerFd,
    tx_timer: TimerFd,
}

impl Fds {
    pub(crate) fn new(backend_fd: RawFd) -> std::io::Result<Self> {
        let backend_poll = Epoll::new()?;
        backend_poll.ctl(ControlOperation::Add, backend_fd, EpollEvent::new(EventSet::IN, 0))?;
        let rx_timer = nonblocking_timer()?;
        let tx_timer = nonblocking_timer()?;
        Ok(Self { backend_poll, backend_fd, rx_timer, tx_timer })
    }
}

/// A timerfd whose read fails instead of blocking when it has not expired (it may have been
/// re-armed between the wake-up and the read).
fn nonblocking_timer() -> std::io::Result<TimerFd> {
    let t = TimerFd::new()?;
    // SAFETY: F_GETFL/F_SETFL on a timerfd we own; no memory is passed.
    let rc = unsafe {
        let flags = libc::fcntl(t.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(t.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(t)
}

/// What a pair's worker thread owns while the device is active.
#[derive(Debug)]
pub(crate) struct PairState {
    handler: NetQueueHandler,
    /// The receive queue, when the driver made it ready.
    rx: Option<ActiveQueue>,
    /// The transmit queue, when the driver made it ready.
    tx: Option<ActiveQueue>,
    mem: GuestMemory,
    interrupt: Interrupt,
    fds: Fds,
    backend_armed: bool,
    /// The driver uses this pair (multiqueue drivers switch pairs on and off).
    enabled: bool,
    /// A ring became unusable: do nothing until the driver resets the device.
    broken: bool,
}

impl PairState {
    /// The state of a pair over `handler`'s backend with the queues the driver made ready;
    /// fails only when the fds cannot be made.
    pub(crate) fn new(
        handler: NetQueueHandler,
        rx: Option<ActiveQueue>,
        tx: Option<ActiveQueue>,
        mem: GuestMemory,
        interrupt: Interrupt,
    ) -> Result<Self, Box<(std::io::Error, NetQueueHandler)>> {
        match Fds::new(handler.backend().raw_fd()) {
            Ok(fds) => Ok(Self {
                handler,
                rx,
                tx,
                mem,
                interrupt,
                fds,
                backend_armed: true,
                enabled: true,
                broken: false,
            }),
            Err(e) => Err(Box::new((e, handler))),
        }
    }

    /// The fds the worker waits on, with their tokens: the backend and the RX timer only with
    /// an RX queue, the TX timer only with a TX queue.
    pub(crate) fn watch_list(&self) -> Vec<(RawFd, u64)> {
        let mut list = Vec::with_capacity(5);
        if let Some(rx) = &self.rx {
            list.push((rx.notify.as_raw_fd(), RX_KICK));
            list.push((self.fds.backend_poll.as_raw_fd(), BACKEND));
            list.push((self.fds.rx_timer.as_raw_fd(), RX_TIMER));
        }
        if let Some(tx) = &self.tx {
            list.push((tx.notify.as_raw_fd(), TX_KICK));
            list.push((self.fds.tx_timer.as_raw_fd(), TX_TIMER));
        }
        list
    }

    /// Where the RX and TX queues stand for a snapshot. RX buffers the handler took from the
    /// avail ring but no frame has used yet are given back by rewinding the RX position over
    /// them, so the restored device takes them again (a frame read from the backend but not
    /// yet delivered is dropped, as a NIC drops one).
    pub(crate) fn positions(&self) -> Vec<hv_core::virtio::QueuePosition> {
        use virtio_queue::QueueT;
        let held = u16::try_from(self.handler.rx_buffers_held()).unwrap_or(u16::MAX);
        let at = |q: &ActiveQueue, rewind: u16| hv_core::virtio::QueuePosition {
            index: q.index,
            next_avail: q.queue.next_avail().wrapping_sub(rewind),
            next_used: q.queue.next_used(),
        };
        // Only the queues the driver made ready have a position.
        self.rx.iter().map(|q| at(q, held)).chain(self.tx.iter().map(|q| at(q, 0))).collect()
    }

    /// Gives the handler (and with it the backend) back.
    pub(crate) fn into_handler(self) -> NetQueueHandler {
        self.handler
    }

    /// Switches the pair on or off: a disabled pair does not receive (its backend is neither
    /// read nor, for a multiqueue TAP, given frames).
    pub(crate) fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
        if let Err(e) = self.handler.backend_mut().set_enabled(on) {
            log::warn!("virtio-net: cannot switch a backend queue {}: {e}", on_off(on));
        }
        // Switching on: the backend's readiness wakes the worker again.
        self.arm_backend(on);
    }

    pub(crate) fn handle(&mut self, token: u64) {
        match token {
            RX_KICK => {
                if let Some(rx) = &self.rx {
                    let _ = rx.notify.read();
                }
                self.run_rx();
            }
            TX_KICK => {
                if let Some(tx) = &self.tx {
                    let _ = tx.notify.read();
                }
                self.run_tx();
            }
            BACKEND => self.run_rx(),
            RX_TIMER => {
                let _ = self.fds.rx_timer.wait();
                self.run_rx();
            }
            TX_TIMER => {
                let _ = self.fds.tx_timer.wait();
                self.run_tx();
            }
            _ => {}
        }
    }

    fn run_rx(&mut self) {
        let Some(rx) = self.rx.as_mut() else { return self.arm_backend(false) };
        if self.broken || !self.enabled {
            return self.arm_backend(false);
        }
        match self.handler.process_rx(&mut rx.queue, &self.mem) {
            Ok(true) => self.interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(e) => return self.break_down("RX", e),
        }
        match self.handler.rx_wait() {
            None => self.arm_backend(true),
            Some(RxWait::Buffers | RxWait::Backend) => self.arm_backend(false),
            Some(RxWait::RateLimit(d)) => {
                self.arm_backend(false);
                arm_timer(&mut self.fds.rx_timer, d);
            }
        }
    }

    fn run_tx(&mut self) {
        let Some(tx) = self.tx.as_mut() else { return };
        if self.broken {
            return;
        }
        match self.handler.process_tx(&mut tx.queue, &self.mem) {
            Ok(true) => self.interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(e) => return self.break_down("TX", e),
        }
        if let Some(d) = self.handler.tx_throttled_for() {
            arm_timer(&mut self.fds.tx_timer, d);
        }
    }

    fn break_down(&mut self, which: &str, e: QueueHandlerError) {
        log::error!("virtio-net {which} queue stopped until the guest resets the device: {e}");
        self.broken = true;
        self.arm_backend(false);
    }

    fn arm_backend(&mut self, on: bool) {
        if self.backend_armed == on {
            return;
        }
        let events = if on { EventSet::IN } else { EventSet::empty() };
        let ev = EpollEvent::new(events, 0);
        match self.fds.backend_poll.ctl(ControlOperation::Modify, self.fds.backend_fd, ev) {
            Ok(()) => self.backend_armed = on,
            Err(e) => log::warn!("virtio-net: cannot switch backend polling: {e}"),
        }
    }
}

/// Arms `timer` for `d` (at least a millisecond, so a zero wait still fires).
fn arm_timer(timer: &mut TimerFd, d: Duration) {
    if let Err(e) = timer.reset(d.max(Duration::from_millis(1)), None) {
        log::warn!("virtio-net: cannot arm the rate limiter timer: {e}");
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}
