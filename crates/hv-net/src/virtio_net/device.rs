//! The virtio-net device as the transport sees it: features, configuration space, and
//! activation, which hands each queue pair and its backend to a worker thread of its own
//! (`pair.rs`) and, with several pairs, the control queue to one more.
//!
//! Queues are numbered as the specification says: pair `i` is receiveq `2i` and transmitq
//! `2i + 1`; the control queue comes after the last pair (index 2 when the driver did not
//! accept VIRTIO_NET_F_MQ). A multiqueue driver starts with one pair and switches more on with
//! a control command; a pair that is off does not receive.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hv_core::rate_limiter::RateLimiter;
use hv_core::virtio::worker::Worker;
use hv_core::virtio::{
    ActivateError, Activation, ActiveQueue, DeviceState, Interrupt, Quiesced, StateError,
    VirtioDevice,
};
use virtio_bindings::bindings::virtio_net::{VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_queue::QueueT;

use super::backend::NetBackend;
use super::ctrl::CtrlQueueHandler;
use super::pair::PairState;
use super::queue_handler::NetQueueHandler;
use super::{
    config_space, device_features, has_feature, read_config, NetConfig, NetMetrics, NetStats,
};

/// The most queue pairs a device offers.
pub const MAX_QUEUE_PAIRS: usize = 16;

/// Why a device cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetDeviceError {
    /// No backend, or more than [`MAX_QUEUE_PAIRS`].
    #[error(
        "a virtio-net device needs 1 to {MAX_QUEUE_PAIRS} backends (one per queue pair), got {0}"
    )]
    Backends(usize),
}

/// Version of [`NetDeviceState`].
const STATE_VERSION: u32 = 1;

/// What a snapshot keeps of a virtio-net device besides its queue positions: the link state
/// and the MAC (checked on restore, so a guest never sees its MAC change under it).
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NetDeviceState {
    link_up: bool,
    mac: [u8; 6],
}

/// State shared between the device, its workers and [`NetHandle`]s.
#[derive(Debug)]
struct Shared {
    metrics: Arc<NetMetrics>,
    link_up: Arc<AtomicBool>,
    active_pairs: AtomicU16,
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

    /// Queue pairs the driver uses now (0 while the device is not active).
    pub fn active_pairs(&self) -> u16 {
        self.shared.active_pairs.load(Ordering::SeqCst)
    }

    /// Reports the link up or down in the configuration space, telling a running guest with a
    /// configuration-change interrupt. While it is down the device drops frames both ways, as
    /// a NIC with its cable pulled.
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

type PairSlot = Arc<Mutex<Option<PairState>>>;

/// Backends tagged with their pair index, back in pair order.
fn in_pair_order(mut tagged: Vec<(usize, Box<dyn NetBackend>)>) -> Vec<Box<dyn NetBackend>> {
    tagged.sort_by_key(|(i, _)| *i);
    tagged.into_iter().map(|(_, b)| b).collect()
}

/// A virtio-net device over one [`NetBackend`] per queue pair.
#[derive(Debug)]
pub struct VirtioNet {
    config: NetConfig,
    features: u64,
    /// The backends while no worker has them (in pair order).
    backends: Vec<Box<dyn NetBackend>>,
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
    shared: Arc<Shared>,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    /// Stopped first: it reaches into the pairs.
    ctrl: Option<Worker>,
    /// The running pairs: pair index, worker, state.
    pairs: Vec<(usize, Worker, PairSlot)>,
    /// Backends of pairs the driver did not set up (no multiqueue, or no queue of the pair
    /// ready), kept for the next time.
    idle: Vec<(usize, Box<dyn NetBackend>)>,
}

impl VirtioNet {
    /// A single-pair device with `config` over `backend` (link up), and a handle to it.
    pub fn new(mut config: NetConfig, backend: Box<dyn NetBackend>) -> (Self, NetHandle) {
        config.queue_pairs = 1;
        Self::build(config, vec![backend])
    }

    /// A device with one queue pair per backend (VIRTIO_NET_F_MQ when more than one), e.g. over
    /// [`TapBackend::per_queue`](super::TapBackend::per_queue) of a multiqueue TAP.
    pub fn multi_queue(
        mut config: NetConfig,
        backends: Vec<Box<dyn NetBackend>>,
    ) -> Result<(Self, NetHandle), NetDeviceError> {
        if backends.is_empty() || backends.len() > MAX_QUEUE_PAIRS {
            return Err(NetDeviceError::Backends(backends.len()));
        }
        config.queue_pairs = backends.len() as u16;
        Ok(Self::build(config, backends))
    }

