//! Processing one virtio-blk request queue against guest memory and a block backend.
//!
//! A [`BlockQueueHandler`] owns everything one queue needs: its backend instance, the request
//! limits, the serial, an optional rate limiter and counters. The device builds one per queue
//! (backends cloned with [`BlockBackend::try_clone`]) and calls [`process_queue`] when the guest
//! kicks the queue or a throttling timer fires. No KVM is involved: tests drive it with a guest
//! memory and a queue they build.
//!
//! With an engine that keeps many requests in flight ([`BlockBackend::as_async`], io_uring),
//! every read and write popped in one pass is queued on the engine, the batch is submitted with
//! one system call, and each request is completed (status byte, used ring) when the completion
//! carrying its tag comes back, in the order the host finishes them. Anything else (flush,
//! discard, a request the engine hands back) first completes the batch, so a flush covers
//! every write the guest queued before it.
//!
//! [`process_queue`]: BlockQueueHandler::process_queue

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
use crate::block::{mark_dirty, BlockBackend, GuestSlice};

/// A read or write queued on an asynchronous engine, waiting for its completion.
struct Pending<'m> {
    tag: u64,
    head: u16,
    req: Request,
    slices: Vec<GuestSlice<'m>>,
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

    /// Completes every available request of `queue` (until the rate limiter says wait).
    /// Returns whether the guest should be interrupted (something was used and the driver's
    /// notification suppression, EVENT_IDX or NO_INTERRUPT, does not rule it out).
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueHandlerError> {
        let event_idx = queue.event_idx_enabled();
        let mut used_any = false;
        let mut pending: Vec<Pending<'_>> = Vec::new();
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
                        match self.try_queue(head, req, mem, &mut pending) {
                            Ok(()) => continue,
                            Err(req) => {
                                self.complete_batch(queue, mem, &mut pending)?;
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
            used_any |= self.complete_batch(queue, mem, &mut pending)?;
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
        used_any |= self.complete_batch(queue, mem, &mut pending)?;
        if !used_any {
            return Ok(false);
        }
        if !event_idx && self.driver_suppresses_interrupts(queue, mem) {
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
    fn try_queue<'m>(
        &mut self,
        head: u16,
        req: Request,
        mem: &'m GuestMemory,
        pending: &mut Vec<Pending<'m>>,
    ) -> Result<(), Request> {
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
        // SAFETY: `slices` point into `mem`, borrowed for this whole `process_queue` call;
        // every queued request is completed by `complete_batch` before the call returns, and
        // nothing else touches these buffers meanwhile.
        match unsafe { engine.queue(tag, offset, &slices, write) } {
            Ok(true) => {
                pending.push(Pending { tag, head, req, slices });
                Ok(())
            }
            Ok(false) | Err(_) => Err(req),
        }
    }

    /// Submits the queued batch, waits for it, and completes each request by its tag.
    fn complete_batch(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        pending: &mut Vec<Pending<'_>>,
    ) -> Result<bool, QueueHandlerError> {
        if pending.is_empty() {
            return Ok(false);
        }
        let mut done = Vec::with_capacity(pending.len());
        let engine_result = match self.backend.as_async() {
            Some(engine) => engine.submit_and_complete(&mut done),
            None => Ok(()),
        };
        if let Err(e) = engine_result {
            self.last_error = Some(e.to_string());
        }
        let mut results: Vec<Option<crate::block::Result<()>>> =
            (0..pending.len()).map(|_| None).collect();
        for (tag, r) in done {
            if let Some(i) = pending.iter().position(|p| p.tag == tag) {
                results[i] = Some(r);
            }
        }
        for (p, r) in pending.drain(..).zip(results) {
            let ok = match r {
                Some(Ok(())) => true,
                Some(Err(e)) => {
                    self.last_error = Some(e.to_string());
                    false
                }
                // The engine failed before this one completed.
                None => false,
            };
            self.stats.requests += 1;
            let used_len = match (ok, p.req.request_type) {
                (true, RequestType::In) => {
                    mark_dirty(&p.slices);
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
        }
        Ok(true)
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
