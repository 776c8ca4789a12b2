//! Networks through `NetworkManager`, each inside a namespace the test makes: a NAT network's
//! start creates bridge + address + masquerade table and its destroy removes them all; guests
//! behind a NAT network reach an upstream peer that has no route back (masquerade works);
//! guests on an isolated network reach the gateway but nothing beyond it.

use std::net::IpAddr;

use hv_net::netlink::Netlink;
use hv_net::network::{
    Created, NetworkDef, NetworkError, NetworkManager, NetworkMode, NetworkState, Runtime,
};
use hv_net::nft::{Family, Nft};
use hv_test_support::netns::NetNs;
use hv_test_support::require;

mod common;

fn have_nft() -> bool {
    Nft::locate().is_ok()
}

fn forwarding() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap().trim() == "1"
}

fn nat_def(name: &str, cidr: &str) -> NetworkDef {
    let c: hv_net::Ipv4Cidr = cidr.parse().unwrap();
    let base = u32::from(c.network().addr);
    NetworkDef::builder(name, NetworkMode::Nat)
        .ip(c)
        .dhcp_range((base + 100).into(), (base + 200).into())
        .build()
        .unwrap()
}

#[test]
fn nat_start_creates_and_destroy_removes_everything() {
    need_root!();
    require!(have_nft(), "nft binary (apt-get install nftables)");
    let dir = tempfile::tempdir().unwrap();
    NetNs::new("hvt-nat").run(|| {
        let mut nl = Netlink::new().unwrap();
        let nft = Nft::locate().unwrap();
        let links_before: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
        assert!(!forwarding());

        let mgr = NetworkManager::open(dir.path()).unwrap();
        mgr.define(nat_def("n1", "10.50.0.1/24")).unwrap();
        assert_eq!(mgr.info("n1").unwrap().state, NetworkState::Defined);
        let info = mgr.start("n1").unwrap();
        assert_eq!(info.state, NetworkState::Active);

        let br = nl.require_link("hvn1").unwrap();
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert!(br.up);
        let gw: IpAddr = "10.50.0.1".parse().unwrap();
        assert!(nl.addresses(Some("hvn1")).unwrap().iter().any(|a| a.ip == gw && a.prefix == 24));
        assert!(nft.has_table(Family::Inet, &"hv_n1".parse().unwrap()).unwrap());
        assert!(nft
            .list_table(Family::Inet, &"hv_n1".parse().unwrap())
            .unwrap()
            .contains("masquerade"));
        assert!(forwarding());

        // State machine: no second start, no undefine while active.
        assert!(matches!(mgr.start("n1"), Err(NetworkError::InvalidState { .. })));
        assert!(matches!(mgr.undefine("n1"), Err(NetworkError::InvalidState { .. })));

        // The definition survives a new manager (persisted), and list shows it.
        let mgr2 = NetworkManager::open(dir.path()).unwrap();
        let list = mgr2.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].state, NetworkState::Active);

        mgr.destroy("n1").unwrap();
        let links_after: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
        assert_eq!(links_after, links_before);
        assert!(nft.tables().unwrap().is_empty());
        assert!(!forwarding(), "forwarding goes back off: hv switched it on");
        assert!(matches!(mgr.destroy("n1"), Err(NetworkError::InvalidState { .. })));
        mgr.undefine("n1").unwrap();
        assert!(mgr.list().unwrap().is_empty());
        assert!(matches!(mgr.info("n1"), Err(NetworkError::NotFound(_))));
    });
}

/// Builds host H with network `def` started, a guest G on its bridge and an upstream peer U
/// (10.60.0.2, no route back to the guests); returns whether G reaches the gateway and U.
/// With `open_path`, IPv4 forwarding is switched on first (as another network or the host's
/// own configuration might) and U gets a route back, so only the network's own rules can stop
/// traffic.
fn reachability(def: NetworkDef, open_path: bool) -> (bool, bool) {
    let dir = tempfile::tempdir().unwrap();
    let guest = NetNs::new("hvt-g");
    let upstream = NetNs::new("hvt-u");
    let host = NetNs::new("hvt-h");
    host.run(|| {
        let mut nl = Netlink::new().unwrap();
        if open_path {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n").unwrap();
        }
        let mgr = NetworkManager::open(dir.path()).unwrap();
        let name = def.name.clone();
        let bridge = def.bridge.clone();
        mgr.define(def).unwrap();
        mgr.start(&name).unwrap();
        common::attach_guest(
            &mut nl,
            &bridge,
            "hvg0",
            &guest,
            "10.50.0.10/24",
            Some("10.50.0.1"),
            None,
        );
        common::attach_upstream(&mut nl, "hvup0", "10.60.0.1/24", &upstream, "10.60.0.2/24");
        if open_path {
            upstream.exec_ok(&["ip", "route", "add", "10.50.0.0/24", "via", "10.60.0.1"]);
        }
        let gw = guest.ping("10.50.0.1", 2);
        let up = guest.ping("10.60.0.2", 2);
        mgr.destroy(&name).unwrap();
        (gw, up)
    })
}

