//! nftables tables inside a test namespace: a network's table and a port's table are created,
//! re-created idempotently, and deleted without a trace (`nft list tables`).

use hv_net::nft::port::{PortSecurity, PortSpec, Protocol, SecurityRule};
use hv_net::nft::{network, Family, Nft};
use hv_test_support::netns::NetNs;

mod common;

fn nft() -> Option<Nft> {
    let found = Nft::locate();
    hv_test_support::check(found.is_ok(), "nft binary (apt-get install nftables)")
        .then(|| found.unwrap())
}

#[test]
fn network_tables_create_recreate_delete() {
    need_root!();
    let Some(nft) = nft() else { return };
    NetNs::new("hvt-nft").run(|| {
        assert!(nft.tables().unwrap().is_empty());
        let subnet = "10.44.0.1/24".parse().unwrap();
        let name = network::apply_nat(&nft, "n1", "hvn1", subnet).unwrap();
        assert_eq!(name, "hv_n1");
        network::apply_nat(&nft, "n1", "hvn1", subnet).unwrap();
        assert_eq!(nft.tables().unwrap(), vec![(Family::Inet, "hv_n1".to_string())]);
        let text = nft.list_table(Family::Inet, "hv_n1").unwrap();
        assert!(text.contains("masquerade"), "{text}");
        assert_eq!(text.matches("masquerade").count(), 1, "re-apply replaces, not appends");

        network::apply_isolated(&nft, "n2", "hvn2").unwrap();
        assert!(nft.has_table(Family::Inet, "hv_n2").unwrap());
        network::remove(&nft, "n1").unwrap();
        network::remove(&nft, "n1").unwrap();
        network::remove(&nft, "n2").unwrap();
        assert!(nft.tables().unwrap().is_empty());
    });
}

#[test]
fn port_tables_create_update_delete() {
    need_root!();
    let Some(nft) = nft() else { return };
    NetNs::new("hvt-nftp").run(|| {
        let ps = PortSecurity::new(nft.clone());
        let spec = PortSpec {
            port: "hvtap7".into(),
            mac: "52:54:00:00:00:07".parse().unwrap(),
            ips: vec!["10.44.0.7".parse().unwrap()],
            rules: vec![SecurityRule::ingress(Protocol::Tcp).ports(22, 22)],
        };
        ps.apply(&spec).unwrap();
        ps.apply(&spec).unwrap();
        assert_eq!(nft.tables().unwrap(), vec![(Family::Bridge, "hv_port_hvtap7".to_string())]);
        let text = nft.list_table(Family::Bridge, "hv_port_hvtap7").unwrap();
        assert!(text.contains("tcp dport 22 accept"), "{text}");
        ps.update_rules("hvtap7", &[SecurityRule::ingress(Protocol::Udp).ports(53, 53)]).unwrap();
        let text = nft.list_table(Family::Bridge, "hv_port_hvtap7").unwrap();
        assert!(text.contains("udp dport 53 accept") && !text.contains("tcp dport 22"), "{text}");
        assert!(ps.update_rules("hvnone", &[]).is_err(), "no table for that port");
        ps.remove("hvtap7").unwrap();
        ps.remove("hvtap7").unwrap();
        assert!(nft.tables().unwrap().is_empty());
    });
}
