//! Helpers shared by hv-net's namespace tests: attach a "guest" (a child namespace behind a
//! veth) to a bridge, and the prerequisite check.
#![allow(dead_code)]

use hv_net::netlink::Netlink;
use hv_test_support::netns::NetNs;

/// Returns from the test unless it runs as root with `ip` and `ping` available.
#[macro_export]
macro_rules! need_root {
    () => {
        hv_test_support::require!(hv_test_support::is_root(), "network namespaces need root");
        hv_test_support::require!(
            hv_test_support::netns::have_netns_tools(),
            "iproute2 and iputils-ping (apt-get install iproute2 iputils-ping)"
        );
    };
}

/// Makes a veth `port` <-> `eth0` with `port` on `bridge` (in the calling thread's namespace)
/// and `eth0` in `guest`, addressed `cidr`, default route via `gateway` when given, MAC `mac`
/// when given.
pub fn attach_guest(
    nl: &mut Netlink,
    bridge: &str,
    port: &str,
    guest: &NetNs,
    cidr: &str,
    gateway: Option<&str>,
    mac: Option<&str>,
) {
    let peer = format!("{port}p");
    nl.create_veth(port, &peer).unwrap();
    nl.set_master(port, bridge).unwrap();
    nl.set_up(port).unwrap();
    nl.move_to_netns(&peer, &guest.open()).unwrap();
    guest.exec_ok(&["ip", "link", "set", &peer, "name", "eth0"]);
    if let Some(mac) = mac {
        guest.exec_ok(&["ip", "link", "set", "eth0", "address", mac]);
    }
    guest.exec_ok(&["ip", "addr", "add", cidr, "dev", "eth0"]);
    guest.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    if let Some(gw) = gateway {
        guest.exec_ok(&["ip", "route", "add", "default", "via", gw]);
    }
}

/// Makes an "upstream" peer: veth `port` (in the calling thread's namespace, addressed
/// `host_cidr`) <-> `eth0` in `peer_ns` addressed `peer_cidr`, with no route back.
pub fn attach_upstream(
    nl: &mut Netlink,
    port: &str,
    host_cidr: &str,
    peer_ns: &NetNs,
    peer_cidr: &str,
) {
    let peer = format!("{port}p");
    nl.create_veth(port, &peer).unwrap();
    let c: hv_net::Ipv4Cidr = host_cidr.parse().unwrap();
    nl.add_address(port, c.addr.into(), c.prefix).unwrap();
    nl.set_up(port).unwrap();
    nl.move_to_netns(&peer, &peer_ns.open()).unwrap();
    peer_ns.exec_ok(&["ip", "link", "set", &peer, "name", "eth0"]);
    peer_ns.exec_ok(&["ip", "addr", "add", peer_cidr, "dev", "eth0"]);
    peer_ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
}
