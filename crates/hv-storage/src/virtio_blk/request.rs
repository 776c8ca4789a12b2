//! virtio-blk requests: a descriptor chain parsed into a typed, validated [`Request`] before
//! anything is done, then performed against a [`BlockBackend`].
//!
//! A chain is: one device-readable header descriptor of at least 16 bytes
//! (`struct virtio_blk_outhdr`), data descriptors in the direction the request type needs, and
//! a device-writable status descriptor of at least one byte, last. Everything the guest wrote
//! is checked before use: descriptor directions, that every buffer lies in guest memory, data
//! lengths (whole sectors, bounded), the sector range against the disk, discard/write-zeroes
//! segments (count, flags, size, range), and that the chain ends where it says it ends (a loop
//! or a bad `next` index truncates the chain, which is an error).
//!
//! A malformed request with a usable status byte is answered with IOERR or UNSUPP; without one
//! it can only be returned to the guest unanswered ([`ParseFailure::status_addr`] is `None`).
//! Guest memory is only touched through vm-memory's checked accessors.

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use hv_mem::GuestMemory;

use super::{BlockConfig, SECTOR_SHIFT, SECTOR_SIZE, SERIAL_LEN};
use crate::block::{BlockBackend, BlockError, GuestSlice};

/// Size of the request header (`struct virtio_blk_outhdr`).
pub const HEADER_LEN: u32 = 16;
/// Size of one discard/write-zeroes segment (`struct virtio_blk_discard_write_zeroes`).
pub const SEGMENT_LEN: u32 = 16;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the guest (VIRTIO_BLK_T_IN).
    In,
    /// Write sectors from the guest (VIRTIO_BLK_T_OUT).
    Out,
    /// Make written data durable (VIRTIO_BLK_T_FLUSH).
    Flush,
    /// Return the device serial (VIRTIO_BLK_T_GET_ID).
    GetId,
    /// Discard ranges (VIRTIO_BLK_T_DISCARD).
    Discard,
    /// Zero ranges (VIRTIO_BLK_T_WRITE_ZEROES).
    WriteZeroes,
    /// Any other type: answered with UNSUPP.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }
}

/// A data buffer of a request, checked to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataDescriptor {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// One range of a discard or write-zeroes request, validated against the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscardWriteZeroesSegment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// Flags (only VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, on write-zeroes, is accepted).
    pub flags: u32,
}

impl DiscardWriteZeroesSegment {
    /// True when the driver allows the zeroed range to be deallocated.
    pub fn unmap(&self) -> bool {
        self.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
    }
}

/// The limits a request is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Disk size in sectors.
    pub capacity_sectors: u64,
    /// Writes, discards and write-zeroes are refused (IOERR).
    pub read_only: bool,
    /// Most data descriptors per request.
    pub max_data_descriptors: u32,
    /// Most data bytes per read or write.
    pub max_data_bytes: u32,
    /// Most segments per discard request.
    pub max_discard_seg: u32,
    /// Most sectors per discard segment.
    pub max_discard_sectors: u32,
    /// Most segments per write-zeroes request.
    pub max_write_zeroes_seg: u32,
    /// Most sectors per write-zeroes segment.
    pub max_write_zeroes_sectors: u32,
}

impl RequestLimits {
    /// The limits a device with `config` over `backend` advertises.
    pub fn new(backend: &dyn BlockBackend, config: &BlockConfig) -> Self {
        Self {
            capacity_sectors: backend.size() >> SECTOR_SHIFT,
            read_only: backend.read_only(),
            max_data_descriptors: config.seg_max(),
            max_data_bytes: config.max_request_bytes,
            max_discard_seg: config.max_discard_seg,
            max_discard_sectors: config.max_discard_sectors,
            max_write_zeroes_seg: config.max_write_zeroes_seg,
            max_write_zeroes_sectors: config.max_write_zeroes_sectors,
        }
    }
}

