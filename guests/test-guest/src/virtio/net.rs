//! A polling virtio-net driver: VERSION_1 and the MAC feature (EVENT_IDX for the benchmark),
//! no offloads, no mergeable buffers, one queue pair, no interrupts.
//!
//! Every buffer is a fixed single-descriptor slot of [`SLOT`] bytes: descriptor `i` of a queue
//! always points at slot `i`, so the rings only ever carry slot numbers and the per-frame work
//! is a few stores (this code runs at CPL0, emulated at ~4 MIPS on PVM hosts). A slot starts
//! with the 12-byte `virtio_net_hdr_v1` (all zero on transmit: no checksum or GSO requests),
//! then the Ethernet frame.
//!
//! TX slots are used round robin and counted back as the device returns them; both hv's and
//! QEMU's devices complete transmit chains in order, which is what makes the count enough.

use super::{arg_u64, find, Transport, Virtqueue, DESC_F_WRITE, F_EVENT_IDX};
use crate::serial::Line;

const VIRTIO_ID_NET: u32 = 1;
/// VIRTIO_NET_F_MAC: the device's MAC is in config space at offset 0.
const F_MAC: u64 = 1 << 5;
/// The size of `struct virtio_net_hdr_v1` (VERSION_1 always uses it).
pub const HDR_LEN: usize = 12;
/// Bytes per buffer slot: a header and a full-size Ethernet frame (1514) fit.
pub const SLOT: u64 = 2048;
/// The largest frame a slot holds.
pub const MAX_FRAME: usize = SLOT as usize - HDR_LEN;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;

/// A live virtio-net device with one RX and one TX queue.
pub struct Net {
    rx: Virtqueue,
    tx: Virtqueue,
    /// The MAC from config space.
    pub mac: [u8; 6],
    rx_slots: u64,
    tx_slots: u64,
    tx_next: u16,
    tx_inflight: u16,
    /// RX slots handed back since the last publish.
    rx_pending: bool,
}

impl Net {
    /// Finds the `dev=`-th virtio-net device and brings it up with queues of at most
    /// `queue_size` entries, all RX slots posted. Prints why on failure.
    pub fn open(cmdline: &[u8], queue_size: u16, extra: u64) -> Option<Net> {
        let dev = arg_u64(cmdline, b"dev", 0) as usize;
        let Some(t) = find(cmdline).nth_of_type(VIRTIO_ID_NET, dev) else {
            Line::new().s("net: no virtio-net device ").dec(dev as u64).print();
            return None;
        };
        match Self::setup(t, queue_size, extra) {
            Ok(net) => Some(net),
            Err(why) => {
                Line::new().s("net: init failed: ").s(why).print();
                None
            }
        }
    }

