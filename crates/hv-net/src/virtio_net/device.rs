//! The virtio-net device as the transport sees it: features, configuration space, and
//! activation, which hands the queues and the backend to a worker thread.
//!
//! The worker waits on five things: the RX and TX queue eventfds (the guest's kicks), the
//! backend (a frame to receive), and one timer per direction for the rate limiter. The backend
//! sits in an epoll set of its own that the worker polls, so it can be switched off while the
//! guest has no RX buffers or the limiter says wait: a level-triggered TAP that stays readable
//! would otherwise wake the worker in a loop.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hv_core::rate_limiter::RateLimiter;
use hv_core::virtio::worker::Worker;
use hv_core::virtio::{ActivateError, Activation, ActiveQueue, Interrupt, VirtioDevice};
use hv_mem::GuestMemory;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_queue::QueueT;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::backend::NetBackend;
use super::queue_handler::{NetQueueHandler, RxWait};
use super::{
    config_space, device_features, has_feature, read_config, NetConfig, NetMetrics, NetStats,
    RX_QUEUE, TX_QUEUE,
};

const RX_KICK: u64 = 0;
const TX_KICK: u64 = 1;
const BACKEND: u64 = 2;
const RX_TIMER: u64 = 3;
const TX_TIMER: u64 = 4;

/// State shared between the device, its worker and [`NetHandle`]s.
#[derive(Debug)]
struct Shared {
    metrics: Arc<NetMetrics>,
    link_up: AtomicBool,
    interrupt: Mutex<Option<Interrupt>>,
}

/// A handle the embedding program keeps to watch and steer a device it gave to a VM.
#[derive(Clone, Debug)]
pub struct NetHandle {
    shared: Arc<Shared>,
}

impl NetHandle {
    /// The device's counters.
    pub fn stats(&self) -> NetStats {
        self.shared.metrics.snapshot()
    }

