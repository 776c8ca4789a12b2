//! hv-storage: storage pools and volumes in libvirt's model (directory and logical pools),
//! block backends, and the virtio-blk device.
//!
//! - [`pool`]: pools and volumes (`Pool`, `PoolManager`, `DirPool`, `LogicalPool`).

pub mod block;
pub mod format;
pub mod pool;
pub mod virtio_blk;
