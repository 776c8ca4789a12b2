//! nftables tables inside a test namespace: a network's table and a port's table are created,
//! re-created idempotently, and deleted without a trace (`nft list tables`).

use hv_net::nft::port::{self, PortSecurity, PortSpec, Protocol, ReplyMode, SecurityRule};
use hv_net::nft::{network, Family, Nft, TableName};
use hv_net::IfName;
use hv_test_support::netns::NetNs;

mod common;

fn ifname(s: &str) -> IfName {
    s.parse().unwrap()
}

fn table(s: &str) -> TableName {
    s.parse().unwrap()
}

#[test]
fn network_tables_create_recreate_delete() {
    need_root!();
    hv_test_support::require!(Nft::locate().is_ok(), "nft binary (apt-get install nftables)");
    let nft = Nft::locate().unwrap();
    NetNs::new("hvt-nft").run(|| {
        assert!(nft.tables().unwrap().is_empty());
        let subnet = "10.44.0.1/24".parse().unwrap();
        let name = network::apply_nat(&nft, "n1", &ifname("hvn1"), subnet).unwrap();
        assert_eq!(name, table("hv_n1"));
        network::apply_nat(&nft, "n1", &ifname("hvn1"), subnet).unwrap();
        assert_eq!(nft.tables().unwrap(), vec![(Family::Inet, "hv_n1".to_string())]);
        let text = nft.list_table(Family::Inet, &name).unwrap();
        assert!(text.contains("masquerade"), "{text}");
        assert_eq!(text.matches("masquerade").count(), 1, "re-apply replaces, not appends");

        network::apply_isolated(&nft, "n2", &ifname("hvn2")).unwrap();
        assert!(nft.has_table(Family::Inet, &table("hv_n2")).unwrap());
        network::remove(&nft, "n1").unwrap();
        network::remove(&nft, "n1").unwrap();
        network::remove(&nft, "n2").unwrap();
        assert!(nft.tables().unwrap().is_empty());
    });
}

#[test]
fn port_tables_create_update_delete() {
    need_root!();
    hv_test_support::require!(Nft::locate().is_ok(), "nft binary (apt-get install nftables)");
    let nft = Nft::locate().unwrap();
    NetNs::new("hvt-nftp").run(|| {
        let spec = PortSpec {
            port: ifname("hvtap7"),
            mac: "52:54:00:00:00:07".parse().unwrap(),
            ips: vec!["10.44.0.7".parse().unwrap()],
            rules: vec![SecurityRule::ingress(Protocol::Tcp).ports(22, 22)],
            bridge: Some(ifname("hvbr7")),
        };
        let sg = port::brnf::table_name(&spec.port);
        for mode in [ReplyMode::Mirrored, ReplyMode::BrNetfilter] {
            let ps = PortSecurity::with_mode(nft.clone(), mode);
            ps.apply(&spec).unwrap();
            ps.apply(&spec).unwrap();
            let (family, table) = match mode {
                ReplyMode::BrNetfilter => {
                    let mut want = vec![
                        (Family::Bridge, "hv_port_hvtap7".to_string()),
                        (Family::Inet, sg.to_string()),
                    ];
                    let mut have = nft.tables().unwrap();
                    want.sort_by_key(|(f, n)| (f.as_str(), n.clone()));
                    have.sort_by_key(|(f, n)| (f.as_str(), n.clone()));
                    assert_eq!(have, want);
                    (Family::Inet, sg.clone())
                }
                _ => {
                    let tables = nft.tables().unwrap();
                    assert_eq!(tables, vec![(Family::Bridge, "hv_port_hvtap7".to_string())]);
                    (Family::Bridge, port::table_name(&spec.port))
                }
            };
            let text = nft.list_table(family, &table).unwrap();
            assert!(text.contains("tcp dport 22 accept"), "{text}");
            let udp = [SecurityRule::ingress(Protocol::Udp).ports(53, 53)];
            ps.update_rules(&PortSpec { rules: udp.to_vec(), ..spec.clone() }).unwrap();
            let text = nft.list_table(family, &table).unwrap();
            assert!(
                text.contains("udp dport 53 accept") && !text.contains("tcp dport 22"),
                "{text}"
            );
            let none = PortSpec { port: ifname("hvnone"), rules: vec![], ..spec.clone() };
            assert!(ps.update_rules(&none).is_err(), "no table for that port");
        }
        // Back in the bridge-table mode, the port's inet table is gone.
        let ps = PortSecurity::with_mode(nft.clone(), ReplyMode::Mirrored);
        ps.apply(&spec).unwrap();
        assert_eq!(nft.tables().unwrap(), vec![(Family::Bridge, "hv_port_hvtap7".to_string())]);
        PortSecurity::with_mode(nft.clone(), ReplyMode::BrNetfilter).apply(&spec).unwrap();
        ps.remove(&spec.port).unwrap();
        ps.remove(&spec.port).unwrap();
        assert!(nft.tables().unwrap().is_empty(), "remove drops both tables");
    });
}

#[test]
fn network_names_that_differ_only_in_dash_and_underscore_get_their_own_tables() {
    need_root!();
    hv_test_support::require!(Nft::locate().is_ok(), "nft binary (apt-get install nftables)");
    let nft = Nft::locate().unwrap();
    NetNs::new("hvt-nftn").run(|| {
        let subnet = "10.45.0.1/24".parse().unwrap();
        let a = network::apply_nat(&nft, "my-net", &ifname("hvmy-net"), subnet).unwrap();
        let b = network::apply_isolated(&nft, "my_net", &ifname("hvmy_net")).unwrap();
        assert_ne!(a, b);
        assert_eq!(nft.tables().unwrap().len(), 2);
        network::remove(&nft, "my-net").unwrap();
        assert_eq!(nft.tables().unwrap(), vec![(Family::Inet, b.to_string())]);
        let text = nft.list_table(Family::Inet, &b).unwrap();
        assert!(text.contains("oifname \"hvmy_net\" drop"), "{text}");
        network::remove(&nft, "my_net").unwrap();
        assert!(nft.tables().unwrap().is_empty());
    });
}