/// Why a chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Fewer than two descriptors (a header and a status are needed).
    #[error("descriptor chain has {0} descriptors; a header and a status are needed")]
    ChainTooShort(usize),
    /// The chain ended early: a loop, a `next` index outside the queue, a bad indirect table,
    /// or more than 4 GiB in total.
    #[error("descriptor chain is truncated (loop, bad next index or bad indirect table)")]
    ChainTruncated,
    /// More data descriptors than the device advertised.
    #[error("{count} data descriptors, more than the {max} allowed")]
    TooManyDescriptors {
        /// Data descriptors seen (at least).
        count: usize,
        /// The limit.
        max: u32,
    },
    /// The last descriptor is not device-writable.
    #[error("status descriptor is not device-writable")]
    StatusNotWritable,
    /// The status descriptor is empty or outside guest memory.
    #[error("status descriptor at {addr:#x} (len {len}) is empty or outside guest memory")]
    StatusInvalid {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The first descriptor is device-writable.
    #[error("request header descriptor is device-writable")]
    HeaderNotReadable,
    /// The header is shorter than 16 bytes.
    #[error("request header is {0} bytes, 16 are needed")]
    HeaderTooShort(u32),
    /// The header lies outside guest memory.
    #[error("request header at {0:#x} is outside guest memory")]
    HeaderOutOfMemory(u64),
    /// The request type is not one this device performs.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// A data descriptor goes the wrong way for the request type.
    #[error("data descriptor {index} has the wrong direction")]
    WrongDirection {
        /// Position in the chain.
        index: usize,
    },
    /// A data descriptor lies (partly) outside guest memory.
    #[error("data buffer at {addr:#x} ({len} bytes) is outside guest memory")]
    DataOutOfMemory {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A read, write or get-id without data.
    #[error("request has no data buffer")]
    NoData,
    /// Data length is not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    NotSectorMultiple(u64),
    /// Data length exceeds the device limit.
    #[error("data length {len} exceeds the limit of {max} bytes")]
    TooLong {
        /// The length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// The sector range goes past the end of the disk.
    #[error("sectors {sector}..+{count} are outside the disk ({capacity} sectors)")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
        /// Disk size in sectors.
        capacity: u64,
    },
    /// A write, discard or write-zeroes on a read-only disk.
    #[error("write request on a read-only disk")]
    ReadOnly,
    /// Discard/write-zeroes data is not a whole number of 16-byte segments.
    #[error("discard/write-zeroes data of {0} bytes is not a whole number of segments")]
    BadSegmentLength(u64),
    /// Too many discard/write-zeroes segments.
    #[error("{count} segments, more than the {max} allowed")]
    TooManySegments {
        /// Segments in the request.
        count: u64,
        /// The limit.
        max: u32,
    },
    /// A segment has unknown flags, or unmap on a discard.
    #[error("segment flags {0:#x} are not supported")]
    SegmentFlags(u32),
    /// A segment covers more sectors than advertised.
    #[error("segment of {sectors} sectors exceeds the limit of {max}")]
    SegmentTooLarge {
        /// Its length in sectors.
        sectors: u32,
        /// The limit.
        max: u32,
    },
}

impl RequestError {
    /// The status byte the guest gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) | Self::SegmentFlags(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A refused chain: the error and, when the chain has a usable status byte, its address.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseFailure {
    /// What was wrong.
    pub error: RequestError,
    /// Where to write the error status; `None` when the chain has no usable status byte.
    pub status_addr: Option<GuestAddress>,
}

/// A validated virtio-blk request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub request_type: RequestType,
    /// First sector (reads and writes).
    pub sector: u64,
    /// Data buffers, in order.
    pub data: Vec<DataDescriptor>,
    /// Total data length in bytes.
    pub data_len: u32,
    /// Where the status byte goes.
    pub status_addr: GuestAddress,
    /// Discard/write-zeroes ranges.
    pub segments: Vec<DiscardWriteZeroesSegment>,
}

/// The result of performing a request.
#[derive(Debug)]
pub struct Completion {
    /// The status byte for the guest.
    pub status: u8,
    /// Bytes written into device-writable buffers, status byte included.
    pub used_len: u32,
    /// The backend error behind an IOERR, if any.
    pub error: Option<BlockError>,
}

fn in_memory(mem: &GuestMemory, addr: GuestAddress, len: u32) -> bool {
    GuestMemoryBackend::check_range(mem, addr, len as usize)
}

