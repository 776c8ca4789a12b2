//! Port security on a bridge inside a test namespace: a "guest" namespace behind a veth port
//! with its MAC and IP pinned pings the gateway and a neighbour; with a forged IP or MAC its
//! frames are dropped; a security-group change on the running port takes effect at once.

use hv_net::netlink::Netlink;
use hv_net::nft::port::{PortSecurity, PortSpec, Protocol, SecurityRule};
use hv_net::nft::Nft;
use hv_test_support::netns::NetNs;

mod common;

const MAC: &str = "52:54:00:00:00:10";

#[test]
fn forged_frames_dropped_real_traffic_flows_rules_change_live() {
    need_root!();
    let Ok(nft) = Nft::locate() else {
        hv_test_support::require!(false, "nft binary (apt-get install nftables)");
        return;
    };
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
            port: "hvp0".into(),
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
        ps.update_rules("hvp0", &[SecurityRule::egress(Protocol::Tcp).ports(22, 22)]).unwrap();
        assert!(!guest.ping("10.70.0.11", 1), "ICMP egress no longer allowed");
        // Allow ICMP egress only towards the neighbour's /32.
        let only_neighbour =
            SecurityRule::egress(Protocol::Icmp).remote("10.70.0.11/32".parse().unwrap());
        ps.update_rules("hvp0", &[only_neighbour]).unwrap();
        assert!(guest.ping("10.70.0.11", 2), "ICMP to the allowed remote passes");
        assert!(!guest.ping("10.70.0.1", 1), "ICMP to another remote does not");
        // Ingress: the neighbour's ping to the guest is dropped without an ingress rule.
        assert!(!neighbour.ping("10.70.0.10", 1), "no ingress ICMP rule");

        ps.remove("hvp0").unwrap();
        assert!(nft.tables().unwrap().is_empty());
        assert!(neighbour.ping("10.70.0.10", 2), "port security removed: open again");
    });
}
