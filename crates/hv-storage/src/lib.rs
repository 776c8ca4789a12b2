//! hv-storage: storage pools and volumes in libvirt's model (directory and logical pools),
//! block backends, and the virtio-blk device.
//!
//! Skeleton: the pool, volume, backend and device modules land with issue #4.

pub mod block;
pub mod virtio_blk;
