//! Processing one virtio-blk request queue against guest memory and a block backend.
//!
//! A [`BlockQueueHandler`] owns everything one queue needs: its backend instance, the request
//! limits, the serial, an optional rate limiter and counters. The device builds one per queue
//! (backends cloned with [`BlockBackend::try_clone`]) and calls [`process_queue`] when the guest
//! kicks the queue or a throttling timer fires. No KVM is involved: tests drive it with a guest
//! memory and a queue they build.
//!
//! With an engine that keeps many requests in flight ([`BlockBackend::as_async`], io_uring),
//! every read and write popped in one pass is queued on the engine and the batch is submitted
//! with one system call; `process_queue` returns without waiting for it. The engine's
//! completion eventfd ([`completion_fd`]) then wakes the handler's owner, which calls
//! [`process_completions`]: each request is completed (status byte, used ring) when the
//! completion carrying its tag comes back, in the order the host finishes them, and the guest
//! is interrupted. Anything else (flush, discard, a request the engine hands back) first waits
//! for every request in flight, so a flush covers every write the guest queued before it.
//! Before the handler is dropped, its owner calls [`drain`] so that no request is left in the
//! host's hands.
//!
//! [`process_queue`]: BlockQueueHandler::process_queue
//! [`process_completions`]: BlockQueueHandler::process_completions
//! [`completion_fd`]: BlockQueueHandler::completion_fd
//! [`drain`]: BlockQueueHandler::drain

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::sync::{Arc, Mutex, MutexGuard};

use hv_core::rate_limiter::RateLimiter;
use hv_mem::GuestMemory;
use virtio_bindings::bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};

use super::request::{Request, RequestLimits, RequestType};
use super::{BlockConfig, SERIAL_LEN};
use crate::block::{mark_dirty, BlockBackend};

/// A read or write queued on an asynchronous engine, waiting for its completion.
#[derive(Debug)]
struct Pending {
    tag: u64,
    head: u16,
    req: Request,
}

/// Errors that stop queue processing (the queue itself is unusable; the device should be
/// marked as needing a reset). Malformed requests are not errors here: they are answered.
#[derive(Debug, thiserror::Error)]
pub enum QueueHandlerError {
    /// The used ring or the notification fields could not be accessed.
    #[error("virtqueue access failed: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// The driver's avail index is more than a queue size ahead of the device: the driver is
    /// broken or hostile, and the queue cannot be processed until the device is reset.
    #[error("avail index {avail_idx} is more than a queue ahead of next_avail {next_avail}")]
    AvailIndex {
        /// The driver's avail index.
        avail_idx: u16,
        /// Where the device is.
        next_avail: u16,
    },
}

/// Counters of one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Requests completed with any status.
    pub requests: u64,
    /// Bytes read from the disk into the guest.
    pub read_bytes: u64,
    /// Bytes written from the guest to the disk.
    pub write_bytes: u64,
    /// Flush requests completed.
    pub flushes: u64,
    /// Requests answered IOERR because the backend failed.
    pub io_errors: u64,
    /// Malformed or unsupported requests answered with IOERR/UNSUPP.
    pub invalid_requests: u64,
    /// Chains returned unanswered because they had no usable status byte.
    pub dropped_chains: u64,
    /// Times processing stopped because the rate limiter said wait.
    pub throttled: u64,
}

/// One request queue's state.
#[derive(Debug)]
pub struct BlockQueueHandler {
    backend: Box<dyn BlockBackend>,
    limits: RequestLimits,
    serial: [u8; SERIAL_LEN],
    /// Shared by all queues of a device, so the limit is per device.
    rate_limiter: Option<Arc<Mutex<RateLimiter>>>,
    /// Data bytes of the request left on the queue by the rate limiter.
    throttled_bytes: Option<u64>,
    stats: QueueStats,
    last_error: Option<String>,
    /// The tag of the next request queued on an asynchronous engine.
    next_tag: u64,
    /// Reads and writes the asynchronous engine holds, by tag.
    pending: Vec<Pending>,
}

