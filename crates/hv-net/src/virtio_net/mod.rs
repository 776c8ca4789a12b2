//! virtio-net: a guest NIC whose frames go to and come from a TAP device.
//!
//! The device comes in parts, each testable on its own:
//! - [`chain`]: descriptor chains parsed into validated types ([`TxFrame`], [`RxBuffer`]) and the
//!   virtio-net header ([`NetHeader`]) before anything is done with them; a malformed chain is a
//!   [`ChainError`], never a panic, and every address is checked against guest memory.
//! - [`queue_handler`]: the RX and TX queues against guest memory and a [`NetBackend`]:
//!   mergeable RX buffers, offload headers, the rate limiter, counters ([`NetMetrics`]).
//! - [`backend`]: the host side, a TAP with the vnet header ([`TapBackend`]) or a datagram
//!   socket ([`DatagramBackend`], a stand-in for tests and benchmarks).
//! - [`device`]: feature negotiation, the configuration space (MAC, link status, queue pairs)
//!   and activation, which spawns a worker thread per queue pair over its queue eventfds and
//!   its backend ([`VirtioNet`]); [`NetHandle`] lets the embedding program read counters and
//!   set the link.
//! - [`ctrl`]: the control queue, offered with several queue pairs (VIRTIO_NET_F_MQ): the
//!   driver switches pairs on and off with it.
//!
//! All constants come from `virtio-bindings`; the frame size limits are the only numbers
//! defined here.
//!
//! ```no_run
//! use hv_net::tap::Tap;
//! use hv_net::virtio_net::{NetConfig, TapBackend, VirtioNet};
//!
//! let tap = Tap::builder("hvtap0").open()?;
//! let backend = TapBackend::new(tap)?;
//! let (device, handle) =
//!     VirtioNet::new(NetConfig::new("52:54:00:12:34:56".parse()?), Box::new(backend));
//! // VmBuilder::new().virtio_device(Box::new(device))...
//! handle.set_link_up(false);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod backend;
pub mod chain;
pub mod ctrl;
pub mod device;
mod pair;
pub mod queue_handler;

use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::{
    virtio_net_config, virtio_net_hdr_v1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use crate::MacAddr;

pub use backend::{DatagramBackend, NetBackend, Offloads, TapBackend};
pub use chain::{ChainError, NetHeader, RxBuffer, TxFrame};
pub use ctrl::{CtrlCommand, CtrlQueueHandler, CtrlRequest};
pub use device::{NetDeviceError, NetHandle, VirtioNet, MAX_QUEUE_PAIRS};
pub use queue_handler::{NetQueueHandler, QueueHandlerError, RxWait};
/// Re-export of `virtio-bindings`, so embedders use the constants this device uses.
pub use virtio_bindings;
/// Re-export of `virtio-queue`, so embedders hand the handler the same `Queue` type.
pub use virtio_queue;

/// Length of the virtio-net header in front of every frame (`struct virtio_net_hdr_v1`: a
/// VERSION_1 device always uses it, with or without mergeable buffers).
pub const NET_HDR_LEN: usize = std::mem::size_of::<virtio_net_hdr_v1>();

/// The largest frame (without the header) the device moves: a 64 KiB IP packet after TSO plus
/// an Ethernet header and a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65_550;

/// The shortest frame the device sends: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;

/// The receive queue's index (of the first pair; pair `i` has `2i` and `2i + 1`).
pub const RX_QUEUE: u16 = 0;
/// The transmit queue's index (of the first pair).
pub const TX_QUEUE: u16 = 1;

/// Device settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC address the guest is given (VIRTIO_NET_F_MAC).
    pub mac: MacAddr,
    /// The size of each queue.
    pub queue_size: u16,
    /// Offer VIRTIO_NET_F_MRG_RXBUF (a frame may span several RX buffers).
    pub mrg_rxbuf: bool,
    /// Offer VIRTIO_RING_F_EVENT_IDX (notification suppression).
    pub event_idx: bool,
    /// Offer checksum and TSO offloads (only when the backend carries the vnet header).
    pub offloads: bool,
    /// Advertise an MTU (VIRTIO_NET_F_MTU).
    pub mtu: Option<u16>,
    /// Queue pairs offered; more than one offers VIRTIO_NET_F_MQ and the control queue.
    /// [`VirtioNet::new`] and [`VirtioNet::multi_queue`] set it from their backends.
    pub queue_pairs: u16,
}

