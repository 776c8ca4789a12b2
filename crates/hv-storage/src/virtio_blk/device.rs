//! The virtio-blk device: configuration, feature offer and activation behind hv-core's
//! [`VirtioDevice`] trait. The request work is the queue handlers'; this file only wires them
//! to the transport: at activation it builds one [`BlockQueueHandler`] per queue the driver
//! made ready (a driver may leave some of the offered queues unused) and starts a worker
//! thread that waits on those queues' notification eventfds, the completion eventfds of their
//! asynchronous engines (io_uring), and a timerfd for throttled queues, and raises the
//! interrupt when a handler says so. A [`BlockHandle`] lets the
//! embedding program read the counters while the VM owns the device.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hv_core::rate_limiter::RateLimiter;
use hv_core::virtio::worker::Worker;
use hv_core::virtio::{
    ActivateError, Activation, DeviceState, Interrupt, QueuePosition, Quiesced, StateError,
    VirtioDevice,
};
use hv_core::vmm_sys_util::eventfd::EventFd;
use hv_core::vmm_sys_util::timerfd::TimerFd;
use hv_mem::GuestMemory;
use virtio_bindings::bindings::virtio_blk::virtio_blk_config;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueT};

use super::queue_handler::handlers_for_queues;
use super::{config_space, device_features, read_config, BlockConfig, BlockQueueHandler};
use super::{QueueHandlerError, QueueStats};
use crate::block::BlockBackend;

/// Worker token of the throttling timer (queue tokens are their positions).
const TIMER_TOKEN: u64 = u64::MAX - 1;
/// Worker tokens of the queues' engine completions: this bit plus the queue's position.
const COMPLETION_TOKEN: u64 = 1 << 32;

/// Counters and state the device's worker shares with its owner and [`BlockHandle`]s.
#[derive(Debug, Default)]
struct Shared {
    /// Per active queue: its index and counters (this activation).
    stats: Vec<(u16, QueueStats)>,
    /// Queues stopped because the driver broke them (e.g. a runaway avail index).
    broken: Vec<(u16, String)>,
    /// Where each queue stood after the worker's last event (read once it has stopped).
    positions: Vec<QueuePosition>,
}

/// Version of [`BlockDeviceState`].
const STATE_VERSION: u32 = 1;

/// What a snapshot keeps of a virtio-blk device: the disk it served, so a restore onto a
/// different disk is refused. Requests are never half done at a snapshot (the worker stops
/// between them), so there is no request state.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockDeviceState {
    /// Capacity in 512-byte sectors.
    capacity: u64,
    /// Whether the disk was read-only.
    read_only: bool,
}

/// A handle the embedding program keeps to watch a virtio-blk device it gave to a VM (like
/// hv-net's `NetHandle`): the counters of the current activation, per queue and in total.
///
/// ```
/// # use hv_storage::block::{Confinement, DiskFormat, DiskOptions, SegmentDisk};
/// use hv_storage::virtio_blk::{BlockConfig, VirtioBlock};
/// let disk = Box::new(SegmentDisk::new(vec![], false).unwrap());
/// let dev = VirtioBlock::new(disk, BlockConfig::default());
/// let handle = dev.handle();
/// // ... give `dev` to a VM; the handle stays with the caller.
/// assert_eq!(handle.totals().requests, 0);
/// assert!(handle.active_queues().is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct BlockHandle {
    shared: Arc<Mutex<Shared>>,
}

impl BlockHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counters per active queue, with the queue's index, in queue order.
    pub fn queue_stats(&self) -> Vec<(u16, QueueStats)> {
        self.lock().stats.clone()
    }

    /// The indices of the queues the driver made ready (empty while inactive).
    pub fn active_queues(&self) -> Vec<u16> {
        self.lock().stats.iter().map(|(i, _)| *i).collect()
    }

    /// The counters of all queues added up.
    pub fn totals(&self) -> QueueStats {
        self.lock().stats.iter().fold(QueueStats::default(), |mut t, (_, s)| {
            t.requests += s.requests;
            t.read_bytes += s.read_bytes;
            t.write_bytes += s.write_bytes;
            t.flushes += s.flushes;
            t.io_errors += s.io_errors;
            t.invalid_requests += s.invalid_requests;
            t.dropped_chains += s.dropped_chains;
            t.throttled += s.throttled;
            t
        })
    }

    /// Queues the worker stopped serving because the driver broke them, with the reason.
    pub fn broken_queues(&self) -> Vec<(u16, String)> {
        self.lock().broken.clone()
    }
}