impl BlockQueueHandler {
    /// A handler for one queue of a device with `config` over `backend`.
    pub fn new(backend: Box<dyn BlockBackend>, config: &BlockConfig) -> Self {
        let limits = RequestLimits::new(backend.as_ref(), config);
        Self {
            backend,
            limits,
            serial: config.serial,
            rate_limiter: None,
            throttled_bytes: None,
            stats: QueueStats::default(),
            last_error: None,
            next_tag: 0,
            pending: Vec::new(),
        }
    }

    /// Throttles this queue with `limiter` (its own limit).
    pub fn with_rate_limiter(self, limiter: RateLimiter) -> Self {
        self.with_shared_rate_limiter(Arc::new(Mutex::new(limiter)))
    }

    /// Throttles this queue with a limiter shared with other queues (a per-device limit).
    pub fn with_shared_rate_limiter(mut self, limiter: Arc<Mutex<RateLimiter>>) -> Self {
        self.rate_limiter = Some(limiter);
        self
    }

    fn limiter(&self) -> Option<MutexGuard<'_, RateLimiter>> {
        self.rate_limiter.as_ref().map(|rl| rl.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The request limits in force.
    pub fn limits(&self) -> &RequestLimits {
        &self.limits
    }

    /// The backend.
    pub fn backend(&self) -> &dyn BlockBackend {
        self.backend.as_ref()
    }

    /// The backend, mutably (e.g. to flush it when the device is reset).
    pub fn backend_mut(&mut self) -> &mut dyn BlockBackend {
        self.backend.as_mut()
    }

    /// The counters.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// The last backend error or malformed-request reason, for logs.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// When the rate limiter holds a request back: how long to wait before calling
    /// [`process_queue`](Self::process_queue) again. `None` when nothing is held back.
    pub fn throttled_for(&self) -> Option<Duration> {
        let bytes = self.throttled_bytes?;
        Some(self.limiter().map_or(Duration::ZERO, |rl| rl.retry_after(bytes)))
    }

    /// The eventfd the asynchronous engine signals when requests complete (`None` for a
    /// synchronous engine): wait on it and call [`process_completions`](Self::process_completions).
    pub fn completion_fd(&mut self) -> Option<RawFd> {
        self.backend.as_async().map(|engine| engine.completion_fd())
    }

    /// Requests the asynchronous engine holds for this queue.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Completes the requests the asynchronous engine finished since the last call, without
    /// waiting. Returns whether the guest should be interrupted.
    pub fn process_completions(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueHandlerError> {
        let used = self.complete_pending(queue, mem, false)?;
        self.notification_needed(queue, mem, used)
    }

    /// Waits for every request the asynchronous engine holds and completes them. Returns
    /// whether the guest should be interrupted.
    pub fn drain(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueHandlerError> {
        let used = self.complete_pending(queue, mem, true)?;
        self.notification_needed(queue, mem, used)
    }

    /// Serves every available request of `queue` (until the rate limiter says wait): requests
    /// for a synchronous engine are completed, reads and writes for an asynchronous one are
    /// submitted and completed later ([`process_completions`](Self::process_completions)).
    /// Returns whether the guest should be interrupted (something was used and the driver's
    /// notification suppression, EVENT_IDX or NO_INTERRUPT, does not rule it out).
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueHandlerError> {
        let event_idx = queue.event_idx_enabled();
        let mut used_any = false;
        self.throttled_bytes = None;
        'outer: loop {
            if event_idx {
                queue.disable_notification(mem)?;
            }
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                if head >= queue.size() {
                    // Not a descriptor of this queue: nothing can be returned for it.
                    self.stats.dropped_chains += 1;
                    self.last_error = Some(format!("avail ring names descriptor {head}"));
                    continue;
                }
                let used_len = match Request::parse(chain, mem, &self.limits) {
                    Ok(req) => {
                        let admitted = self
                            .limiter()
                            .is_none_or(|mut rl| rl.consume_request(req.data_bytes()));
                        if !admitted {
                            // Left on the ring: retried after throttled_for().
                            queue.go_to_previous_position();
                            self.throttled_bytes = Some(req.data_bytes());
                            self.stats.throttled += 1;
                            break 'outer;
                        }
                        match self.try_queue(head, req, mem) {
                            Ok(()) => continue,
                            Err(req) => {
                                self.complete_pending(queue, mem, true)?;
                                self.perform(&req, mem)
                            }
                        }
                    }
                    Err(failure) => {
                        self.last_error = Some(failure.error.to_string());
                        match failure.status_addr {
                            Some(addr) if mem.write_obj(failure.error.status(), addr).is_ok() => {
                                self.stats.invalid_requests += 1;
                                self.stats.requests += 1;
                                1
                            }
                            _ => {
                                self.stats.dropped_chains += 1;
                                0
                            }
                        }
                    }
                };
                queue.add_used(mem, head, used_len)?;
                used_any = true;
            }
            used_any |= self.submit_pending(queue, mem)?;
            // pop_descriptor_chain() also ends when the driver's avail index is more than a
            // ring ahead of us; enable_notification() would then report work forever.
            let avail = queue.avail_idx(mem, Ordering::Acquire)?.0;
            if avail.wrapping_sub(queue.next_avail()) > queue.size() {
                return Err(QueueHandlerError::AvailIndex {
                    avail_idx: avail,
                    next_avail: queue.next_avail(),
                });
            }
            if !event_idx || !queue.enable_notification(mem)? {
                break;
            }
        }
        self.notification_needed(queue, mem, used_any)
    }

    /// Whether the guest should be interrupted after `used` (something was put in the used
    /// ring): the driver's EVENT_IDX or NO_INTERRUPT may rule it out.
    fn notification_needed(
        &self,
        queue: &mut Queue,
        mem: &GuestMemory,
        used: bool,
    ) -> Result<bool, QueueHandlerError> {
        if !used {
            return Ok(false);
        }
        if !queue.event_idx_enabled() && self.driver_suppresses_interrupts(queue, mem) {
            return Ok(false);
        }
        Ok(queue.needs_notification(mem)?)
    }

    /// Without EVENT_IDX the driver suppresses interrupts with VRING_AVAIL_F_NO_INTERRUPT in
    /// the avail ring's flags (virtio-queue leaves that check to the device).
    fn driver_suppresses_interrupts(&self, queue: &Queue, mem: &GuestMemory) -> bool {
        mem.read_obj::<u16>(GuestAddress(queue.avail_ring()))
            .map(|flags| u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 != 0)
            .unwrap_or(false)
    }

    /// Queues a read or write on an asynchronous engine; hands the request back when it must
    /// be performed synchronously (no such engine, another request type, no room, or the
    /// engine declines it).
    fn try_queue(&mut self, head: u16, req: Request, mem: &GuestMemory) -> Result<(), Request> {
        let write = match req.request_type {
            RequestType::In => false,
            RequestType::Out => true,
            _ => return Err(req),
        };
        let Some(engine) = self.backend.as_async() else { return Err(req) };
        if engine.capacity() == 0 {
            return Err(req);
        }
        let Ok(slices) = req.slices(mem) else { return Err(req) };
        let offset = req.sector << super::SECTOR_SHIFT;
        // Tags are never reused within a handler, so a completion can only match its request.
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1) % (u64::MAX - 1);
        // SAFETY: `slices` point into the guest memory `mem`, which the handler's owner keeps
        // mapped (it holds a clone of it) until it has drained the handler (`drain`), and the
        // engine itself waits for requests in flight before it is dropped. The buffers belong
        // to a descriptor chain the device holds until it is put in the used ring, after its
        // completion: the device touches them no more meanwhile.
        match unsafe { engine.queue(tag, offset, &slices, write) } {
            Ok(true) => {
                self.pending.push(Pending { tag, head, req });
                Ok(())
            }
            Ok(false) | Err(_) => Err(req),
        }
    }

