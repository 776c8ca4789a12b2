//! Shared helpers for the virtio-net tests: guest memory, split virtqueues the test fills by
//! hand (well-formed or not; [`hv_test_support::virtq::TestQueue`]) with RX/TX helpers,
//! frames, and feature sets.
#![allow(dead_code)]

use hv_mem::{GuestMemory, GuestRam};
use hv_net::virtio_net::{NetHeader, NET_HDR_LEN};
use hv_test_support::virtq;
#[allow(unused_imports)] // Not every test uses every flag.
pub use hv_test_support::virtq::{N, R, W};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::*;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::Queue;

/// Guest RAM size for tests.
pub const RAM_SIZE: u64 = 16 << 20;
/// Queue size used by the tests.
pub const QUEUE_SIZE: u16 = 64;
/// Where the RX queue's rings are; the TX queue's are 0x4000 above.
pub const RX_BASE: u64 = 0;
/// Where the TX queue's rings are.
pub const TX_BASE: u64 = 0x4000;
/// Where RX buffers are allocated from; TX buffers start 4 MiB above.
pub const RX_DATA: u64 = 0x10_0000;
/// Where TX buffers are allocated from.
pub const TX_DATA: u64 = 0x50_0000;

/// Guest RAM of [`RAM_SIZE`] bytes.
pub fn ram() -> GuestRam {
    virtq::ram(RAM_SIZE)
}

/// Features of a guest that takes everything (offloads included).
pub fn all_features() -> u64 {
    [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
    ]
    .iter()
    .fold(0, |acc, b| acc | 1u64 << b)
}

/// Features of a plain guest: no offloads, mergeable buffers.
pub fn plain_features() -> u64 {
    1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_MRG_RXBUF
}

/// `features` without mergeable buffers.
pub fn no_mrg(features: u64) -> u64 {
    features & !(1 << VIRTIO_NET_F_MRG_RXBUF)
}

/// `features` with EVENT_IDX.
pub fn with_event_idx(features: u64) -> u64 {
    features | 1 << VIRTIO_RING_F_EVENT_IDX
}

hv_test_support::test_queue_wrapper!(
    /// The shared test queue ([`QUEUE_SIZE`] entries) with virtio-net helpers; everything else
    /// comes from [`virtq::TestQueue`] through `Deref`.
    TestQueue
);

impl<'a> TestQueue<'a> {
    /// A queue at `base`, allocating buffers from `data_base` upwards.
    pub fn new(mem: &'a GuestMemory, base: u64, data_base: u64) -> Self {
        Self(virtq::TestQueue::new(mem, QUEUE_SIZE, base, data_base))
    }

    /// The RX queue of the standard layout.
    pub fn rx(mem: &'a GuestMemory) -> Self {
        Self::new(mem, RX_BASE, RX_DATA)
    }

    /// The TX queue of the standard layout.
    pub fn tx(mem: &'a GuestMemory) -> Self {
        Self::new(mem, TX_BASE, TX_DATA)
    }

    /// Turns EVENT_IDX on for the device side.
    pub fn event_idx(self) -> Self {
        Self(self.0.event_idx())
    }

    /// The device side, for an activation that takes the queue by value.
    pub fn into_queue(self) -> Queue {
        self.0.into_queue()
    }

    /// Posts an RX buffer made of writable pieces of `lens` bytes; returns (head, addresses).
    pub fn post_rx(&mut self, lens: &[u32]) -> (u16, Vec<u64>) {
        let addrs: Vec<u64> = lens.iter().map(|&l| self.alloc(u64::from(l))).collect();
        let descs: Vec<_> = addrs.iter().zip(lens).map(|(&a, &l)| (a, l, W)).collect();
        (self.add_chain(&descs), addrs)
    }

    /// Queues `hdr` + `frame` for TX, split into readable pieces of `split` bytes (the header
    /// always in a descriptor of its own when `split` is empty); returns the head.
    pub fn send(&mut self, hdr: &NetHeader, frame: &[u8], split: &[usize]) -> u16 {
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(frame);
        let mut pieces = Vec::new();
        if split.is_empty() {
            pieces.push(NET_HDR_LEN);
            pieces.push(frame.len());
        } else {
            pieces.extend_from_slice(split);
        }
        let mut descs = Vec::new();
        let mut at = 0;
        for len in pieces {
            let a = self.alloc(len as u64);
            self.write_guest(a, &bytes[at..at + len]);
            descs.push((a, len as u32, R));
            at += len;
        }
        assert_eq!(at, bytes.len(), "split must cover header and frame");
        self.add_chain(&descs)
    }
}

/// An Ethernet frame of `len` bytes: broadcast destination, source 52:54:00:00:00:`seed`, an
/// IPv4 ethertype, and a pattern after.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    assert!(len >= 14);
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, seed]);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend((14..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// The header a plain frame carries (no offloads; num_buffers as the device sets it).
pub fn plain_header(num_buffers: u16) -> NetHeader {
    NetHeader { num_buffers, ..NetHeader::default() }
}