impl Request {
    /// Parses and validates a descriptor chain whose buffers are in `mem`.
    pub fn parse<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemory,
        limits: &RequestLimits,
    ) -> Result<Self, ParseFailure>
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        Self::parse_descriptors(chain, mem, limits)
    }

    /// Parses and validates a request from the descriptors of a chain, in chain order (the
    /// iterator may stop early on a malformed chain, as `DescriptorChain` does).
    pub fn parse_descriptors(
        chain: impl Iterator<Item = Descriptor>,
        mem: &GuestMemory,
        limits: &RequestLimits,
    ) -> Result<Self, ParseFailure> {
        // Header + data + status; one more to notice a chain that is too long.
        let cap = limits.max_data_descriptors as usize + 3;
        let descs: Vec<Descriptor> = chain.take(cap).collect();
        let fail = |error, status_addr| Err(ParseFailure { error, status_addr });
        let Some(last) = descs.last() else { return fail(RequestError::ChainTooShort(0), None) };
        if last.has_next() {
            if descs.len() == cap {
                let count = descs.len() - 2;
                return fail(
                    RequestError::TooManyDescriptors { count, max: limits.max_data_descriptors },
                    None,
                );
            }
            return fail(RequestError::ChainTruncated, None);
        }
        if descs.len() < 2 {
            return fail(RequestError::ChainTooShort(descs.len()), None);
        }
        if !last.is_write_only() {
            return fail(RequestError::StatusNotWritable, None);
        }
        if last.len() == 0 || !in_memory(mem, last.addr(), 1) {
            let error = RequestError::StatusInvalid { addr: last.addr().0, len: last.len() };
            return fail(error, None);
        }
        let status_addr = last.addr();
        Self::parse_body(mem, &descs, status_addr, limits)
            .map_err(|error| ParseFailure { error, status_addr: Some(status_addr) })
    }

    fn parse_body(
        mem: &GuestMemory,
        descs: &[Descriptor],
        status_addr: GuestAddress,
        limits: &RequestLimits,
    ) -> Result<Self, RequestError> {
        let header = descs[0];
        if header.is_write_only() {
            return Err(RequestError::HeaderNotReadable);
        }
        if header.len() < HEADER_LEN {
            return Err(RequestError::HeaderTooShort(header.len()));
        }
        let mut raw = [0u8; HEADER_LEN as usize];
        mem.read_slice(&mut raw, header.addr())
            .map_err(|_| RequestError::HeaderOutOfMemory(header.addr().0))?;
        let type_ = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let sector = u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default());
        let request_type = RequestType::from(type_);

        let data_descs = &descs[1..descs.len() - 1];
        if data_descs.len() > limits.max_data_descriptors as usize {
            return Err(RequestError::TooManyDescriptors {
                count: data_descs.len(),
                max: limits.max_data_descriptors,
            });
        }
        let device_writes = match request_type {
            RequestType::Unsupported(t) => return Err(RequestError::Unsupported(t)),
            RequestType::In | RequestType::GetId => true,
            RequestType::Out | RequestType::Discard | RequestType::WriteZeroes => {
                if limits.read_only {
                    return Err(RequestError::ReadOnly);
                }
                false
            }
            RequestType::Flush => false,
        };
        // A flush carries no data; buffers a driver adds anyway are ignored, not checked.
        let data_descs = if request_type == RequestType::Flush { &[][..] } else { data_descs };
        let mut data = Vec::with_capacity(data_descs.len());
        let mut total: u64 = 0;
        for (i, d) in data_descs.iter().enumerate() {
            if d.is_write_only() != device_writes {
                return Err(RequestError::WrongDirection { index: i + 1 });
            }
            if !in_memory(mem, d.addr(), d.len()) {
                return Err(RequestError::DataOutOfMemory { addr: d.addr().0, len: d.len() });
            }
            total += u64::from(d.len());
            if d.len() > 0 {
                data.push(DataDescriptor { addr: d.addr(), len: d.len() });
            }
        }
        let mut req =
            Request { request_type, sector, data, data_len: 0, status_addr, segments: Vec::new() };
        match request_type {
            RequestType::In | RequestType::Out => {
                if total == 0 {
                    return Err(RequestError::NoData);
                }
                if !total.is_multiple_of(SECTOR_SIZE) {
                    return Err(RequestError::NotSectorMultiple(total));
                }
                if total > u64::from(limits.max_data_bytes) {
                    return Err(RequestError::TooLong { len: total, max: limits.max_data_bytes });
                }
                check_sectors(sector, total >> SECTOR_SHIFT, limits.capacity_sectors)?;
            }
            RequestType::GetId => {
                if total == 0 {
                    return Err(RequestError::NoData);
                }
            }
            RequestType::Flush => {} // The sector field is reserved.

            RequestType::Discard | RequestType::WriteZeroes => {
                req.segments = parse_segments(mem, &req.data, total, request_type, limits)?;
                req.data.clear();
                total = 0;
            }
            RequestType::Unsupported(_) => unreachable!("returned above"),
        }
        // Bounded by max_data_bytes (In/Out) or by the chain limit of 4 GiB (GetId).
        req.data_len = u32::try_from(total).unwrap_or(u32::MAX);
        Ok(req)
    }

    /// Data bytes the request moves (what a bytes rate limiter counts).
    pub fn data_bytes(&self) -> u64 {
        match self.request_type {
            RequestType::In | RequestType::Out => u64::from(self.data_len),
            _ => 0,
        }
    }

    /// Guest slices over the data buffers (validated at parse time).
    pub(crate) fn slices<'m>(
        &self,
        mem: &'m GuestMemory,
    ) -> Result<Vec<GuestSlice<'m>>, vm_memory::GuestMemoryError> {
        let mut out = Vec::with_capacity(self.data.len());
        for d in &self.data {
            for s in mem.get_slices(d.addr, d.len as usize) {
                out.push(s?);
            }
        }
        Ok(out)
    }

    /// Performs the request against `backend`; `serial` answers GET_ID. Does not write the
    /// status byte (see [`Completion`]).
    pub fn execute(
        &self,
        mem: &GuestMemory,
        backend: &mut dyn BlockBackend,
        serial: &[u8; SERIAL_LEN],
    ) -> Completion {
        let offset = self.sector << SECTOR_SHIFT;
        let mut written = 0u32;
        let result: Result<(), BlockError> = match self.request_type {
            RequestType::In | RequestType::Out => match self.slices(mem) {
                Ok(slices) if self.request_type == RequestType::In => {
                    written = self.data_len;
                    backend.read_vectored(offset, &slices)
                }
                Ok(slices) => backend.write_vectored(offset, &slices),
                Err(e) => Err(BlockError::Io {
                    op: "map guest buffers",
                    offset,
                    len: u64::from(self.data_len),
                    source: std::io::Error::other(e.to_string()),
                }),
            },
            RequestType::Flush => backend.flush(),
            RequestType::GetId => {
                let mut pos = 0usize;
                for d in &self.data {
                    let n = (d.len as usize).min(SERIAL_LEN - pos);
                    if n == 0 {
                        break;
                    }
                    // Checked at parse time; a failure here leaves the rest unwritten.
                    if mem.write_slice(&serial[pos..pos + n], d.addr).is_err() {
                        break;
                    }
                    pos += n;
                }
                written = pos as u32;
                Ok(())
            }
            // Empty segments are valid and do nothing.
            RequestType::Discard => {
                self.segments.iter().filter(|s| s.num_sectors > 0).try_for_each(|s| {
                    let (off, len) = segment_bytes(s);
                    backend.discard(off, len)
                })
            }
            RequestType::WriteZeroes => {
                self.segments.iter().filter(|s| s.num_sectors > 0).try_for_each(|s| {
                    let (off, len) = segment_bytes(s);
                    backend.write_zeroes(off, len, s.unmap())
                })
            }
            RequestType::Unsupported(_) => Ok(()),
        };
        match result {
            Ok(()) => {
                Completion { status: VIRTIO_BLK_S_OK as u8, used_len: written + 1, error: None }
            }
            Err(e) => Completion { status: VIRTIO_BLK_S_IOERR as u8, used_len: 1, error: Some(e) },
        }
    }
}

