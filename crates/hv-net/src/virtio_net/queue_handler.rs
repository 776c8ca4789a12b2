//! The receive and transmit queues of a virtio-net device against guest memory and a
//! [`NetBackend`].
//!
//! A [`NetQueueHandler`] owns the backend, the negotiated features, the RX buffers the guest
//! has posted, a frame waiting for room, the rate limiters and the counters. The device calls
//! [`process_tx`] when the guest kicks the transmit queue and [`process_rx`] when the backend
//! is readable, the guest posts RX buffers, or a throttling timer fires; each says whether to
//! interrupt the guest. No KVM is involved: tests drive it with a guest memory and queues they
//! build.
//!
//! RX: posted chains are parsed once into [`RxBuffer`]s and kept, in order, until a frame
//! fills them (malformed ones go straight back, unused). A frame that does not fit waits in the
//! handler, and the backend is not read until the guest posts more ([`RxWait::Buffers`]). With
//! VIRTIO_NET_F_MRG_RXBUF a frame spans as many buffers as it needs and the header's
//! `num_buffers` says how many; all of them are published in the used ring at once, so the
//! guest never sees a frame's first buffer without the rest.
//!
//! TX: each chain is parsed into a [`TxFrame`], its header checked against the negotiated
//! offloads, and the frame sent whole; malformed chains go back unsent and are counted.
//!
//! [`process_tx`]: NetQueueHandler::process_tx
//! [`process_rx`]: NetQueueHandler::process_rx

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hv_core::rate_limiter::RateLimiter;
use hv_mem::GuestMemory;
use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::backend::{NetBackend, Offloads};
use super::chain::{ChainError, NetHeader, RxBuffer, TxFrame};
use super::{has_feature, Counter, NetMetrics, MAX_FRAME_LEN, MIN_FRAME_LEN, NET_HDR_LEN};

/// Errors that stop queue processing: the queue's rings are unusable, so the device should be
/// reset. Malformed chains are not errors here: they are dropped and counted.
#[derive(Debug, thiserror::Error)]
pub enum QueueHandlerError {
    /// The rings or the notification fields could not be accessed.
    #[error("virtqueue access failed: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// A ring field (used element, used index, flags, event index) is not in guest memory.
    #[error("virtqueue ring field at {addr:#x} is not in guest memory")]
    Ring {
        /// The guest address written.
        addr: u64,
    },
}

/// Why receiving stopped before the backend ran dry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxWait {
    /// A frame is waiting for the guest to post RX buffers (wait for an RX kick).
    Buffers,
    /// The rate limiter holds a frame back for this long.
    RateLimit(Duration),
    /// The backend failed or closed (try again on the next RX kick).
    Backend,
}

/// The state of one queue pair.
#[derive(Debug)]
pub struct NetQueueHandler {
    backend: Box<dyn NetBackend>,
    features: u64,
    vnet_hdr: bool,
    mrg_rxbuf: bool,
    rx_buffers: VecDeque<RxBuffer>,
    rx_capacity: usize,
    rx_frame: Vec<u8>,
    /// Length (header included) of the frame in `rx_frame` waiting for room or tokens.
    rx_pending: Option<usize>,
    /// The pending frame's tokens were taken.
    rx_paid: bool,
    rx_wait: Option<RxWait>,
    tx_frame: Vec<u8>,
    tx_throttled: Option<u64>,
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
    metrics: Arc<NetMetrics>,
    /// The link is up: while it is down, frames are dropped both ways (a pulled cable).
    link: Arc<AtomicBool>,
    last_error: Option<String>,
}