    /// Submits what this pass queued, without waiting, and completes whatever has finished.
    fn submit_pending(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueHandlerError> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        if let Some(Err(e)) = self.backend.as_async().map(|engine| engine.submit()) {
            self.last_error = Some(e.to_string());
            // The engine failed: what it still holds cannot complete.
            return self.complete_pending(queue, mem, true);
        }
        self.complete_pending(queue, mem, false)
    }

    /// Completes the requests the engine finished (with `wait`, every request in flight,
    /// waiting for them), each by its tag. Returns whether anything was put in the used ring.
    fn complete_pending(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        wait: bool,
    ) -> Result<bool, QueueHandlerError> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        let mut done = Vec::new();
        let engine_result = match self.backend.as_async() {
            Some(engine) if wait => engine.submit_and_complete(&mut done),
            Some(engine) => engine.complete(&mut done),
            None => Ok(()),
        };
        let failed = engine_result.is_err();
        if let Err(e) = engine_result {
            self.last_error = Some(e.to_string());
        }
        let mut used = false;
        for (tag, r) in done {
            let Some(i) = self.pending.iter().position(|p| p.tag == tag) else { continue };
            let p = self.pending.swap_remove(i);
            self.complete_one(queue, mem, p, Some(r))?;
            used = true;
        }
        if wait && failed {
            // The engine failed before these completed: they are answered with an error.
            for p in std::mem::take(&mut self.pending) {
                self.complete_one(queue, mem, p, None)?;
                used = true;
            }
        }
        Ok(used)
    }

    /// Writes the status of a read or write the engine finished (`None`: it never will) and
    /// puts its chain in the used ring.
    fn complete_one(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        p: Pending,
        result: Option<crate::block::Result<()>>,
    ) -> Result<(), QueueHandlerError> {
        let ok = match result {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                self.last_error = Some(e.to_string());
                false
            }
            None => false,
        };
        self.stats.requests += 1;
        let used_len = match (ok, p.req.request_type) {
            (true, RequestType::In) => {
                if let Ok(slices) = p.req.slices(mem) {
                    mark_dirty(&slices);
                }
                self.stats.read_bytes += u64::from(p.req.data_len);
                p.req.data_len + 1
            }
            (true, _) => {
                self.stats.write_bytes += u64::from(p.req.data_len);
                1
            }
            (false, _) => {
                self.stats.io_errors += 1;
                1
            }
        };
        let status = if ok { VIRTIO_BLK_S_OK } else { VIRTIO_BLK_S_IOERR } as u8;
        let used_len = if mem.write_obj(status, p.req.status_addr).is_ok() {
            used_len
        } else {
            self.stats.dropped_chains += 1;
            0
        };
        queue.add_used(mem, p.head, used_len)?;
        Ok(())
    }

    /// Performs a parsed request, writes its status byte, updates the counters; returns the
    /// used length.
    fn perform(&mut self, req: &Request, mem: &GuestMemory) -> u32 {
        let done = req.execute(mem, self.backend.as_mut(), &self.serial);
        self.stats.requests += 1;
        match (&done.error, req.request_type) {
            (Some(e), _) => {
                self.stats.io_errors += 1;
                self.last_error = Some(e.to_string());
            }
            (None, RequestType::In) => self.stats.read_bytes += u64::from(req.data_len),
            (None, RequestType::Out) => self.stats.write_bytes += u64::from(req.data_len),
            (None, RequestType::Flush) => self.stats.flushes += 1,
            (None, _) => {}
        }
        if mem.write_obj(done.status, req.status_addr).is_err() {
            // Validated at parse time; if memory changed under us, nothing was written.
            self.stats.dropped_chains += 1;
            return 0;
        }
        done.used_len
    }
}

/// One handler per queue for a device with `config` over `backend`: the first queue gets
/// `backend` itself, the others clones of it; all share `rate_limiter` when one is given.
pub fn handlers_for_queues(
    backend: Box<dyn BlockBackend>,
    config: &BlockConfig,
    rate_limiter: Option<RateLimiter>,
) -> crate::block::Result<Vec<BlockQueueHandler>> {
    let mut backends = Vec::with_capacity(usize::from(config.num_queues));
    for _ in 1..config.num_queues.max(1) {
        backends.push(backend.try_clone()?);
    }
    backends.insert(0, backend);
    let shared = rate_limiter.map(|rl| Arc::new(Mutex::new(rl)));
    Ok(backends
        .into_iter()
        .map(|b| {
            let h = BlockQueueHandler::new(b, config);
            match &shared {
                Some(rl) => h.with_shared_rate_limiter(Arc::clone(rl)),
                None => h,
            }
        })
        .collect())
}
