//! Shared helpers for the virtio-net tests: guest memory, split virtqueues the test fills by
//! hand (well-formed or not), frames, and feature sets.
#![allow(dead_code)]

use hv_mem::{GuestMemory, GuestRam, MemoryConfig};
use hv_net::virtio_net::{NetHeader, NET_HDR_LEN};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::*;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

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

/// Device-writable descriptor flag.
pub const W: u16 = VRING_DESC_F_WRITE as u16;
/// Device-readable (no flags).
pub const R: u16 = 0;
/// The NEXT flag.
pub const N: u16 = VRING_DESC_F_NEXT as u16;

pub fn ram() -> GuestRam {
    GuestRam::new(&MemoryConfig::new(RAM_SIZE)).expect("guest RAM")
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

/// A split queue the tests fill by hand: descriptor table at `base`, avail ring at
/// `base + 0x1000`, used ring at `base + 0x2000`.
pub struct TestQueue<'a> {
    pub mem: &'a GuestMemory,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    next_desc: u16,
    avail: u16,
    next_addr: u64,
    pub queue: Queue,
}

impl<'a> TestQueue<'a> {
    /// A queue at `base`, allocating buffers from `data_base` upwards.
    pub fn new(mem: &'a GuestMemory, base: u64, data_base: u64) -> Self {
        let (desc_table, avail_ring, used_ring) = (base, base + 0x1000, base + 0x2000);
        mem.write_slice(&[0u8; 0x3000], GuestAddress(base)).expect("clear queue memory");
        let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
        queue.set_size(QUEUE_SIZE);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(desc_table);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(avail_ring);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(used_ring);
        queue.set_used_ring_address(lo, hi);
        queue.set_ready(true);
        assert!(queue.is_valid(mem), "test queue layout");
        Self {
            mem,
            desc_table,
            avail_ring,
            used_ring,
            next_desc: 0,
            avail: 0,
            next_addr: data_base,
            queue,
        }
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
    pub fn event_idx(mut self) -> Self {
        self.queue.set_event_idx(true);
        self
    }

    /// Allocates `len` bytes of guest memory (64-byte aligned).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next_addr;
        self.next_addr += len.div_ceil(64).max(1) * 64;
        a
    }

    /// Writes raw descriptors at table indices starting at the next free one (`next` fields
    /// below the queue size are relative to that start; others are kept as they are);
    /// makes `head` (relative) available.
    pub fn add_raw(&mut self, descs: &[(u64, u32, u16, u16)], head: u16) -> u16 {
        let base = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let idx = (base + i as u16) % QUEUE_SIZE;
            let next = if next >= QUEUE_SIZE { next } else { (next + base) % QUEUE_SIZE };
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            let at = GuestAddress(self.desc_table + 16 * u64::from(idx));
            self.mem.write_obj(d, at).expect("store desc");
        }
        self.next_desc = (base + descs.len() as u16) % QUEUE_SIZE;
        let head = (base + head) % QUEUE_SIZE;
        self.push_avail(head);
        head
    }

    /// Makes a table index available without touching the table.
    pub fn push_avail(&mut self, head: u16) {
        let slot = u64::from(self.avail % QUEUE_SIZE);
        let at = GuestAddress(self.avail_ring + 4 + 2 * slot);
        self.mem.write_obj(head.to_le(), at).expect("avail slot");
        self.avail = self.avail.wrapping_add(1);
        self.mem.write_obj(self.avail.to_le(), GuestAddress(self.avail_ring + 2)).expect("idx");
    }

    /// Adds a well-linked chain of `(addr, len, flags)`; returns its head index.
    pub fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let n = descs.len();
        let raw: Vec<_> = descs
            .iter()
            .enumerate()
            .map(
                |(i, &(a, l, f))| {
                    if i + 1 < n {
                        (a, l, f | N, i as u16 + 1)
                    } else {
                        (a, l, f & !N, 0)
                    }
                },
            )
            .collect();
        self.add_raw(&raw, 0)
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

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(self.used_ring + 2)).expect("used idx"))
    }

    /// Used element `i`: (descriptor head, length).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let at = self.used_ring + 4 + 8 * u64::from(i % QUEUE_SIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
        (u32::from_le(id), u32::from_le(len))
    }

    /// Every used element so far.
    pub fn all_used(&self) -> Vec<(u32, u32)> {
        (0..self.used_idx()).map(|i| self.used(i)).collect()
    }

    /// Sets the avail ring flags (e.g. VRING_AVAIL_F_NO_INTERRUPT).
    pub fn set_avail_flags(&self, flags: u16) {
        self.mem.write_obj(flags.to_le(), GuestAddress(self.avail_ring)).expect("avail flags");
    }

    /// Sets `used_event` (EVENT_IDX), the field after the avail ring's entries.
    pub fn set_used_event(&self, v: u16) {
        let addr = self.avail_ring + 4 + 2 * u64::from(QUEUE_SIZE);
        self.mem.write_obj(v.to_le(), GuestAddress(addr)).expect("used_event");
    }

    pub fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).expect("read guest");
        v
    }

    pub fn write_guest(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).expect("write guest");
    }

    /// The bytes the device wrote into an RX buffer of pieces at `addrs` with `lens`, up to
    /// `used` bytes.
    pub fn gather(&self, addrs: &[u64], lens: &[u32], used: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (&a, &l) in addrs.iter().zip(lens) {
            let n = (l as usize).min(used - out.len());
            out.extend(self.read_guest(a, n));
            if out.len() == used {
                break;
            }
        }
        out
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
