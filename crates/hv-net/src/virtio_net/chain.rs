//! Descriptor chains turned into validated types before the device acts on them.
//!
//! A TX chain becomes a [`TxFrame`] (device-readable descriptors only, header plus a frame of
//! sane length), an RX chain an [`RxBuffer`] (device-writable descriptors only, room for at
//! least the header). Every descriptor's range is checked against guest memory here, and a
//! chain that loops, links past the descriptor table or names an unreadable descriptor is
//! [`ChainError::Broken`]: virtio-queue's iterator just stops on those, so a walk that ends on
//! a descriptor that still says NEXT was cut short.
//!
//! [`NetHeader`] is the 12-byte `virtio_net_hdr_v1`, with the checks a TX header must pass
//! (only offloads that were negotiated) and the fix-ups an RX header from the host gets.

use hv_mem::GuestMemory;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};

use super::{has_feature, MAX_FRAME_LEN, MIN_FRAME_LEN, NET_HDR_LEN};

/// Why a chain was dropped; each names the chain by its head descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The avail ring named a descriptor past the end of the table.
    #[error("avail ring names descriptor {head}, past the queue size {size}")]
    BadHead {
        /// The index the ring held.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// The chain loops, links past its table, or a descriptor (or indirect table) could not be
    /// read.
    #[error("chain {head} is broken: a loop, a link past the table or an unreadable descriptor")]
    Broken {
        /// The head descriptor.
        head: u16,
    },
    /// A descriptor's buffer is not all inside guest memory.
    #[error("chain {head}: buffer {addr:#x}+{len} lies outside guest memory")]
    OutOfMemory {
        /// The head descriptor.
        head: u16,
        /// The buffer's guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A TX chain has a device-writable descriptor.
    #[error("TX chain {head} has a device-writable descriptor")]
    WritableInTx {
        /// The head descriptor.
        head: u16,
    },
    /// An RX chain has a device-readable descriptor.
    #[error("RX chain {head} has a device-readable descriptor")]
    ReadableInRx {
        /// The head descriptor.
        head: u16,
    },
    /// A control chain has a device-readable descriptor after a device-writable one.
    #[error("control chain {head} has a device-readable descriptor after a writable one")]
    ReadableAfterWritable {
        /// The head descriptor.
        head: u16,
    },
    /// Too short for the header (and, on TX, an Ethernet header after it).
    #[error("chain {head}: {len} bytes, too short for the virtio-net header and a frame")]
    TooShort {
        /// The head descriptor.
        head: u16,
        /// The chain's total length.
        len: u64,
    },
    /// A TX chain longer than the header plus [`MAX_FRAME_LEN`].
    #[error("TX chain {head}: {len} bytes, over the limit of the header plus {MAX_FRAME_LEN}")]
    TooLarge {
        /// The head descriptor.
        head: u16,
        /// The chain's total length.
        len: u64,
    },
    /// A TX header asks for something not negotiated or impossible.
    #[error("TX chain {head}: header {reason}")]
    BadHeader {
        /// The head descriptor.
        head: u16,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// One guest buffer: a validated range of guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes (non-zero).
    pub len: u32,
}

/// Walks `chain`, keeping descriptors of the wanted direction (device-writable when
/// `writable`) and failing on the other; returns the non-empty segments and their total.
fn walk(
    chain: DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
    writable: bool,
) -> Result<(Vec<Segment>, u64), ChainError> {
    let head = chain.head_index();
    let mut segments = Vec::new();
    let mut total = 0u64;
    let mut last: Option<Descriptor> = None;
    for desc in chain {
        if desc.is_write_only() != writable {
            return Err(if writable {
                ChainError::ReadableInRx { head }
            } else {
                ChainError::WritableInTx { head }
            });
        }
        let (addr, len) = (desc.addr(), desc.len());
        if len > 0 {
            if !mem.check_range(addr, len as usize) {
                return Err(ChainError::OutOfMemory { head, addr: addr.0, len });
            }
            segments.push(Segment { addr, len });
            total += u64::from(len);
        }
        last = Some(desc);
    }
    if last.is_some_and(|d| d.has_next()) {
        return Err(ChainError::Broken { head });
    }
    Ok((segments, total))
}

/// A TX chain: the header and the frame, in device-readable guest buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxFrame {
    /// The head descriptor, to return the chain with.
    pub head: u16,
    /// The buffers, in order.
    pub segments: Vec<Segment>,
    /// Total length: header plus frame.
    pub len: usize,
}

impl TxFrame {
    /// Validates a TX chain: readable descriptors in guest memory, a whole chain, room for the
    /// header and an Ethernet header, no more than the header plus [`MAX_FRAME_LEN`].
    pub fn parse(
        chain: DescriptorChain<&GuestMemory>,
        mem: &GuestMemory,
    ) -> Result<Self, ChainError> {
        let head = chain.head_index();
        let (segments, total) = walk(chain, mem, false)?;
        if total < (NET_HDR_LEN + MIN_FRAME_LEN) as u64 {
            return Err(ChainError::TooShort { head, len: total });
        }
        if total > (NET_HDR_LEN + MAX_FRAME_LEN) as u64 {
            return Err(ChainError::TooLarge { head, len: total });
        }
        Ok(Self { head, segments, len: total as usize })
    }

    /// Copies header and frame into `buf` (resized to [`len`](Self::len)).
    pub fn read_into(&self, mem: &GuestMemory, buf: &mut Vec<u8>) -> Result<(), ChainError> {
        buf.resize(self.len, 0);
        let mut at = 0;
        for s in &self.segments {
            let n = s.len as usize;
            mem.read_slice(&mut buf[at..at + n], s.addr).map_err(|_| ChainError::OutOfMemory {
                head: self.head,
                addr: s.addr.0,
                len: s.len,
            })?;
            at += n;
        }
        Ok(())
    }
}

/// An RX chain: device-writable guest buffers with room for at least the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxBuffer {
    /// The head descriptor, to return the chain with.
    pub head: u16,
    /// The buffers, in order.
    pub segments: Vec<Segment>,
    /// Total room in bytes.
    pub capacity: usize,
}

