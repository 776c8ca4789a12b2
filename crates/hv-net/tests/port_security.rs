//! Port security on a bridge inside a test namespace: a "guest" namespace behind a veth port
//! with its MAC and IP pinned pings the gateway and a neighbour; with a forged IP or MAC its
//! frames are dropped; a security-group change on the running port takes effect at once. Two
//! ports whose names differ only in `-` and `_` get tables of their own: removing one's port
//! security leaves the other's anti-spoofing working.

use hv_net::netlink::Netlink;
use hv_net::nft::port::{PortSecurity, PortSpec, Protocol, SecurityRule};
use hv_net::nft::Nft;
use hv_net::IfName;
use hv_test_support::netns::NetNs;

mod common;

const MAC: &str = "52:54:00:00:00:10";

#[test]
fn forged_frames_dropped_real_traffic_flows_rules_change_live() {
    need_root!();
    hv_test_support::require!(Nft::locate().is_ok(), "nft binary (apt-get install nftables)");
    let nft = Nft::locate().unwrap();
    let guest = NetNs::new("hvt-psg");
    let neighbour = NetNs::new("hvt-psn");
    NetNs::new("hvt-ps").run(|| {
        let mut nl = Netlink::new().unwrap();
        nl.create_bridge("hvps").unwrap();
        nl.set_up("hvps").unwrap();
        nl.add_address("hvps", "10.70.0.1".parse().unwrap(), 24).unwrap();
        common::attach_guest(&mut nl, "hvps", "hvp0", &guest, "10.70.0.10/24", None, Some(MAC));
        common::attach_guest(&mut nl, "hvps", "hvp1", &neighbour, "10.70.0.11/24", None, None);

        let ps = PortSecurity::new(nft.clone());
        let spec = PortSpec {
            port: IfName::new("hvp0").unwrap(),
            mac: MAC.parse().unwrap(),
            ips: vec!["10.70.0.10".parse().unwrap()],
            rules: vec![
                SecurityRule::egress(Protocol::Icmp),
                SecurityRule::ingress(Protocol::Icmp),
            ],
        };
        ps.apply(&spec).unwrap();

        // Real traffic flows: to the host's gateway address and to a bridged neighbour.
        assert!(guest.ping("10.70.0.1", 2), "guest -> gateway with its own MAC and IP");
        assert!(guest.ping("10.70.0.11", 2), "guest -> neighbour");
        assert!(neighbour.ping("10.70.0.10", 2), "neighbour -> guest (ingress icmp allowed)");

        // Forged source IP: dropped (ICMP and the ARP that would announce it).
        guest.exec_ok(&["ip", "addr", "flush", "dev", "eth0"]);
        guest.exec_ok(&["ip", "addr", "add", "10.70.0.99/24", "dev", "eth0"]);
        assert!(!guest.ping("10.70.0.1", 1), "forged IP must not reach the gateway");
        assert!(!guest.ping("10.70.0.11", 1), "forged IP must not reach the neighbour");
        guest.exec_ok(&["ip", "addr", "flush", "dev", "eth0"]);
        guest.exec_ok(&["ip", "addr", "add", "10.70.0.10/24", "dev", "eth0"]);
        assert!(guest.ping("10.70.0.1", 2), "own IP again: flows");

        // Forged source MAC: dropped.
        guest.exec_ok(&["ip", "link", "set", "eth0", "address", "52:54:00:00:00:66"]);
        assert!(!guest.ping("10.70.0.11", 1), "forged MAC must not pass");
        guest.exec_ok(&["ip", "link", "set", "eth0", "address", MAC]);
        guest.exec_ok(&["ip", "neigh", "flush", "all"]);
        assert!(guest.ping("10.70.0.11", 2), "own MAC again: flows");

        // Security groups change on the running port: no ICMP egress -> ping fails.
        ps.update_rules(&spec.port, &[SecurityRule::egress(Protocol::Tcp).ports(22, 22)]).unwrap();
        assert!(!guest.ping("10.70.0.11", 1), "ICMP egress no longer allowed");
        // Allow ICMP egress only towards the neighbour's /32.
        let only_neighbour =
            SecurityRule::egress(Protocol::Icmp).remote("10.70.0.11/32".parse().unwrap());
        ps.update_rules(&spec.port, &[only_neighbour]).unwrap();
        assert!(guest.ping("10.70.0.11", 2), "ICMP to the allowed remote passes");
        assert!(!guest.ping("10.70.0.1", 1), "ICMP to another remote does not");
        // Ingress: the neighbour's ping to the guest is dropped without an ingress rule.
        assert!(!neighbour.ping("10.70.0.10", 1), "no ingress ICMP rule");

        ps.remove(&spec.port).unwrap();
        assert!(nft.tables().unwrap().is_empty());
        assert!(neighbour.ping("10.70.0.10", 2), "port security removed: open again");
    });
}

#[test]
fn ports_named_alike_keep_their_own_filtering() {
    need_root!();
    hv_test_support::require!(Nft::locate().is_ok(), "nft binary (apt-get install nftables)");
    let nft = Nft::locate().unwrap();
    let dash = NetNs::new("hvt-pad");
    let under = NetNs::new("hvt-pau");
    let neighbour = NetNs::new("hvt-pan");
    NetNs::new("hvt-pa").run(|| {
        let mut nl = Netlink::new().unwrap();
        nl.create_bridge("hvpa").unwrap();
        nl.set_up("hvpa").unwrap();
        let (mac_d, mac_u) = ("52:54:00:00:00:21", "52:54:00:00:00:22");
        common::attach_guest(&mut nl, "hvpa", "hvp-1", &dash, "10.71.0.10/24", None, Some(mac_d));
        common::attach_guest(&mut nl, "hvpa", "hvp_1", &under, "10.71.0.11/24", None, Some(mac_u));
        common::attach_guest(&mut nl, "hvpa", "hvpan", &neighbour, "10.71.0.12/24", None, None);

        let ps = PortSecurity::new(nft.clone());
        let icmp =
            vec![SecurityRule::egress(Protocol::Icmp), SecurityRule::ingress(Protocol::Icmp)];
        let spec = |port: &str, mac: &str, ip: &str| PortSpec {
            port: IfName::new(port).unwrap(),
            mac: mac.parse().unwrap(),
            ips: vec![ip.parse().unwrap()],
            rules: icmp.clone(),
        };
        let (d, u) = (spec("hvp-1", mac_d, "10.71.0.10"), spec("hvp_1", mac_u, "10.71.0.11"));
        ps.apply(&d).unwrap();
        ps.apply(&u).unwrap();
        assert_eq!(nft.tables().unwrap().len(), 2, "one table per port");
        assert!(under.ping("10.71.0.12", 2), "hvp_1's guest with its own address");

        // Remove hvp-1's port security: hvp_1's must stay.
        ps.remove(&d.port).unwrap();
        assert!(dash.ping("10.71.0.12", 2), "hvp-1 is open");
        under.exec_ok(&["ip", "addr", "flush", "dev", "eth0"]);
        under.exec_ok(&["ip", "addr", "add", "10.71.0.99/24", "dev", "eth0"]);
        assert!(!under.ping("10.71.0.12", 1), "hvp_1's anti-spoofing still drops a forged IP");
        under.exec_ok(&["ip", "addr", "flush", "dev", "eth0"]);
        under.exec_ok(&["ip", "addr", "add", "10.71.0.11/24", "dev", "eth0"]);
        assert!(under.ping("10.71.0.12", 2), "and passes the real one");
        ps.remove(&u.port).unwrap();
        assert!(nft.tables().unwrap().is_empty());
    });
}
