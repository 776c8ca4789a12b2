//! virtio-blk: request parsing ([`request`]), queue processing ([`queue_handler`]), the
//! device behind hv-core's `VirtioDevice` trait ([`device`]), and the device's feature bits and
//! configuration space (here).
//!
//! [`VirtioBlock`] is thin: it offers [`device_features`], serves config reads from
//! [`config_space`] with [`read_config`], builds one [`BlockQueueHandler`] per queue at
//! activation (each with its own clone of the backend), and its worker thread calls
//! [`BlockQueueHandler::process_queue`] on each queue notification, raising the interrupt
//! when it returns `true`. The example below does by hand what the device does.
//!
//! All constants come from `virtio-bindings`; only the 512-byte sector, a unit of the virtio
//! specification that the bindings do not name, is defined here.
//!
//! ```no_run
//! use hv_storage::block::{open_disk, DiskFormat, DiskOptions};
//! use hv_storage::virtio_blk::queue_handler::handlers_for_queues;
//! use hv_storage::virtio_blk::virtio_queue::Queue;
//! use hv_storage::virtio_blk::{config_space, device_features, read_config, BlockConfig};
//!
//! # fn device(mem: &hv_mem::GuestMemory, queues: &mut [Queue]) -> Result<(), Box<dyn std::error::Error>> {
//! // A qcow2 image without a backing file (none is allowed by the default options).
//! let disk = open_disk("/var/lib/hv/images/vm1.qcow2", DiskFormat::Qcow2, DiskOptions::default())?;
//! let config = BlockConfig::default().with_serial("vm1-root").with_queues(2);
//! let features = device_features(disk.as_ref(), &config); // offered to the driver
//! let space = config_space(disk.as_ref(), &config);
//! let mut bytes = [0u8; 8];
//! read_config(&space, 0, &mut bytes); // a driver reading `capacity`
//! // At activation: one handler per queue; on each queue notification:
//! let mut handlers = handlers_for_queues(disk, &config, None)?;
//! for (handler, queue) in handlers.iter_mut().zip(queues.iter_mut()) {
//!     if handler.process_queue(queue, mem)? {
//!         // raise this queue's interrupt (irqfd)
//!     }
//!     if let Some(wait) = handler.throttled_for() {
//!         // arm a timer for `wait`, then call process_queue again
//!     }
//! }
//! # let _ = features; Ok(()) }
//! ```

pub mod device;
pub mod queue_handler;
pub mod request;

use virtio_bindings::bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use crate::block::BlockBackend;

pub use device::{BlockHandle, VirtioBlock};
pub use queue_handler::{BlockQueueHandler, QueueHandlerError, QueueStats};
pub use request::{
    DataDescriptor, DiscardWriteZeroesSegment, ParseFailure, Request, RequestError, RequestLimits,
    RequestType,
};
/// Re-export of `virtio-bindings`, so embedders use the constants this device uses.
pub use virtio_bindings;
/// Re-export of `virtio-queue`, so embedders hand the handler the same `Queue` type.
pub use virtio_queue;

/// Bytes per virtio-blk sector: request sectors are always in 512-byte units (virtio spec
/// 5.2.6), whatever the disk's block size.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Length of the serial a GET_ID request returns.
pub const SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Device settings that are not properties of the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// The serial returned by GET_ID (NUL-padded, not necessarily NUL-terminated).
    pub serial: [u8; SERIAL_LEN],
    /// Number of request queues offered (VIRTIO_BLK_F_MQ when more than one).
    pub num_queues: u16,
    /// Maximum queue size; the device advertises `queue_size - 2` data segments per request.
    pub queue_size: u16,
    /// Most bytes of data one read or write may move.
    pub max_request_bytes: u32,
    /// Most sectors one discard segment may cover.
    pub max_discard_sectors: u32,
    /// Most segments in one discard request.
    pub max_discard_seg: u32,
    /// Most sectors one write-zeroes segment may cover.
    pub max_write_zeroes_sectors: u32,
    /// Most segments in one write-zeroes request.
    pub max_write_zeroes_seg: u32,
    /// Offer VIRTIO_RING_F_EVENT_IDX (notification suppression).
    pub event_idx: bool,
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self {
            serial: [0; SERIAL_LEN],
            num_queues: 1,
            queue_size: 256,
            max_request_bytes: 32 << 20,
            max_discard_sectors: u32::MAX >> SECTOR_SHIFT,
            max_discard_seg: 32,
            max_write_zeroes_sectors: u32::MAX >> SECTOR_SHIFT,
            max_write_zeroes_seg: 32,
            event_idx: true,
        }
    }
}