    fn setup(t: Transport, queue_size: u16, extra: u64) -> Result<Net, &'static str> {
        let features = t.init(F_MAC | extra).map_err(|e| e.describe())?;
        let mut rx = t.setup_queue(RX_QUEUE, queue_size).map_err(|e| e.describe())?;
        let mut tx = t.setup_queue(TX_QUEUE, queue_size).map_err(|e| e.describe())?;
        if features & F_EVENT_IDX != 0 {
            rx.use_event_idx();
            tx.use_event_idx();
        }
        let mut mac = [0u8; 6];
        if features & F_MAC != 0 {
            let lo = t.config32(0).to_le_bytes();
            let hi = t.config32(4).to_le_bytes();
            mac[..4].copy_from_slice(&lo);
            mac[4..].copy_from_slice(&hi[..2]);
        } else {
            // A locally administered address of our own.
            mac = [0x52, 0x54, 0x00, 0x00, 0x00, 0x01];
        }
        let (nrx, ntx) = (rx.size(), tx.size());
        let rx_slots = super::alloc(SLOT * u64::from(nrx), 4096).ok_or("out of memory")?;
        let tx_slots = super::alloc(SLOT * u64::from(ntx), 4096).ok_or("out of memory")?;
        for i in 0..nrx {
            rx.write_desc(i, rx_slots + SLOT * u64::from(i), SLOT as u32, DESC_F_WRITE, 0);
            rx.push_avail(i);
        }
        for i in 0..ntx {
            let slot = tx_slots + SLOT * u64::from(i);
            super::zero(slot, HDR_LEN as u64);
            tx.write_desc(i, slot, 0, 0, 0);
        }
        rx.publish();
        t.driver_ok();
        rx.notify();
        Ok(Net { rx, tx, mac, rx_slots, tx_slots, tx_next: 0, tx_inflight: 0, rx_pending: false })
    }

    /// The next received frame: its slot (for [`Self::release`]) and bytes. The frame stays
    /// valid until the slot is released.
    pub fn recv(&mut self) -> Option<(u16, &mut [u8])> {
        let used = self.rx.pop_used_fixed()?;
        let slot = used.id & (self.rx.size() - 1);
        let len = (used.len as usize).clamp(HDR_LEN, SLOT as usize) - HDR_LEN;
        let addr = self.rx_slots + SLOT * u64::from(slot) + HDR_LEN as u64;
        // SAFETY: the slot is arena memory of this driver that the device has finished
        // writing (it is in the used ring) and that is not posted again until `release`.
        let frame = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) };
        Some((slot, frame))
    }

    /// Hands an RX slot back to the device (made visible by [`Self::flush_rx`]).
    pub fn release(&mut self, slot: u16) {
        self.rx.push_avail(slot);
        self.rx_pending = true;
    }

    /// Publishes released RX slots and tells the device (unless EVENT_IDX says it is busy).
    pub fn flush_rx(&mut self) {
        if self.rx_pending {
            self.rx_pending = false;
            self.rx.kick();
        }
    }

    /// Counts the TX slots the device has returned.
    pub fn reap_tx(&mut self) {
        while self.tx.pop_used_fixed().is_some() {
            self.tx_inflight = self.tx_inflight.saturating_sub(1);
        }
    }

    /// A free TX slot's frame area (`MAX_FRAME` bytes), or `None` while all are in flight.
    pub fn tx_frame(&mut self) -> Option<(u16, &mut [u8])> {
        if self.tx_inflight >= self.tx.size() {
            self.reap_tx();
            if self.tx_inflight >= self.tx.size() {
                return None;
            }
        }
        let slot = self.tx_next;
        let addr = self.tx_slots + SLOT * u64::from(slot) + HDR_LEN as u64;
        // SAFETY: a slot the device does not own (fewer than `size` are in flight and slots
        // come back in order), arena memory of this driver.
        let frame = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, MAX_FRAME) };
        Some((slot, frame))
    }

    /// Queues the first `len` bytes of TX slot `slot` (from [`Self::tx_frame`]) without
    /// telling the device: [`Self::kick_tx`] does.
    pub fn queue_tx(&mut self, slot: u16, len: usize) {
        let addr = self.tx_slots + SLOT * u64::from(slot);
        self.tx.write_desc(slot, addr, (HDR_LEN + len.min(MAX_FRAME)) as u32, 0, 0);
        self.tx.push_avail(slot);
        self.tx_next = (slot + 1) & (self.tx.size() - 1);
        self.tx_inflight += 1;
    }

    /// Publishes queued TX slots and notifies the device (unless EVENT_IDX says it is busy).
    pub fn kick_tx(&mut self) {
        self.tx.kick();
    }

    /// Queues and sends at once.
    pub fn send(&mut self, slot: u16, len: usize) {
        self.queue_tx(slot, len);
        self.kick_tx();
    }

    /// Notifies the RX queue unconditionally (after a long quiet spell, in case a kick was
    /// lost).
    pub fn renotify(&self) {
        self.rx.notify();
    }

    /// Notifies the TX queue unconditionally (a lost kick must not stall a benchmark).
    pub fn notify_tx(&self) {
        self.tx.notify();
    }

    /// TX entries.
    pub fn tx_size(&self) -> u16 {
        self.tx.size()
    }

    /// The address of TX slot `slot`'s frame area (for the benchmark, which fills every slot
    /// once and then only re-queues them).
    pub fn tx_slot_frame(&self, slot: u16) -> u64 {
        self.tx_slots + SLOT * u64::from(slot) + HDR_LEN as u64
    }

    /// Queues TX slot `slot` as its descriptor already says (benchmark loop: the descriptor
    /// was written by [`Self::prepare_tx`], only the ring entry is new).
    #[inline(always)]
    pub fn requeue_tx(&mut self, slot: u16) {
        self.tx.push_avail(slot);
    }

    /// Returns the next completed TX slot, if any (benchmark loop).
    #[inline(always)]
    pub fn pop_tx(&mut self) -> Option<u16> {
        self.tx.pop_used_fixed().map(|u| u.id)
    }

    /// Writes TX slot `slot`'s descriptor for a frame of `len` bytes (benchmark set-up).
    pub fn prepare_tx(&mut self, slot: u16, len: usize) {
        let addr = self.tx_slots + SLOT * u64::from(slot);
        self.tx.write_desc(slot, addr, (HDR_LEN + len.min(MAX_FRAME)) as u32, 0, 0);
    }
}
