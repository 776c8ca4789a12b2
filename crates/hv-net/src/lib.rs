//! hv-net: TAP devices, Linux bridges, NAT and isolated networks, VXLAN, port filtering and
//! the virtio-net device.
//!
//! Skeleton: the host-side objects and the device land with issue #5.

pub mod dhcp;