fn segment_bytes(s: &DiscardWriteZeroesSegment) -> (u64, u64) {
    (s.sector << SECTOR_SHIFT, u64::from(s.num_sectors) << SECTOR_SHIFT)
}

fn check_sectors(sector: u64, count: u64, capacity: u64) -> Result<(), RequestError> {
    match sector.checked_add(count) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::OutOfRange { sector, count, capacity }),
    }
}

fn parse_segments(
    mem: &GuestMemory,
    data: &[DataDescriptor],
    total: u64,
    ty: RequestType,
    limits: &RequestLimits,
) -> Result<Vec<DiscardWriteZeroesSegment>, RequestError> {
    let (max_seg, max_sectors) = if ty == RequestType::Discard {
        (limits.max_discard_seg, limits.max_discard_sectors)
    } else {
        (limits.max_write_zeroes_seg, limits.max_write_zeroes_sectors)
    };
    if total == 0 || !total.is_multiple_of(u64::from(SEGMENT_LEN)) {
        return Err(RequestError::BadSegmentLength(total));
    }
    let count = total / u64::from(SEGMENT_LEN);
    if count > u64::from(max_seg) {
        return Err(RequestError::TooManySegments { count, max: max_seg });
    }
    // count <= max_seg, so this buffer is bounded by the device's own limit.
    let mut raw = vec![0u8; total as usize];
    let mut pos = 0usize;
    for d in data {
        let end = pos + d.len as usize;
        mem.read_slice(&mut raw[pos..end], d.addr)
            .map_err(|_| RequestError::DataOutOfMemory { addr: d.addr.0, len: d.len })?;
        pos = end;
    }
    let allowed_flags =
        if ty == RequestType::Discard { 0 } else { VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP };
    raw.chunks_exact(SEGMENT_LEN as usize)
        .map(|c| {
            let seg = DiscardWriteZeroesSegment {
                sector: u64::from_le_bytes(c[0..8].try_into().unwrap_or_default()),
                num_sectors: u32::from_le_bytes(c[8..12].try_into().unwrap_or_default()),
                flags: u32::from_le_bytes(c[12..16].try_into().unwrap_or_default()),
            };
            if seg.flags & !allowed_flags != 0 {
                return Err(RequestError::SegmentFlags(seg.flags));
            }
            if seg.num_sectors > max_sectors {
                return Err(RequestError::SegmentTooLarge {
                    sectors: seg.num_sectors,
                    max: max_sectors,
                });
            }
            check_sectors(seg.sector, u64::from(seg.num_sectors), limits.capacity_sectors)?;
            Ok(seg)
        })
        .collect()
}