    fn build(config: NetConfig, backends: Vec<Box<dyn NetBackend>>) -> (Self, NetHandle) {
        let vnet_hdr = backends.iter().all(|b| b.has_vnet_hdr());
        let features = device_features(&config, vnet_hdr);
        let shared = Arc::new(Shared {
            metrics: Arc::default(),
            link_up: Arc::new(AtomicBool::new(true)),
            active_pairs: AtomicU16::new(0),
            interrupt: Mutex::new(None),
        });
        let handle = NetHandle { shared: shared.clone() };
        let dev = Self {
            config,
            features,
            backends,
            rx_limiter: None,
            tx_limiter: None,
            shared,
            running: None,
        };
        (dev, handle)
    }

    /// Throttles receiving and transmitting of each pair (frames as operations, frame bytes as
    /// bytes); each activation starts from full buckets.
    pub fn with_rate_limiters(mut self, rx: Option<RateLimiter>, tx: Option<RateLimiter>) -> Self {
        self.rx_limiter = rx;
        self.tx_limiter = tx;
        self
    }

    /// The device settings.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Whether the workers are running.
    pub fn is_active(&self) -> bool {
        self.running.is_some()
    }

    /// Builds the state of every pair with a ready queue and starts the workers; on failure
    /// every backend is back in `self.backends`.
    ///
    /// A driver may leave queues not ready (virtio 1.2, 2.6: the device uses the queues the
    /// driver set up): a pair with one queue runs that direction only, a pair with none keeps
    /// its backend idle, and without its control queue a multiqueue driver stays on pair 0.
    fn start(&mut self, mut a: Activation) -> Result<(), ActivateError> {
        let acked = a.acked_features;
        let pairs = if has_feature(acked, VIRTIO_NET_F_MQ) {
            usize::from(self.config.queue_pairs)
        } else {
            1
        };
        let ctrl_index = 2 * pairs as u16;
        let mut queues: Vec<Option<ActiveQueue>> = Vec::new();
        for q in std::mem::take(&mut a.queues) {
            let i = usize::from(q.index);
            if queues.len() <= i {
                queues.resize_with(i + 1, || None);
            }
            queues[i] = Some(q);
        }
        let mut take = |i: u16| -> Option<ActiveQueue> {
            let mut q = queues.get_mut(usize::from(i)).and_then(Option::take)?;
            q.queue.set_event_idx(has_feature(acked, VIRTIO_RING_F_EVENT_IDX));
            Some(q)
        };
        let pair_queues: Vec<_> =
            (0..pairs as u16).map(|p| (take(2 * p), take(2 * p + 1))).collect();
        let ctrl_queue =
            if has_feature(acked, VIRTIO_NET_F_CTRL_VQ) { take(ctrl_index) } else { None };

        // From here on the backends are handed out; failures give them back.
        let mut backends = std::mem::take(&mut self.backends);
        let mut idle: Vec<_> =
            backends.split_off(pairs).into_iter().zip(pairs..).map(|(b, i)| (i, b)).collect();
        let mut states = Vec::with_capacity(pairs);
        let mut failure = None;
        for (index, (backend, (rx, tx))) in backends.into_iter().zip(pair_queues).enumerate() {
            if failure.is_some() || (rx.is_none() && tx.is_none()) {
                // A pair the driver did not set up keeps its backend for the next activation.
                idle.push((index, backend));
                continue;
            }
            let mut handler = NetQueueHandler::new(backend, acked)
                .with_metrics(self.shared.metrics.clone())
                .with_link(self.shared.link_up.clone())
                .with_rate_limiters(self.rx_limiter.clone(), self.tx_limiter.clone());
            if let Err(e) = handler.apply_offloads() {
                failure = Some(ActivateError::Device(format!("cannot set offloads: {e}")));
                idle.push((index, handler.into_backend()));
                continue;
            }
            match PairState::new(handler, rx, tx, a.mem.clone(), a.interrupt.clone()) {
                Ok(state) => states.push((index, state)),
                Err(boxed) => {
                    let (e, handler) = *boxed;
                    failure = Some(ActivateError::Worker(e));
                    idle.push((index, handler.into_backend()));
                }
            }
        }
        if let Some(e) = failure {
            idle.extend(states.into_iter().map(|(i, s)| (i, s.into_handler().into_backend())));
            self.backends = in_pair_order(idle);
            return Err(e);
        }
        // A multiqueue driver starts with pair 0 only.
        for (index, s) in states.iter_mut() {
            if *index > 0 {
                s.set_enabled(false);
            }
        }
        let mut running = Running { ctrl: None, pairs: Vec::new(), idle };
        let result = self.spawn_all(&mut running, states, ctrl_queue, &a);
        self.running = Some(running);
        if let Err(e) = result {
            self.reset();
            return Err(ActivateError::Worker(e));
        }
        *lock(&self.shared.interrupt) = Some(a.interrupt);
        self.shared.active_pairs.store(1, Ordering::SeqCst);
        Ok(())
    }

