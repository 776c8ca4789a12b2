//! Links through netlink (bridge, veth, VXLAN, addresses, routes), each inside a network
//! namespace the test makes: create, idempotent re-create, delete leaves nothing.

use std::net::{IpAddr, Ipv4Addr};

use hv_net::netlink::{Netlink, NetlinkError, VxlanConfig};
use hv_test_support::netns::NetNs;

mod common;

fn names(nl: &mut Netlink) -> Vec<String> {
    nl.links().unwrap().into_iter().map(|l| l.name).collect()
}

#[test]
fn bridge_create_recreate_delete() {
    need_root!();
    NetNs::new("hvt-br").run(|| {
        let mut nl = Netlink::new().unwrap();
        let before = names(&mut nl);
        let br = nl.create_bridge("hvbr0").unwrap();
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        let again = nl.create_bridge("hvbr0").unwrap();
        assert_eq!(br.index, again.index, "re-create returns the same bridge");
        nl.set_up("hvbr0").unwrap();
        assert!(nl.require_link("hvbr0").unwrap().up);
        nl.set_down("hvbr0").unwrap();
        assert!(!nl.require_link("hvbr0").unwrap().up);
        assert!(nl.delete_link("hvbr0").unwrap());
        assert!(!nl.delete_link("hvbr0").unwrap(), "second delete is a no-op");
        assert_eq!(names(&mut nl), before);
    });
}

#[test]
fn veth_pair_enslave_and_delete() {
    need_root!();
    NetNs::new("hvt-veth").run(|| {
        let mut nl = Netlink::new().unwrap();
        let before = names(&mut nl);
        let br = nl.create_bridge("hvbr1").unwrap();
        let v = nl.create_veth("hvv0", "hvv0p").unwrap();
        assert_eq!(v.kind.as_deref(), Some("veth"));
        assert_eq!(nl.create_veth("hvv0", "hvv0p").unwrap().index, v.index);
        nl.set_master("hvv0", "hvbr1").unwrap();
        assert_eq!(nl.require_link("hvv0").unwrap().master, Some(br.index));
        nl.set_nomaster("hvv0").unwrap();
        assert_eq!(nl.require_link("hvv0").unwrap().master, None);
        // A bridge of the same name as a veth is refused, not reused.
        assert!(matches!(nl.create_bridge("hvv0"), Err(NetlinkError::KindMismatch { .. })));
        assert!(nl.delete_link("hvv0").unwrap());
        assert!(nl.link("hvv0p").unwrap().is_none(), "deleting one end removes the peer");
        nl.delete_link("hvbr1").unwrap();
        assert_eq!(names(&mut nl), before);
    });
}

#[test]
fn vxlan_create_recreate_delete() {
    need_root!();
    NetNs::new("hvt-vx").run(|| {
        let mut nl = Netlink::new().unwrap();
        let before = names(&mut nl);
        nl.create_veth("hvu0", "hvu0p").unwrap();
        nl.add_address("hvu0", IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)), 24).unwrap();
        let mut cfg = VxlanConfig::new(42);
        cfg.local = Some(Ipv4Addr::new(10, 99, 0, 1));
        cfg.remote = Some(Ipv4Addr::new(10, 99, 0, 2));
        cfg.underlay = Some("hvu0".into());
        let vx = nl.create_vxlan("hvvx42", &cfg).unwrap();
        assert_eq!(vx.kind.as_deref(), Some("vxlan"));
        assert_eq!(nl.create_vxlan("hvvx42", &cfg).unwrap().index, vx.index);
        assert!(nl.delete_link("hvvx42").unwrap());
        nl.delete_link("hvu0").unwrap();
        assert_eq!(names(&mut nl), before);
    });
}

#[test]
fn addresses_and_routes() {
    need_root!();
    NetNs::new("hvt-addr").run(|| {
        let mut nl = Netlink::new().unwrap();
        nl.create_bridge("hvbr2").unwrap();
        nl.set_up("hvbr2").unwrap();
        let ip = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1));
        nl.add_address("hvbr2", ip, 24).unwrap();
        nl.add_address("hvbr2", ip, 24).unwrap();
        let addrs = nl.addresses(Some("hvbr2")).unwrap();
        assert_eq!(addrs.iter().filter(|a| a.ip == ip && a.prefix == 24).count(), 1, "{addrs:?}");

        let dest = IpAddr::V4(Ipv4Addr::new(10, 78, 0, 0));
        let gw = Some(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 254)));
        nl.add_route(dest, 16, gw, Some("hvbr2")).unwrap();
        nl.add_route(dest, 16, gw, Some("hvbr2")).unwrap();
        let routes = nl.routes().unwrap();
        assert_eq!(
            routes.iter().filter(|r| r.dest == dest && r.prefix == 16).count(),
            1,
            "{routes:?}"
        );
        assert!(nl.delete_route(dest, 16, gw, Some("hvbr2")).unwrap());
        assert!(!nl.delete_route(dest, 16, gw, Some("hvbr2")).unwrap());
        assert!(!nl.routes().unwrap().iter().any(|r| r.dest == dest));

        assert!(nl.delete_address("hvbr2", ip, 24).unwrap());
        assert!(!nl.delete_address("hvbr2", ip, 24).unwrap());
        assert!(nl.addresses(Some("hvbr2")).unwrap().iter().all(|a| a.ip != ip));
        nl.delete_link("hvbr2").unwrap();
        assert!(nl.addresses(None).unwrap().iter().all(|a| a.ip != ip));
    });
}

#[test]
fn invalid_names_are_refused() {
    need_root!();
    NetNs::new("hvt-name").run(|| {
        let mut nl = Netlink::new().unwrap();
        assert!(matches!(
            nl.create_bridge("this-name-is-too-long"),
            Err(NetlinkError::InvalidName(_))
        ));
        assert!(matches!(nl.create_bridge("a/b"), Err(NetlinkError::InvalidName(_))));
        assert!(matches!(nl.set_up("hvnone"), Err(NetlinkError::LinkNotFound(_))));
    });
}