impl BlockConfig {
    /// Sets the serial from a string (truncated to 20 bytes, NUL-padded).
    pub fn with_serial(mut self, serial: &str) -> Self {
        self.serial = serial_bytes(serial);
        self
    }

    /// Sets the number of queues.
    pub fn with_queues(mut self, num_queues: u16) -> Self {
        self.num_queues = num_queues.max(1);
        self
    }

    /// The largest number of data descriptors one request may carry.
    pub fn seg_max(&self) -> u32 {
        u32::from(self.queue_size.saturating_sub(2)).max(1)
    }
}

/// A GET_ID serial from a string: its first 20 bytes, NUL-padded.
pub fn serial_bytes(serial: &str) -> [u8; SERIAL_LEN] {
    let mut out = [0u8; SERIAL_LEN];
    let n = serial.len().min(SERIAL_LEN);
    out[..n].copy_from_slice(&serial.as_bytes()[..n]);
    out
}

/// The feature bits the device offers for `backend`: VERSION_1, SEG_MAX, BLK_SIZE, FLUSH, and
/// either RO (read-only disk) or DISCARD + WRITE_ZEROES; MQ with several queues; EVENT_IDX
/// when configured.
pub fn device_features(backend: &dyn BlockBackend, config: &BlockConfig) -> u64 {
    let mut bits =
        [VIRTIO_F_VERSION_1, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH]
            .iter()
            .fold(0u64, |acc, b| acc | 1 << b);
    if backend.read_only() {
        bits |= 1 << VIRTIO_BLK_F_RO;
    } else {
        bits |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
    }
    if config.num_queues > 1 {
        bits |= 1 << VIRTIO_BLK_F_MQ;
    }
    if config.event_idx {
        bits |= 1 << VIRTIO_RING_F_EVENT_IDX;
    }
    bits
}

/// The device configuration space (`struct virtio_blk_config`, little-endian) for `backend`.
pub fn config_space(backend: &dyn BlockBackend, config: &BlockConfig) -> virtio_blk_config {
    virtio_blk_config {
        capacity: (backend.size() >> SECTOR_SHIFT).to_le(),
        seg_max: config.seg_max().to_le(),
        blk_size: backend.block_size().to_le(),
        num_queues: config.num_queues.to_le(),
        max_discard_sectors: config.max_discard_sectors.to_le(),
        max_discard_seg: config.max_discard_seg.to_le(),
        discard_sector_alignment: (backend.block_size() >> SECTOR_SHIFT).max(1).to_le(),
        max_write_zeroes_sectors: config.max_write_zeroes_sectors.to_le(),
        max_write_zeroes_seg: config.max_write_zeroes_seg.to_le(),
        write_zeroes_may_unmap: 1,
        ..Default::default()
    }
}

/// The bytes of a configuration space, as the guest reads them.
pub fn config_bytes(config: &virtio_blk_config) -> Vec<u8> {
    let len = std::mem::size_of::<virtio_blk_config>();
    // SAFETY: virtio_blk_config is a packed plain-old-data struct (integers only, no padding
    // bytes since it is packed), so all its `len` bytes are initialised and readable.
    unsafe { std::slice::from_raw_parts((config as *const virtio_blk_config).cast::<u8>(), len) }
        .to_vec()
}

/// Serves a guest read of `data.len()` bytes at `offset` in the configuration space; bytes past
/// its end read as zero.
pub fn read_config(config: &virtio_blk_config, offset: u64, data: &mut [u8]) {
    hv_core::virtio::read_config_space(&config_bytes(config), offset, data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_truncated_and_padded() {
        assert_eq!(&serial_bytes("abc")[..4], b"abc\0");
        assert_eq!(serial_bytes("0123456789abcdefghijXYZ"), *b"0123456789abcdefghij");
    }

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let cfg =
            virtio_blk_config { capacity: 0x1122_3344_5566_7788u64.to_le(), ..Default::default() };
        let mut b = [0xffu8; 4];
        read_config(&cfg, 0, &mut b);
        assert_eq!(b, [0x88, 0x77, 0x66, 0x55]);
        read_config(&cfg, 1 << 40, &mut b);
        assert_eq!(b, [0; 4]);
        let len = config_bytes(&cfg).len() as u64;
        read_config(&cfg, len - 2, &mut b);
        assert_eq!(b[2..], [0, 0]);
    }
}