impl NetQueueHandler {
    /// A handler for a device that negotiated `features`, over `backend`.
    pub fn new(backend: Box<dyn NetBackend>, features: u64) -> Self {
        let vnet_hdr = backend.has_vnet_hdr();
        Self {
            backend,
            features,
            vnet_hdr,
            mrg_rxbuf: has_feature(features, VIRTIO_NET_F_MRG_RXBUF),
            rx_buffers: VecDeque::new(),
            rx_capacity: 0,
            rx_frame: vec![0; NET_HDR_LEN + MAX_FRAME_LEN],
            rx_pending: None,
            rx_paid: false,
            rx_wait: None,
            tx_frame: Vec::with_capacity(NET_HDR_LEN + MAX_FRAME_LEN),
            tx_throttled: None,
            rx_limiter: None,
            tx_limiter: None,
            metrics: Arc::default(),
            link: Arc::new(AtomicBool::new(true)),
            last_error: None,
        }
    }

    /// Follows `link` (shared with the device's handle) for the link state; while it is false,
    /// TX chains are returned unsent and received frames are discarded.
    pub fn with_link(mut self, link: Arc<AtomicBool>) -> Self {
        self.link = link;
        self
    }

    /// Counts into `metrics` (shared with the device's handle) instead of counters of its own.
    pub fn with_metrics(mut self, metrics: Arc<NetMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Throttles receiving and transmitting (each limiter counts frames as operations and frame
    /// bytes, header excluded, as bytes).
    pub fn with_rate_limiters(mut self, rx: Option<RateLimiter>, tx: Option<RateLimiter>) -> Self {
        self.rx_limiter = rx;
        self.tx_limiter = tx;
        self
    }

    /// Tells the backend which offloads the guest negotiated.
    pub fn apply_offloads(&mut self) -> io::Result<()> {
        let offloads = Offloads::from_features(self.features);
        self.backend.set_offloads(offloads)
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<NetMetrics> {
        &self.metrics
    }

    /// The backend.
    pub fn backend(&self) -> &dyn NetBackend {
        self.backend.as_ref()
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut dyn NetBackend {
        self.backend.as_mut()
    }

    /// Gives the backend back (when the device is reset).
    pub fn into_backend(self) -> Box<dyn NetBackend> {
        self.backend
    }

    /// The last malformed chain or backend failure, for logs.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Why the last [`process_rx`](Self::process_rx) stopped before the backend ran dry, if it
    /// did: the device stops polling the backend until the reason is gone.
    pub fn rx_wait(&self) -> Option<RxWait> {
        self.rx_wait
    }

    /// RX buffers the guest has posted that no frame has used yet.
    pub fn rx_buffers_held(&self) -> usize {
        self.rx_buffers.len()
    }

    /// When the rate limiter holds a TX frame back: how long to wait before calling
    /// [`process_tx`](Self::process_tx) again.
    pub fn tx_throttled_for(&self) -> Option<Duration> {
        let bytes = self.tx_throttled?;
        Some(self.tx_limiter.as_ref().map_or(Duration::ZERO, |rl| rl.retry_after(bytes)))
    }

    fn fail(&mut self, counter: Counter, why: impl ToString) {
        self.metrics.bump(counter);
        self.last_error = Some(why.to_string());
    }

    /// Whether a chain's head index is inside the queue; a guest-made head past it is counted
    /// under `counter` and the chain is dropped.
    fn head_in_queue(&mut self, head: u16, size: u16, counter: Counter) -> bool {
        if head < size {
            return true;
        }
        self.fail(counter, ChainError::BadHead { head, size });
        false
    }

    /// Sends every available TX chain (until the rate limiter says wait). Returns whether to
    /// interrupt the guest.
    pub fn process_tx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueHandlerError> {
        if !usable(queue) {
            return Ok(false);
        }
        let old_used = queue.next_used();
        let event_idx = queue.event_idx_enabled();
        self.tx_throttled = None;
        'outer: loop {
            if event_idx {
                queue.disable_notification(mem)?;
            }
            let mut popped = false;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                popped = true;
                let head = chain.head_index();
                if !self.head_in_queue(head, queue.size(), Counter::TxMalformed) {
                    continue;
                }
                match TxFrame::parse(chain, mem) {
                    Ok(frame) => {
                        let bytes = (frame.len - NET_HDR_LEN) as u64;
                        if let Some(rl) = self.tx_limiter.as_mut() {
                            if !rl.consume_request(bytes) {
                                queue.go_to_previous_position();
                                self.tx_throttled = Some(bytes);
                                self.metrics.bump(Counter::TxThrottled);
                                break 'outer;
                            }
                        }
                        self.send(&frame, mem);
                    }
                    Err(e) => self.fail(Counter::TxMalformed, e),
                }
                queue.add_used(mem, head, 0)?;
            }
            // A second look only when this one found something: an avail index the guest
            // corrupted reads as "more available" while nothing can be popped.
            if !event_idx || !queue.enable_notification(mem)? || !popped {
                break;
            }
        }
        should_interrupt(queue, mem, old_used)
    }

    fn send(&mut self, frame: &TxFrame, mem: &GuestMemory) {
        if !self.link.load(Ordering::Relaxed) {
            return self.metrics.bump(Counter::LinkDownDrops);
        }
        if let Err(e) = frame.read_into(mem, &mut self.tx_frame) {
            return self.fail(Counter::TxMalformed, e);
        }
        let mut hdr = [0u8; NET_HDR_LEN];
        hdr.copy_from_slice(&self.tx_frame[..NET_HDR_LEN]);
        let frame_len = frame.len - NET_HDR_LEN;
        if let Err(reason) =
            NetHeader::from_bytes(&hdr).check_tx(frame_len, self.features, self.vnet_hdr)
        {
            return self
                .fail(Counter::TxMalformed, ChainError::BadHeader { head: frame.head, reason });
        }
        let start = if self.vnet_hdr { 0 } else { NET_HDR_LEN };
        let mut result = self.backend.send(&self.tx_frame[start..]);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::Interrupted) {
            result = self.backend.send(&self.tx_frame[start..]);
        }
        match result {
            Ok(_) => self.metrics.tx(frame_len),
            Err(e) => self.fail(Counter::TxBackendErrors, format!("backend send: {e}")),
        }
    }

    /// Moves frames from the backend into the guest's RX buffers until the backend has none,
    /// the guest has no room, or the rate limiter says wait ([`rx_wait`](Self::rx_wait) tells
    /// which). Returns whether to interrupt the guest.
    pub fn process_rx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueHandlerError> {
        if !usable(queue) {
            return Ok(false);
        }
        let old_used = queue.next_used();
        self.rx_wait = None;
        // Chains returned unused (malformed) while posting buffers.
        let mut rejected = Vec::new();
        self.take_buffers(queue, mem, &mut rejected)?;
        publish_used(queue, mem, &rejected)?;
        loop {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.read_frame() {
                    Ok(Some(len)) => {
                        self.rx_pending = Some(len);
                        self.rx_paid = false;
                        len
                    }
                    Ok(None) => break,
                    Err(()) => {
                        self.rx_wait = Some(RxWait::Backend);
                        break;
                    }
                },
            };
            if !self.rx_paid {
                if let Some(rl) = self.rx_limiter.as_mut() {
                    let bytes = (len - NET_HDR_LEN) as u64;
                    if !rl.consume_request(bytes) {
                        self.rx_wait = Some(RxWait::RateLimit(rl.retry_after(bytes)));
                        self.metrics.bump(Counter::RxThrottled);
                        break;
                    }
                }
                self.rx_paid = true;
            }
            if !self.deliver(queue, mem, len)? {
                self.rx_wait = Some(RxWait::Buffers);
                self.metrics.bump(Counter::RxNoBuffers);
                break;
            }
            self.rx_pending = None;
        }
        should_interrupt(queue, mem, old_used)
    }

