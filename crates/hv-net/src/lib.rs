//! hv-net: TAP devices, Linux bridges, NAT and isolated networks, VXLAN, port filtering and
//! the virtio-net device.
//!
//! Host side:
//! - [`netlink`]: a synchronous rtnetlink client for links (bridge, veth, VXLAN, VLAN),
//!   addresses and routes.
//! - [`tap`]: TAP devices through `/dev/net/tun` with the virtio-net header and offloads.
//! - [`nft`]: nftables through the `nft` binary's JSON API: NAT/isolation tables per network
//!   and port security (anti-spoofing, security groups) per guest port in the bridge family.
//! - [`ifname`]: [`IfName`], the interface names Linux and nftables both take as they are.
//! - [`network`]: libvirt-style networks (`nat`, `isolated`, `bridge`) persisted in a state
//!   directory, with a [`network::NetworkManager`] to define, start, destroy and list them.
//! - [`features`]: what this host's kernel can do (VLAN devices, bridge VLAN filtering, vhost-net).
//!
//! Guest side:
//! - [`virtio_net`]: the virtio-net device over a TAP (or any [`virtio_net::NetBackend`]).
//!
//! Every object hv makes carries an `hv` prefix so it can be found and removed.

pub mod dhcp;
pub mod features;
pub mod ifname;
pub mod netlink;
pub mod network;
pub mod nft;
pub mod tap;
pub mod types;
pub mod virtio_net;

pub use ifname::{IfName, InvalidIfName};
pub use types::{Ipv4Cidr, MacAddr};