impl NetConfig {
    /// Defaults for `mac`: one queue pair of 256-entry queues, mergeable buffers, EVENT_IDX,
    /// offloads, no MTU.
    pub fn new(mac: MacAddr) -> Self {
        Self {
            mac,
            queue_size: 256,
            mrg_rxbuf: true,
            event_idx: true,
            offloads: true,
            mtu: None,
            queue_pairs: 1,
        }
    }
}

/// The feature bits offered for `config` over a backend that does (`vnet_hdr`) or does not
/// carry the virtio-net header: offloads need a backend that passes the header to the kernel.
pub fn device_features(config: &NetConfig, vnet_hdr: bool) -> u64 {
    let mut bits = [VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS]
        .iter()
        .fold(0u64, |acc, b| acc | 1 << b);
    if config.mrg_rxbuf {
        bits |= 1 << VIRTIO_NET_F_MRG_RXBUF;
    }
    if config.event_idx {
        bits |= 1 << VIRTIO_RING_F_EVENT_IDX;
    }
    if config.mtu.is_some() {
        bits |= 1 << VIRTIO_NET_F_MTU;
    }
    if config.queue_pairs > 1 {
        bits |= 1 << VIRTIO_NET_F_MQ | 1 << VIRTIO_NET_F_CTRL_VQ;
    }
    if config.offloads && vnet_hdr {
        for b in [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
        ] {
            bits |= 1 << b;
        }
    }
    bits
}

/// True when `features` has feature bit `bit`.
pub fn has_feature(features: u64, bit: u32) -> bool {
    features & (1u64 << bit) != 0
}

/// The configuration space (`struct virtio_net_config`, little-endian): MAC, link status, the
/// number of queue pairs, the MTU.
pub fn config_space(config: &NetConfig, link_up: bool) -> virtio_net_config {
    virtio_net_config {
        mac: config.mac.0,
        status: (if link_up { VIRTIO_NET_S_LINK_UP as u16 } else { 0 }).to_le(),
        max_virtqueue_pairs: config.queue_pairs.max(1).to_le(),
        mtu: config.mtu.unwrap_or(0).to_le(),
        ..Default::default()
    }
}

/// The bytes of a configuration space, as the guest reads them.
pub fn config_bytes(config: &virtio_net_config) -> [u8; std::mem::size_of::<virtio_net_config>()] {
    let mut out = [0u8; std::mem::size_of::<virtio_net_config>()];
    out[0..6].copy_from_slice(&config.mac);
    let (status, pairs, mtu) = (config.status, config.max_virtqueue_pairs, config.mtu);
    out[6..8].copy_from_slice(&status.to_ne_bytes());
    out[8..10].copy_from_slice(&pairs.to_ne_bytes());
    out[10..12].copy_from_slice(&mtu.to_ne_bytes());
    // speed, duplex and the RSS fields stay zero (unknown speed, no RSS).
    out
}

/// Serves a guest read of `data.len()` bytes at `offset`; bytes past the end read as zero.
pub fn read_config(config: &virtio_net_config, offset: u64, data: &mut [u8]) {
    hv_core::virtio::read_config_space(&config_bytes(config), offset, data);
}

/// The device's counters, shared between its worker and [`NetHandle`]s (relaxed atomics: each
/// is exact, a snapshot of several is not a single instant).
#[derive(Debug, Default)]
pub struct NetMetrics {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_malformed: AtomicU64,
    rx_malformed: AtomicU64,
    rx_dropped: AtomicU64,
    tx_backend_errors: AtomicU64,
    rx_backend_errors: AtomicU64,
    tx_throttled: AtomicU64,
    rx_throttled: AtomicU64,
    rx_no_buffers: AtomicU64,
    ctrl_malformed: AtomicU64,
    link_down_drops: AtomicU64,
}

