//! VXLAN between two "hosts" (namespaces joined by a veth underlay): each host has a bridge
//! with a VXLAN link and a guest namespace on it; the guests ping each other across.

use std::net::Ipv4Addr;

use hv_net::netlink::{Netlink, VxlanConfig};
use hv_test_support::netns::NetNs;

mod common;

fn host_side(nl: &mut Netlink, underlay: &str, local: [u8; 4], remote: [u8; 4]) {
    nl.add_address(underlay, Ipv4Addr::from(local).into(), 24).unwrap();
    nl.set_up(underlay).unwrap();
    nl.create_bridge("hvbr").unwrap();
    nl.set_up("hvbr").unwrap();
    let mut cfg = VxlanConfig::new(4242);
    cfg.local = Some(Ipv4Addr::from(local));
    cfg.remote = Some(Ipv4Addr::from(remote));
    cfg.underlay = Some(underlay.to_string());
    nl.create_vxlan("hvvx", &cfg).unwrap();
    nl.set_master("hvvx", "hvbr").unwrap();
    nl.set_up("hvvx").unwrap();
}

#[test]
fn guests_on_two_hosts_ping_over_vxlan() {
    need_root!();
    let (a, b) = (NetNs::new("hvt-vxa"), NetNs::new("hvt-vxb"));
    let (ga, gb) = (NetNs::new("hvt-vga"), NetNs::new("hvt-vgb"));
    a.run(|| {
        let mut nl = Netlink::new().unwrap();
        nl.create_veth("hvul", "hvulb").unwrap();
        nl.move_to_netns("hvulb", &b.open()).unwrap();
        host_side(&mut nl, "hvul", [10, 90, 0, 1], [10, 90, 0, 2]);
        common::attach_guest(&mut nl, "hvbr", "hvga", &ga, "10.91.0.1/24", None, None);
    });
    b.run(|| {
        let mut nl = Netlink::new().unwrap();
        host_side(&mut nl, "hvulb", [10, 90, 0, 2], [10, 90, 0, 1]);
        common::attach_guest(&mut nl, "hvbr", "hvgb", &gb, "10.91.0.2/24", None, None);
    });
    assert!(a.ping("10.90.0.2", 2), "underlay works");
    assert!(ga.ping("10.91.0.2", 3), "guest A reaches guest B through VXLAN");
    assert!(gb.ping("10.91.0.1", 2), "and back");
    // Deleting the VXLAN link cuts the overlay.
    a.run(|| assert!(Netlink::new().unwrap().delete_link("hvvx").unwrap()));
    assert!(!ga.ping("10.91.0.2", 1), "no overlay, no traffic");
}