    /// Parses newly posted RX chains into `rx_buffers` (at most a queue's worth held);
    /// malformed ones are added to `rejected`.
    fn take_buffers(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        rejected: &mut Vec<(u16, u32)>,
    ) -> Result<(), QueueHandlerError> {
        let event_idx = queue.event_idx_enabled();
        let limit = usize::from(queue.size());
        loop {
            let mut popped = false;
            while self.rx_buffers.len() < limit {
                let Some(chain) = queue.pop_descriptor_chain(mem) else { break };
                popped = true;
                let head = chain.head_index();
                if !self.head_in_queue(head, queue.size(), Counter::RxMalformed) {
                    continue;
                }
                match RxBuffer::parse(chain, mem) {
                    Ok(buf) => {
                        self.rx_capacity += buf.capacity;
                        self.rx_buffers.push_back(buf);
                    }
                    Err(e) => {
                        self.fail(Counter::RxMalformed, e);
                        rejected.push((head, 0));
                    }
                }
            }
            // Keep the guest kicking us for new buffers; with EVENT_IDX, look once more in
            // case some arrived before that took effect (only after finding some: a corrupted
            // avail index reads as "more available" while nothing can be popped).
            if self.rx_buffers.len() >= limit
                || !queue.enable_notification(mem)?
                || !event_idx
                || !popped
            {
                break;
            }
        }
        Ok(())
    }