/// A snapshot of [`NetMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes (without the header) delivered to the guest.
    pub rx_bytes: u64,
    /// Frames the guest sent that reached the backend.
    pub tx_frames: u64,
    /// Bytes (without the header) the guest sent that reached the backend.
    pub tx_bytes: u64,
    /// TX chains dropped as malformed (returned to the guest unsent).
    pub tx_malformed: u64,
    /// RX chains returned unused as malformed.
    pub rx_malformed: u64,
    /// Frames from the backend dropped: too large for the guest's buffers, or a header the
    /// guest did not negotiate.
    pub rx_dropped: u64,
    /// Frames the backend refused to send (e.g. a full socket).
    pub tx_backend_errors: u64,
    /// Reads from the backend that failed other than by having nothing to read.
    pub rx_backend_errors: u64,
    /// Times TX stopped because the rate limiter said wait.
    pub tx_throttled: u64,
    /// Times RX stopped because the rate limiter said wait.
    pub rx_throttled: u64,
    /// Times RX stopped because the guest had no buffers for a frame.
    pub rx_no_buffers: u64,
    /// Control chains dropped as malformed.
    pub ctrl_malformed: u64,
    /// Frames dropped (either way) while the link was down.
    pub link_down_drops: u64,
}

/// Which counter to bump.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    TxMalformed,
    RxMalformed,
    RxDropped,
    TxBackendErrors,
    RxBackendErrors,
    TxThrottled,
    RxThrottled,
    RxNoBuffers,
    CtrlMalformed,
    LinkDownDrops,
}

impl NetMetrics {
    /// A snapshot of every counter.
    pub fn snapshot(&self) -> NetStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_frames: l(&self.rx_frames),
            rx_bytes: l(&self.rx_bytes),
            tx_frames: l(&self.tx_frames),
            tx_bytes: l(&self.tx_bytes),
            tx_malformed: l(&self.tx_malformed),
            rx_malformed: l(&self.rx_malformed),
            rx_dropped: l(&self.rx_dropped),
            tx_backend_errors: l(&self.tx_backend_errors),
            rx_backend_errors: l(&self.rx_backend_errors),
            tx_throttled: l(&self.tx_throttled),
            rx_throttled: l(&self.rx_throttled),
            rx_no_buffers: l(&self.rx_no_buffers),
            ctrl_malformed: l(&self.ctrl_malformed),
            link_down_drops: l(&self.link_down_drops),
        }
    }

    pub(crate) fn bump(&self, c: Counter) {
        let a = match c {
            Counter::TxMalformed => &self.tx_malformed,
            Counter::RxMalformed => &self.rx_malformed,
            Counter::RxDropped => &self.rx_dropped,
            Counter::TxBackendErrors => &self.tx_backend_errors,
            Counter::RxBackendErrors => &self.rx_backend_errors,
            Counter::TxThrottled => &self.tx_throttled,
            Counter::RxThrottled => &self.rx_throttled,
            Counter::RxNoBuffers => &self.rx_no_buffers,
            Counter::CtrlMalformed => &self.ctrl_malformed,
            Counter::LinkDownDrops => &self.link_down_drops,
        };
        a.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tx(&self, bytes: usize) {
        self.tx_frames.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn rx(&self, bytes: usize) {
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_twelve_bytes() {
        assert_eq!(NET_HDR_LEN, 12);
    }

    #[test]
    fn config_space_layout() {
        let mut cfg = NetConfig::new(MacAddr([0x52, 0x54, 0, 1, 2, 3]));
        cfg.mtu = Some(1500);
        let space = config_space(&cfg, true);
        let b = config_bytes(&space);
        assert_eq!(b.len(), 24);
        assert_eq!(&b[..6], &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(&b[6..12], &[1, 0, 1, 0, 0xdc, 0x05]);
        let mut d = [0xffu8; 4];
        read_config(&config_space(&cfg, false), 6, &mut d);
        assert_eq!(d, [0, 0, 1, 0]);
        read_config(&space, 22, &mut d);
        assert_eq!(d, [0; 4]);
        read_config(&space, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn offloads_only_with_a_vnet_header() {
        let cfg = NetConfig::new(MacAddr([2, 0, 0, 0, 0, 1]));
        let with = device_features(&cfg, true);
        let without = device_features(&cfg, false);
        assert!(has_feature(with, VIRTIO_NET_F_HOST_TSO4));
        assert!(!has_feature(without, VIRTIO_NET_F_CSUM));
        assert!(has_feature(without, VIRTIO_NET_F_MRG_RXBUF));
        assert!(has_feature(without, VIRTIO_F_VERSION_1));
    }
}