/// A virtio-blk device over a block backend.
pub struct VirtioBlock {
    /// The backend handlers are cloned from at each activation.
    backend: Box<dyn BlockBackend>,
    config: BlockConfig,
    space: virtio_blk_config,
    features: u64,
    rate_limiter: Option<RateLimiter>,
    shared: Arc<Mutex<Shared>>,
    worker: Option<Worker>,
}

impl std::fmt::Debug for VirtioBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlock")
            .field("backend", &self.backend)
            .field("config", &self.config)
            .field("active", &self.worker.is_some())
            .finish_non_exhaustive()
    }
}

impl VirtioBlock {
    /// A device serving `backend` with `config`.
    pub fn new(backend: Box<dyn BlockBackend>, config: BlockConfig) -> Self {
        let features = device_features(backend.as_ref(), &config);
        let space = config_space(backend.as_ref(), &config);
        Self {
            backend,
            config,
            space,
            features,
            rate_limiter: None,
            shared: Arc::default(),
            worker: None,
        }
    }

    /// Throttles the whole device (all queues share the limit).
    pub fn with_rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.rate_limiter = Some(limiter);
        self
    }

    /// A handle on the device's counters that outlives handing the device to a VM.
    pub fn handle(&self) -> BlockHandle {
        BlockHandle { shared: Arc::clone(&self.shared) }
    }

    /// The per-queue counters of the current activation.
    pub fn stats(&self) -> Vec<QueueStats> {
        self.handle().queue_stats().into_iter().map(|(_, s)| s).collect()
    }

    /// Queues the worker stopped serving because the driver broke them, with the reason.
    pub fn broken_queues(&self) -> Vec<(u16, String)> {
        self.handle().broken_queues()
    }
}

/// What the worker thread owns.
struct Running {
    mem: GuestMemory,
    queues: Vec<(u16, Queue, EventFd, BlockQueueHandler)>,
    broken: Vec<bool>,
    interrupt: Interrupt,
    timer: TimerFd,
    shared: Arc<Mutex<Shared>>,
}

/// What the worker does for a queue.
#[derive(Clone, Copy)]
enum Work {
    /// Serve the available requests (a notification or the throttling timer).
    Requests,
    /// Complete what the engine finished.
    Completions,
    /// Wait for everything the engine holds and complete it (the worker is stopping).
    Drain,
}

impl Running {
    fn serve(&mut self, i: usize) {
        self.work(i, Work::Requests);
    }

    fn work(&mut self, i: usize, work: Work) {
        let (index, queue, _, handler) = &mut self.queues[i];
        if self.broken[i] && !matches!(work, Work::Drain) {
            return;
        }
        let r = match work {
            Work::Requests => handler.process_queue(queue, &self.mem),
            Work::Completions => handler.process_completions(queue, &self.mem),
            Work::Drain => handler.drain(queue, &self.mem),
        };
        match r {
            Ok(true) => self.interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(e) => {
                self.broken[i] = true;
                let reason = e.to_string();
                let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                shared.broken.push((*index, reason));
                // Whatever was completed before the error still deserves an interrupt.
                if matches!(e, QueueHandlerError::AvailIndex { .. }) {
                    self.interrupt.signal_used_queue();
                }
            }
        }
    }

    fn handle(&mut self, token: u64) {
        if token == TIMER_TOKEN {
            let _ = self.timer.wait();
            for i in 0..self.queues.len() {
                if self.queues[i].3.throttled_for().is_some() {
                    self.serve(i);
                }
            }
        } else if token & COMPLETION_TOKEN != 0 {
            let i = (token & !COMPLETION_TOKEN) as usize;
            if i < self.queues.len() {
                // The engine drains its eventfd itself.
                self.work(i, Work::Completions);
            }
        } else if let Some(i) = usize::try_from(token).ok().filter(|&i| i < self.queues.len()) {
            let _ = self.queues[i].2.read();
            self.serve(i);
        }
        self.rearm();
        self.publish();
    }

    /// Copies the counters and queue positions where the device's owner can read them.
    fn publish(&self) {
        let stats = self.queues.iter().map(|q| (q.0, q.3.stats())).collect();
        let positions = self
            .queues
            .iter()
            .map(|(index, q, _, _)| QueuePosition {
                index: *index,
                next_avail: q.next_avail(),
                next_used: q.next_used(),
            })
            .collect();
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.stats = stats;
        shared.positions = positions;
    }