    /// Reads the next usable frame into `rx_frame`; `Ok(None)` when the backend has none,
    /// `Err(())` when it failed (counted).
    fn read_frame(&mut self) -> Result<Option<usize>, ()> {
        let start = if self.vnet_hdr { 0 } else { NET_HDR_LEN };
        loop {
            let n = match self.backend.recv(&mut self.rx_frame[start..]) {
                Ok(0) => {
                    self.fail(Counter::RxBackendErrors, "backend closed");
                    return Err(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.fail(Counter::RxBackendErrors, format!("backend receive: {e}"));
                    return Err(());
                }
            };
            let len = start + n;
            if !self.link.load(Ordering::Relaxed) {
                self.metrics.bump(Counter::LinkDownDrops);
                continue;
            }
            if len < NET_HDR_LEN + MIN_FRAME_LEN {
                self.fail(Counter::RxDropped, format!("backend frame of {len} bytes is too short"));
                continue;
            }
            let mut hdr = if self.vnet_hdr {
                let mut b = [0u8; NET_HDR_LEN];
                b.copy_from_slice(&self.rx_frame[..NET_HDR_LEN]);
                NetHeader::from_bytes(&b)
            } else {
                NetHeader::default()
            };
            if let Err(reason) = hdr.fit_rx(self.features) {
                self.fail(Counter::RxDropped, format!("backend frame {reason}"));
                continue;
            }
            hdr.num_buffers = 1;
            self.rx_frame[..NET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
            return Ok(Some(len));
        }
    }

    /// Puts the pending frame of `len` bytes into RX buffers; `false` when there is no room
    /// yet. A frame that can never fit is dropped (and counts as delivered here).
    fn deliver(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        len: usize,
    ) -> Result<bool, QueueHandlerError> {
        let fits = |h: &Self| match h.mrg_rxbuf {
            true => h.rx_capacity >= len,
            false => !h.rx_buffers.is_empty(),
        };
        if !fits(self) {
            let mut rejected = Vec::new();
            self.take_buffers(queue, mem, &mut rejected)?;
            publish_used(queue, mem, &rejected)?;
            if !fits(self) {
                if self.rx_buffers.len() >= usize::from(queue.size()) {
                    // Every buffer the queue can hold is here and the frame is still larger.
                    self.fail(
                        Counter::RxDropped,
                        format!("frame of {len} bytes exceeds all RX buffers"),
                    );
                    return Ok(true);
                }
                return Ok(false);
            }
        }
        if !self.mrg_rxbuf && self.rx_buffers[0].capacity < len {
            let cap = self.rx_buffers[0].capacity;
            self.fail(Counter::RxDropped, format!("frame of {len} bytes, RX buffer of {cap}"));
            return Ok(true);
        }
        // How many buffers the frame takes.
        let mut count = 0;
        let mut room = 0;
        for b in &self.rx_buffers {
            count += 1;
            room += b.capacity;
            if room >= len {
                break;
            }
        }
        self.rx_frame[NET_HDR_LEN - 2..NET_HDR_LEN].copy_from_slice(&(count as u16).to_le_bytes());
        let mut used = Vec::with_capacity(count);
        let mut at = 0;
        for _ in 0..count {
            let Some(buf) = self.rx_buffers.pop_front() else { break };
            self.rx_capacity -= buf.capacity;
            let written = match buf.write(mem, &self.rx_frame[at..len]) {
                Ok(n) => n,
                Err(e) => {
                    // Checked at parse time; only memory that changed since gets here.
                    self.fail(Counter::RxMalformed, e);
                    0
                }
            };
            at += written;
            used.push((buf.head, written as u32));
        }
        publish_used(queue, mem, &used)?;
        self.metrics.rx(len - NET_HDR_LEN);
        Ok(true)
    }
}

impl Offloads {
    /// The offloads a guest with `features` takes on receive.
    pub fn from_features(features: u64) -> Self {
        use virtio_bindings::bindings::virtio_net::{
            VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
        };
        let csum = has_feature(features, VIRTIO_NET_F_GUEST_CSUM);
        Self {
            csum,
            tso4: csum && has_feature(features, VIRTIO_NET_F_GUEST_TSO4),
            tso6: csum && has_feature(features, VIRTIO_NET_F_GUEST_TSO6),
        }
    }
}

/// A queue the driver made ready, with a size (a queue built by hand may have neither).
pub(crate) fn usable(queue: &Queue) -> bool {
    queue.ready() && queue.size() > 0
}

/// Adds `(head, len)` used elements and only then moves the used index past all of them, so
/// the driver sees them together.
pub(crate) fn publish_used(
    queue: &mut Queue,
    mem: &GuestMemory,
    elems: &[(u16, u32)],
) -> Result<(), QueueHandlerError> {
    if elems.is_empty() {
        return Ok(());
    }
    let size = queue.size();
    let ring = queue.used_ring();
    let mut next = queue.next_used();
    for &(head, len) in elems {
        let addr = ring + 4 + 8 * u64::from(next % size);
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&e, GuestAddress(addr)).map_err(|_| QueueHandlerError::Ring { addr })?;
        next = next.wrapping_add(1);
    }
    queue.set_next_used(next);
    mem.store(next.to_le(), GuestAddress(ring + 2), Ordering::Release)
        .map_err(|_| QueueHandlerError::Ring { addr: ring + 2 })
}

/// Whether the guest wants an interrupt for the buffers used since the used index was
/// `old_used`: with EVENT_IDX when `used_event` was passed, otherwise unless the driver set
/// VRING_AVAIL_F_NO_INTERRUPT.
pub(crate) fn should_interrupt(
    queue: &Queue,
    mem: &GuestMemory,
    old_used: u16,
) -> Result<bool, QueueHandlerError> {
    let new_used = queue.next_used();
    if new_used == old_used {
        return Ok(false);
    }
    // The used ring writes must be visible before the driver's fields are read.
    fence(Ordering::SeqCst);
    let avail = queue.avail_ring();
    if queue.event_idx_enabled() {
        let at = avail + 4 + 2 * u64::from(queue.size());
        let used_event = u16::from_le(
            mem.read_obj::<u16>(GuestAddress(at))
                .map_err(|_| QueueHandlerError::Ring { addr: at })?,
        );
        return Ok(
            new_used.wrapping_sub(used_event).wrapping_sub(1) < new_used.wrapping_sub(old_used)
        );
    }
    let flags = mem
        .read_obj::<u16>(GuestAddress(avail))
        .map_err(|_| QueueHandlerError::Ring { addr: avail })?;
    Ok(u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
}