#[test]
fn nat_guest_reaches_upstream_through_masquerade() {
    need_root!();
    require!(have_nft(), "nft binary (apt-get install nftables)");
    let (gw, up) = reachability(nat_def("nat", "10.50.0.1/24"), false);
    assert!(gw, "guest reaches its gateway");
    assert!(up, "guest reaches a peer with no route back: masquerade works");
}

#[test]
fn isolated_guest_reaches_gateway_only() {
    need_root!();
    require!(have_nft(), "nft binary (apt-get install nftables)");
    let def = NetworkDef::builder("iso", NetworkMode::Isolated)
        .ip("10.50.0.1/24".parse().unwrap())
        .dhcp_range("10.50.0.100".parse().unwrap(), "10.50.0.200".parse().unwrap())
        .build()
        .unwrap();
    let (gw, up) = reachability(def, true);
    assert!(gw, "guest reaches its gateway");
    assert!(!up, "nothing is forwarded off an isolated network");
}

#[test]
fn bridge_mode_joins_an_existing_bridge_only() {
    need_root!();
    let dir = tempfile::tempdir().unwrap();
    NetNs::new("hvt-brm").run(|| {
        let mut nl = Netlink::new().unwrap();
        let mgr = NetworkManager::open(dir.path()).unwrap();
        mgr.define(
            NetworkDef::builder("lan", NetworkMode::Bridge).bridge("br-lan").build().unwrap(),
        )
        .unwrap();
        assert!(matches!(mgr.start("lan"), Err(NetworkError::NoBridge { .. })));
        assert_eq!(mgr.info("lan").unwrap().state, NetworkState::Defined);
        nl.create_bridge("br-lan").unwrap();
        mgr.start("lan").unwrap();
        mgr.destroy("lan").unwrap();
        assert!(nl.link("br-lan").unwrap().is_some(), "hv never deletes a bridge it did not make");
        assert!(matches!(mgr.dhcp_leases("lan"), Err(NetworkError::NoDhcp(_))));
    });
}

#[test]
fn dhcp_process_is_stopped_by_destroy() {
    need_root!();
    require!(have_nft(), "nft binary (apt-get install nftables)");
    let dir = tempfile::tempdir().unwrap();
    NetNs::new("hvt-dhcpp").run(|| {
        let mgr = NetworkManager::open(dir.path()).unwrap();
        mgr.define(nat_def("d1", "10.51.0.1/24")).unwrap();
        mgr.start("d1").unwrap();
        // A child standing in for the DHCP process (hvctl runs `net-dhcp-serve` instead).
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let proc = hv_net::network::DhcpProcess::of(child.id()).unwrap();
        mgr.record_dhcp_process("d1", Some(proc)).unwrap();
        assert_eq!(mgr.info("d1").unwrap().dhcp, Some(proc));
        mgr.destroy("d1").unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "the process was signalled");
        assert!(mgr.info("d1").unwrap().dhcp.is_none());
        // An inactive network cannot take a DHCP process.
        assert!(mgr.record_dhcp_process("d1", Some(proc)).is_err());
    });
}

#[test]
fn ports_join_and_in_process_dhcp_serves_an_active_network() {
    need_root!();
    require!(have_nft(), "nft binary (apt-get install nftables)");
    let dir = tempfile::tempdir().unwrap();
    NetNs::new("hvt-dhcpi").run(|| {
        let mgr = NetworkManager::open(dir.path()).unwrap();
        mgr.define(nat_def("d2", "10.52.0.1/24")).unwrap();
        assert!(mgr.serve_dhcp("d2").is_err(), "not active yet");
        assert!(mgr.attach_port("d2", "hvtapd2").is_err(), "not active yet");
        mgr.start("d2").unwrap();
        // A guest's TAP joins the network's bridge, and leaves it.
        let tap = hv_net::tap::Tap::open("hvtapd2").unwrap();
        let mut nl = Netlink::new().unwrap();
        mgr.attach_port("d2", tap.name()).unwrap();
        let bridge = nl.require_link("hvd2").unwrap().index;
        assert_eq!(nl.require_link("hvtapd2").unwrap().master, Some(bridge));
        mgr.detach_port("d2", tap.name()).unwrap();
        assert_eq!(nl.require_link("hvtapd2").unwrap().master, None);
        mgr.attach_port("d2", tap.name()).unwrap();
        let handle = mgr.serve_dhcp("d2").unwrap();
        assert_eq!(handle.interface(), "hvd2");
        handle.stop().unwrap();
        assert!(mgr.dhcp_leases("d2").unwrap().is_empty());
        mgr.destroy("d2").unwrap();
        drop(tap);
        assert!(nl.link("hvtapd2").unwrap().is_none());
    });
}