    /// Arms the timer for the soonest throttled queue (or leaves it idle).
    fn rearm(&mut self) {
        let wait = self
            .queues
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.broken[*i])
            .filter_map(|(_, q)| q.3.throttled_for())
            .min();
        if let Some(wait) = wait {
            // A zero timeout would disarm the timer: wait at least a microsecond.
            let _ = self.timer.reset(wait.max(Duration::from_micros(1)), None);
        }
    }
}

impl Drop for Running {
    /// The worker stops between events: requests still in the engine's hands are waited for
    /// and completed, so none outlives the worker (and a snapshot finds each request either
    /// completed or untouched in the avail ring).
    fn drop(&mut self) {
        for i in 0..self.queues.len() {
            if self.queues[i].3.in_flight() > 0 {
                self.work(i, Work::Drain);
            }
        }
        self.publish();
    }
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.config.queue_size; usize::from(self.config.num_queues.max(1))]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config(&self.space, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation { mem, acked_features, queues, interrupt } = activation;
        if queues.is_empty() {
            return Err(ActivateError::MissingQueue(0));
        }
        let event_idx = acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let backend = self
            .backend
            .try_clone()
            .map_err(|e| ActivateError::Device(format!("cannot open the disk for a queue: {e}")))?;
        let config = BlockConfig {
            num_queues: u16::try_from(queues.len()).unwrap_or(u16::MAX),
            ..self.config.clone()
        };
        let handlers = handlers_for_queues(backend, &config, self.rate_limiter.clone())
            .map_err(|e| ActivateError::Device(format!("cannot open the disk for a queue: {e}")))?;
        let timer = TimerFd::new().map_err(|e| ActivateError::Worker(e.into()))?;
        let mut fds = vec![(timer.as_raw_fd(), TIMER_TOKEN)];
        let mut owned = Vec::with_capacity(queues.len());
        for (pos, (aq, mut handler)) in queues.into_iter().zip(handlers).enumerate() {
            let mut queue = aq.queue;
            queue.set_event_idx(event_idx);
            fds.push((aq.notify.as_raw_fd(), pos as u64));
            if let Some(fd) = handler.completion_fd() {
                fds.push((fd, COMPLETION_TOKEN | pos as u64));
            }
            owned.push((aq.index, queue, aq.notify, handler));
        }
        // The same shared state across activations, so handles taken earlier keep working.
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Shared {
            stats: owned.iter().map(|q| (q.0, QueueStats::default())).collect(),
            broken: Vec::new(),
            positions: Vec::new(),
        };
        let mut running = Running {
            mem,
            broken: vec![false; owned.len()],
            queues: owned,
            interrupt,
            timer,
            shared: Arc::clone(&self.shared),
        };
        // Requests the driver queued before DRIVER_OK are served at once.
        for i in 0..running.queues.len() {
            running.serve(i);
        }
        running.rearm();
        running.publish();
        let worker = Worker::spawn("virtio-blk", fds, move |token| running.handle(token))
            .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn quiesce(&mut self) -> Result<Quiesced, StateError> {
        // Dropping the worker stops its thread after the event it is handling: every request
        // is then either completed or still untouched in the avail ring.
        self.worker = None;
        let queues = self.shared.lock().unwrap_or_else(|p| p.into_inner()).positions.clone();
        let state = BlockDeviceState {
            capacity: u64::from_le(self.space.capacity),
            read_only: self.backend.read_only(),
        };
        let data = serde_json::to_value(&state).map_err(|e| StateError::BadState {
            device_type: VIRTIO_ID_BLOCK,
            reason: e.to_string(),
        })?;
        Ok(Quiesced { queues, state: DeviceState { version: STATE_VERSION, data } })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let bad = |reason: String| StateError::BadState { device_type: VIRTIO_ID_BLOCK, reason };
        if state.version != STATE_VERSION {
            return Err(bad(format!(
                "state version {}, this hv reads {STATE_VERSION}",
                state.version
            )));
        }
        let saved: BlockDeviceState =
            serde_json::from_value(state.data.clone()).map_err(|e| bad(e.to_string()))?;
        let capacity = u64::from_le(self.space.capacity);
        if saved.capacity != capacity {
            return Err(bad(format!(
                "the snapshot's disk had {} sectors, this one has {capacity}",
                saved.capacity
            )));
        }
        if saved.read_only != self.backend.read_only() {
            return Err(bad(format!(
                "the snapshot's disk was {}, this one is not",
                if saved.read_only { "read-only" } else { "writable" }
            )));
        }
        Ok(())
    }

    fn reset(&mut self) {
        // Stops the thread; dropping the handlers closes their backend clones (qcow2 images
        // flush their metadata on the last drop).
        self.worker = None;
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).stats.clear();
    }
}