impl RxBuffer {
    /// Validates an RX chain: writable descriptors in guest memory, a whole chain, room for the
    /// header.
    pub fn parse(
        chain: DescriptorChain<&GuestMemory>,
        mem: &GuestMemory,
    ) -> Result<Self, ChainError> {
        let head = chain.head_index();
        let (segments, total) = walk(chain, mem, true)?;
        if total < NET_HDR_LEN as u64 {
            return Err(ChainError::TooShort { head, len: total });
        }
        // A chain is at most a queue's worth of u32 lengths, which fits a usize here.
        Ok(Self { head, segments, capacity: total as usize })
    }

    /// Writes `data` at the start of the buffer, spreading it over the segments; returns how
    /// many bytes fit (all of `data` when it is no longer than the capacity).
    pub fn write(&self, mem: &GuestMemory, data: &[u8]) -> Result<usize, ChainError> {
        let mut done = 0;
        for s in &self.segments {
            if done == data.len() {
                break;
            }
            let n = (s.len as usize).min(data.len() - done);
            mem.write_slice(&data[done..done + n], s.addr).map_err(|_| {
                ChainError::OutOfMemory { head: self.head, addr: s.addr.0, len: s.len }
            })?;
            done += n;
        }
        Ok(done)
    }
}

/// The virtio-net header (`struct virtio_net_hdr_v1`), fields in host order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHeader {
    /// VIRTIO_NET_HDR_F_* flags.
    pub flags: u8,
    /// VIRTIO_NET_HDR_GSO_* type, possibly with the ECN bit.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum goes.
    pub csum_offset: u16,
    /// How many buffers the frame spans (RX with mergeable buffers; 1 otherwise).
    pub num_buffers: u16,
}

const NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const GSO_ECN: u8 = VIRTIO_NET_HDR_GSO_ECN as u8;