fn have_udhcpc() -> bool {
    let ok = std::process::Command::new("busybox")
        .arg("udhcpc")
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).contains("udhcpc"))
        .unwrap_or(false);
    ok
}

#[test]
fn nat_network_hands_out_reserved_and_dynamic_leases() {
    need_root!();
    require!(have_nft(), "nft binary (apt-get install nftables)");
    require!(have_udhcpc(), "busybox with udhcpc (apt-get install busybox)");
    let dir = tempfile::tempdir().unwrap();
    let guest = NetNs::new("hvt-dg");
    NetNs::new("hvt-dh").run(|| {
        let mut nl = Netlink::new().unwrap();
        let mgr = NetworkManager::open(dir.path()).unwrap();
        let reserved: hv_net::MacAddr = "52:54:00:00:00:42".parse().unwrap();
        let def = NetworkDef::builder("d3", NetworkMode::Nat)
            .ip("10.53.0.1/24".parse().unwrap())
            .dhcp_range("10.53.0.100".parse().unwrap(), "10.53.0.120".parse().unwrap())
            .dhcp_host_named(reserved, "10.53.0.42".parse().unwrap(), Some("web".into()))
            .build()
            .unwrap();
        mgr.define(def).unwrap();
        mgr.start("d3").unwrap();
        let dhcp = mgr.serve_dhcp("d3").unwrap();
        for (port, dev, mac) in
            [("hvd0", "eth0", "52:54:00:00:00:42"), ("hvd1", "eth1", "52:54:00:00:00:43")]
        {
            let peer = format!("{port}p");
            nl.create_veth(port, &peer).unwrap();
            nl.set_master(port, "hvd3").unwrap();
            nl.set_up(port).unwrap();
            nl.move_to_netns(&peer, &guest.open()).unwrap();
            guest.exec_ok(&["ip", "link", "set", &peer, "name", dev, "address", mac, "up"]);
            let out = guest.exec_ok(&[
                "timeout",
                "20",
                "busybox",
                "udhcpc",
                "-i",
                dev,
                "-n",
                "-q",
                "-t",
                "5",
                "-s",
                "/bin/true",
            ]);
            drop(out);
        }
        dhcp.stop().unwrap();
        let leases = mgr.dhcp_leases("d3").unwrap();
        let ip_of = |mac: &str| {
            let mac: hv_net::MacAddr = mac.parse().unwrap();
            leases.iter().find(|l| l.mac == mac).map(|l| l.ip.to_string())
        };
        assert_eq!(ip_of("52:54:00:00:00:42").as_deref(), Some("10.53.0.42"), "{leases:?}");
        assert_eq!(ip_of("52:54:00:00:00:43").as_deref(), Some("10.53.0.100"), "{leases:?}");
        mgr.destroy("d3").unwrap();
        mgr.undefine("d3").unwrap();
        assert!(std::fs::read_dir(mgr.dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .all(|e| e.file_name().to_string_lossy().starts_with('.')));
    });
}

#[test]
fn leftovers_of_a_crashed_start_are_cleaned_up() {
    need_root!();
    require!(have_nft(), "nft binary (apt-get install nftables)");
    let dir = tempfile::tempdir().unwrap();
    NetNs::new("hvt-crash").run(|| {
        let mut nl = Netlink::new().unwrap();
        let nft = Nft::locate().unwrap();
        let mgr = NetworkManager::open(dir.path()).unwrap();
        let def = nat_def("c1", "10.54.0.1/24");
        mgr.define(def.clone()).unwrap();
        // What a start that died after making the bridge and the table leaves behind: the
        // objects, and its intent record with the network still inactive.
        let leave_debris = |nl: &mut Netlink| {
            nl.create_bridge("hvc1").unwrap();
            hv_net::nft::network::apply_nat(&nft, "c1", &"hvc1".parse().unwrap(), def.ip.unwrap())
                .unwrap();
            let intent = Runtime {
                state: NetworkState::Defined,
                created: Created {
                    bridge: Some("hvc1".parse().unwrap()),
                    address: def.ip,
                    nft_table: Some("hv_c1".parse().unwrap()),
                    enabled_forwarding: false,
                },
                dhcp: None,
            };
            let path = mgr.dir().join("c1.state.json");
            std::fs::write(path, serde_json::to_vec(&intent).unwrap()).unwrap();
        };
        leave_debris(&mut nl);
        assert_eq!(mgr.info("c1").unwrap().state, NetworkState::Defined);
        mgr.start("c1").unwrap();
        mgr.destroy("c1").unwrap();
        assert!(nl.link("hvc1").unwrap().is_none());
        assert!(nft.tables().unwrap().is_empty());

        leave_debris(&mut nl);
        mgr.undefine("c1").unwrap();
        assert!(nl.link("hvc1").unwrap().is_none(), "undefine clears a crashed start's bridge");
        assert!(nft.tables().unwrap().is_empty(), "and its table");
    });
}