    fn spawn_all(
        &self,
        running: &mut Running,
        states: Vec<(usize, PairState)>,
        ctrl_queue: Option<ActiveQueue>,
        a: &Activation,
    ) -> std::io::Result<()> {
        for (i, state) in states {
            let watch = state.watch_list();
            let slot: PairSlot = Arc::new(Mutex::new(Some(state)));
            let st = slot.clone();
            let worker = Worker::spawn(&format!("hv-virtio-net{i}"), watch, move |token| {
                if let Some(ps) = lock(&st).as_mut() {
                    ps.handle(token);
                }
            });
            match worker {
                Ok(w) => running.pairs.push((i, w, slot)),
                Err(e) => {
                    // The state is in `slot`: keep it where reset finds it.
                    running
                        .idle
                        .extend(lock(&slot).take().map(|s| (i, s.into_handler().into_backend())));
                    return Err(e);
                }
            }
        }
        let Some(mut ctrl) = ctrl_queue else { return Ok(()) };
        let slots: Vec<(usize, PairSlot)> =
            running.pairs.iter().map(|(i, _, s)| (*i, s.clone())).collect();
        let mut handler =
            CtrlQueueHandler::new(self.config.queue_pairs, self.shared.metrics.clone());
        let (mem, interrupt, shared) = (a.mem.clone(), a.interrupt.clone(), self.shared.clone());
        let pairs = self.config.queue_pairs;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ctrl.notify);
        let worker = Worker::spawn("hv-virtio-net-ctl", vec![(fd, 0)], move |_| {
            let _ = ctrl.notify.read();
            let mut apply = |n: u16| {
                for (i, slot) in &slots {
                    if let Some(ps) = lock(slot).as_mut() {
                        ps.set_enabled(*i < usize::from(n));
                    }
                }
                shared.active_pairs.store(n.min(pairs), Ordering::SeqCst);
            };
            match handler.process(&mut ctrl.queue, &mem, &mut apply) {
                Ok(true) => interrupt.signal_used_queue(),
                Ok(false) => {}
                Err(e) => log::error!("virtio-net control queue: {e}"),
            }
        })?;
        running.ctrl = Some(worker);
        Ok(())
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        let pairs = usize::from(self.config.queue_pairs.max(1));
        let ctrl = usize::from(pairs > 1);
        vec![self.config.queue_size; 2 * pairs + ctrl]
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
        self.start(activation)
    }

    fn quiesce(&mut self) -> Result<Quiesced, StateError> {
        let bad = |reason: &str| StateError::BadState {
            device_type: VIRTIO_ID_NET,
            reason: reason.to_owned(),
        };
        let Some(running) = self.running.as_mut() else {
            return Err(bad("the device is not active"));
        };
        if running.ctrl.is_some() {
            // The control queue's worker owns its queue; its position is not kept yet.
            return Err(bad("a multiqueue device (with a control queue) cannot be snapshotted"));
        }
        let mut queues = Vec::new();
        for (_, worker, slot) in &mut running.pairs {
            worker.stop();
            if let Some(state) = lock(slot).as_ref() {
                queues.extend(state.positions());
            }
        }
        let state = NetDeviceState {
            link_up: self.shared.link_up.load(Ordering::SeqCst),
            mac: self.config.mac.0,
        };
        self.reset();
        let data = serde_json::to_value(&state).map_err(|e| bad(&e.to_string()))?;
        Ok(Quiesced { queues, state: DeviceState { version: STATE_VERSION, data } })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let bad = |reason: String| StateError::BadState { device_type: VIRTIO_ID_NET, reason };
        if state.version != STATE_VERSION {
            return Err(bad(format!(
                "state version {}, this hv reads {STATE_VERSION}",
                state.version
            )));
        }
        let saved: NetDeviceState =
            serde_json::from_value(state.data.clone()).map_err(|e| bad(e.to_string()))?;
        if saved.mac != self.config.mac.0 {
            return Err(bad(format!(
                "the snapshot's device had MAC {:02x?}, this one {:02x?}",
                saved.mac, self.config.mac.0
            )));
        }
        self.shared.link_up.store(saved.link_up, Ordering::SeqCst);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(running) = self.running.take() {
            drop(running.ctrl);
            let mut backends = Vec::new();
            for (i, mut worker, slot) in running.pairs {
                worker.stop();
                if let Some(state) = lock(&slot).take() {
                    let mut backend = state.into_handler().into_backend();
                    if let Err(e) = backend.set_enabled(true) {
                        log::warn!("virtio-net: cannot switch a backend queue back on: {e}");
                    }
                    backends.push((i, backend));
                }
            }
            backends.extend(running.idle);
            self.backends = in_pair_order(backends);
        }
        *lock(&self.shared.interrupt) = None;
        self.shared.active_pairs.store(0, Ordering::SeqCst);
    }
}