impl NetHeader {
    /// Reads a header from its 12 little-endian bytes.
    pub fn from_bytes(b: &[u8; NET_HDR_LEN]) -> Self {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        }
    }

    /// The header's 12 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [self.hdr_len, self.gso_size, self.csum_start, self.csum_offset]
            .into_iter()
            .chain([self.num_buffers])
            .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Checks a TX header against the negotiated `features` for a frame of `frame_len` bytes
    /// (after the header) going to a backend that does (`vnet_hdr`) or does not pass headers on.
    pub fn check_tx(
        &self,
        frame_len: usize,
        features: u64,
        vnet_hdr: bool,
    ) -> Result<(), &'static str> {
        let needs_csum = self.flags & NEEDS_CSUM != 0;
        if needs_csum {
            if !(vnet_hdr && has_feature(features, VIRTIO_NET_F_CSUM)) {
                return Err("asks for checksum offload, which was not negotiated");
            }
            if usize::from(self.csum_start) + usize::from(self.csum_offset) + 2 > frame_len {
                return Err("puts the checksum past the end of the frame");
            }
        }
        if self.gso_type & GSO_ECN != 0 {
            return Err("asks for ECN segmentation, which was not negotiated");
        }
        let needed = match u32::from(self.gso_type) {
            VIRTIO_NET_HDR_GSO_NONE => return Ok(()),
            VIRTIO_NET_HDR_GSO_TCPV4 => VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_HDR_GSO_TCPV6 => VIRTIO_NET_F_HOST_TSO6,
            _ => return Err("asks for a segmentation type this device does not offer"),
        };
        if !(vnet_hdr && has_feature(features, needed)) {
            return Err("asks for TCP segmentation, which was not negotiated");
        }
        if !needs_csum {
            return Err("asks for segmentation without a partial checksum");
        }
        if self.gso_size == 0 {
            return Err("asks for segmentation with a segment size of zero");
        }
        Ok(())
    }

    /// Fits a header the host produced to what the guest negotiated: without GUEST_CSUM the
    /// flags must be zero; segmented frames only of the kinds the guest takes. Returns an
    /// error for a frame the guest cannot take at all.
    pub fn fit_rx(&mut self, features: u64) -> Result<(), &'static str> {
        if !has_feature(features, VIRTIO_NET_F_GUEST_CSUM) {
            if self.flags & NEEDS_CSUM != 0 {
                return Err("has a partial checksum the guest cannot complete");
            }
            self.flags = 0;
        }
        if self.gso_type & GSO_ECN != 0 {
            return Err("is an ECN segment the guest did not negotiate");
        }
        let needed = match u32::from(self.gso_type) {
            VIRTIO_NET_HDR_GSO_NONE => return Ok(()),
            VIRTIO_NET_HDR_GSO_TCPV4 => VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_HDR_GSO_TCPV6 => VIRTIO_NET_F_GUEST_TSO6,
            _ => return Err("is a segment type the guest did not negotiate"),
        };
        if !has_feature(features, needed) {
            return Err("is a TCP segment the guest did not negotiate");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = NetHeader {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(&b[..4], &[1, 4, 2, 1]);
        assert_eq!(&b[10..], &[3, 0]);
        assert_eq!(NetHeader::from_bytes(&b), h);
    }

    #[test]
    fn tx_header_needs_negotiated_offloads() {
        let csum =
            NetHeader { flags: NEEDS_CSUM, csum_start: 34, csum_offset: 16, ..Default::default() };
        let all = 1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4;
        assert!(NetHeader::default().check_tx(60, 0, false).is_ok());
        assert!(csum.check_tx(60, all, true).is_ok());
        assert!(csum.check_tx(60, all, false).is_err());
        assert!(csum.check_tx(60, 0, true).is_err());
        assert!(csum.check_tx(51, all, true).is_err());
        let tso = NetHeader { gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8, gso_size: 1448, ..csum };
        assert!(tso.check_tx(9000, all, true).is_ok());
        assert!(tso.check_tx(9000, 1 << VIRTIO_NET_F_CSUM, true).is_err());
        assert!(NetHeader { flags: 0, ..tso }.check_tx(9000, all, true).is_err());
        assert!(NetHeader { gso_size: 0, ..tso }.check_tx(9000, all, true).is_err());
        assert!(NetHeader { gso_type: 3, ..tso }.check_tx(9000, all, true).is_err());
        assert!(NetHeader { gso_type: 0x81, ..tso }.check_tx(9000, all, true).is_err());
    }

    #[test]
    fn rx_header_fits_the_guest() {
        let mut h = NetHeader { flags: 2, ..Default::default() };
        h.fit_rx(0).unwrap();
        assert_eq!(h.flags, 0);
        let mut h = NetHeader { flags: 2, ..Default::default() };
        h.fit_rx(1 << VIRTIO_NET_F_GUEST_CSUM).unwrap();
        assert_eq!(h.flags, 2);
        assert!(NetHeader { flags: NEEDS_CSUM, ..Default::default() }.fit_rx(0).is_err());
        let tso = NetHeader { gso_type: VIRTIO_NET_HDR_GSO_TCPV6 as u8, ..Default::default() };
        assert!(tso.clone().fit_rx(1 << VIRTIO_NET_F_GUEST_TSO4).is_err());
        assert!(tso.clone().fit_rx(1 << VIRTIO_NET_F_GUEST_TSO6).is_ok());
    }
}