    /// The device's counters, shared.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.shared.metrics.clone()
    }

    /// Whether the link is reported up.
    pub fn link_up(&self) -> bool {
        self.shared.link_up.load(Ordering::SeqCst)
    }

    /// Reports the link up or down in the configuration space, telling a running guest with a
    /// configuration-change interrupt.
    pub fn set_link_up(&self, up: bool) {
        if self.shared.link_up.swap(up, Ordering::SeqCst) != up {
            if let Some(irq) = lock(&self.shared.interrupt).as_ref() {
                irq.signal_config_change();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A virtio-net device with one queue pair over a [`NetBackend`].
#[derive(Debug)]
pub struct VirtioNet {
    config: NetConfig,
    features: u64,
    backend: Option<Box<dyn NetBackend>>,
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
    shared: Arc<Shared>,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    worker: Worker,
    state: Arc<Mutex<Option<WorkerState>>>,
}

impl VirtioNet {
    /// A device with `config` over `backend` (link up), and a handle to it.
    pub fn new(config: NetConfig, backend: Box<dyn NetBackend>) -> (Self, NetHandle) {
        let features = device_features(&config, backend.has_vnet_hdr());
        let shared = Arc::new(Shared {
            metrics: Arc::default(),
            link_up: AtomicBool::new(true),
            interrupt: Mutex::new(None),
        });
        let handle = NetHandle { shared: shared.clone() };
        let dev = Self {
            config,
            features,
            backend: Some(backend),
            rx_limiter: None,
            tx_limiter: None,
            shared,
            running: None,
        };
        (dev, handle)
    }

    /// Throttles receiving and transmitting (frames as operations, frame bytes as bytes); each
    /// activation starts from full buckets.
    pub fn with_rate_limiters(mut self, rx: Option<RateLimiter>, tx: Option<RateLimiter>) -> Self {
        self.rx_limiter = rx;
        self.tx_limiter = tx;
        self
    }

    /// The device settings.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Whether the worker is running.
    pub fn is_active(&self) -> bool {
        self.running.is_some()
    }

    fn start(&mut self, a: Activation, backend: Box<dyn NetBackend>) -> Result<(), StartError> {
        let mut queues = a.queues;
        let mut take = |index: u16| {
            let pos = queues.iter().position(|q| q.index == index);
            pos.map(|p| queues.swap_remove(p)).ok_or(ActivateError::MissingQueue(index))
        };
        let (mut rx, mut tx) = match (take(RX_QUEUE), take(TX_QUEUE)) {
            (Ok(rx), Ok(tx)) => (rx, tx),
            (Err(e), _) | (_, Err(e)) => return Err(StartError(e, backend)),
        };
        let event_idx = has_feature(a.acked_features, VIRTIO_RING_F_EVENT_IDX);
        rx.queue.set_event_idx(event_idx);
        tx.queue.set_event_idx(event_idx);
        let mut handler = NetQueueHandler::new(backend, a.acked_features)
            .with_metrics(self.shared.metrics.clone())
            .with_rate_limiters(self.rx_limiter.clone(), self.tx_limiter.clone());
        if let Err(e) = handler.apply_offloads() {
            let err = ActivateError::Device(format!("cannot set the backend's offloads: {e}"));
            return Err(StartError(err, handler.into_backend()));
        }
        let fds = match Fds::new(handler.backend().raw_fd()) {
            Ok(fds) => fds,
            Err(e) => return Err(StartError(ActivateError::Worker(e), handler.into_backend())),
        };
        let watch = vec![
            (rx.notify.as_raw_fd(), RX_KICK),
            (tx.notify.as_raw_fd(), TX_KICK),
            (fds.backend_poll.as_raw_fd(), BACKEND),
            (fds.rx_timer.as_raw_fd(), RX_TIMER),
            (fds.tx_timer.as_raw_fd(), TX_TIMER),
        ];
        let state = WorkerState {
            handler,
            rx,
            tx,
            mem: a.mem,
            interrupt: a.interrupt.clone(),
            fds,
            backend_armed: true,
            broken: false,
        };
        let state = Arc::new(Mutex::new(Some(state)));
        let st = state.clone();
        let worker = Worker::spawn("hv-virtio-net", watch, move |token| {
            if let Some(ws) = lock(&st).as_mut() {
                ws.handle(token);
            }
        });
        match worker {
            Ok(worker) => {
                *lock(&self.shared.interrupt) = Some(a.interrupt);
                self.running = Some(Running { worker, state });
                Ok(())
            }
            Err(e) => {
                let backend = lock(&state).take().map(|s| s.handler.into_backend());
                Err(StartError(ActivateError::Worker(e), backend.expect("state was just made")))
            }
        }
    }
}

/// An activation failure and the backend to keep for the next try.
struct StartError(ActivateError, Box<dyn NetBackend>);

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.config.queue_size; 2]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let space = config_space(&self.config, self.shared.link_up.load(Ordering::SeqCst));
        read_config(&space, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let backend = self.backend.take().ok_or_else(|| {
            ActivateError::Device("the backend was lost by an earlier failure".into())
        })?;
        self.start(activation, backend).map_err(|StartError(e, backend)| {
            self.backend = Some(backend);
            e
        })
    }

    fn reset(&mut self) {
        if let Some(mut running) = self.running.take() {
            running.worker.stop();
            if let Some(state) = lock(&running.state).take() {
                self.backend = Some(state.handler.into_backend());
            }
        }
        *lock(&self.shared.interrupt) = None;
    }
}

/// The worker's own descriptors.
#[derive(Debug)]
struct Fds {
    backend_poll: Epoll,
    backend_fd: RawFd,
    rx_timer: TimerFd,
    tx_timer: TimerFd,
}

impl Fds {
    fn new(backend_fd: RawFd) -> std::io::Result<Self> {
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

/// What the worker thread owns while the device is active.
#[derive(Debug)]
struct WorkerState {
    handler: NetQueueHandler,
    rx: ActiveQueue,
    tx: ActiveQueue,
    mem: GuestMemory,
    interrupt: Interrupt,
    fds: Fds,
    backend_armed: bool,
    /// A ring became unusable: do nothing until the driver resets the device.
    broken: bool,
}

impl WorkerState {
    fn handle(&mut self, token: u64) {
        match token {
            RX_KICK => {
                let _ = self.rx.notify.read();
                self.run_rx();
            }
            TX_KICK => {
                let _ = self.tx.notify.read();
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
        if self.broken {
            return;
        }
        match self.handler.process_rx(&mut self.rx.queue, &self.mem) {
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
        if self.broken {
            return;
        }
        match self.handler.process_tx(&mut self.tx.queue, &self.mem) {
            Ok(true) => self.interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(e) => return self.break_down("TX", e),
        }
        if let Some(d) = self.handler.tx_throttled_for() {
            arm_timer(&mut self.fds.tx_timer, d);
        }
    }

    fn break_down(&mut self, which: &str, e: super::QueueHandlerError) {
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
