//! Port security on a bridge inside a test namespace: a "guest" namespace behind a veth port
//! with its MAC and IP pinned pings the gateway and a neighbour; with a forged IP or MAC its
//! frames are dropped; a security-group change on the running port takes effect at once (with
//! mirrored rules and statefully through br_netfilter). Security groups through br_netfilter
//! are stateful: replies pass without a rule of their own, new connections the other way do
//! not. Two ports whose names differ only in `-` and `_` get tables of their own: removing
//! one's port security leaves the other's anti-spoofing working.

use hv_net::netlink::Netlink;
use hv_net::nft::port::{brnf, PortSecurity, PortSpec, Protocol, ReplyMode, SecurityRule};
use hv_net::nft::Nft;
use hv_net::IfName;
use hv_test_support::netns::NetNs;

mod common;

const MAC: &str = "52:54:00:00:00:10";
/// The UDP port of [`udp_broadcast_arrives`].
const BROADCAST_PORT: u16 = 5099;

/// True when a datagram `from` sends to `10.72.0.255` reaches a socket in `to`.
fn udp_broadcast_arrives(from: &NetNs, to: &NetNs) -> bool {
    use std::net::UdpSocket;
    use std::time::Duration;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            to.run(move || {
                let sock = UdpSocket::bind(("0.0.0.0", BROADCAST_PORT)).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 64];
                matches!(sock.recv_from(&mut buf), Ok((5, _)) if &buf[..5] == b"hello")
            })
        });
        ready_rx.recv().unwrap();
        from.run(|| {
            let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            sock.set_broadcast(true).unwrap();
            for _ in 0..3 {
                sock.send_to(b"hello", ("10.72.0.255", BROADCAST_PORT)).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        receiver.join().unwrap()
    })
}

/// `spec` with `rules` instead of its own.
fn with(spec: &PortSpec, rules: &[SecurityRule]) -> PortSpec {
    PortSpec { rules: rules.to_vec(), ..spec.clone() }
}

#[test]
fn forged_frames_dropped_real_traffic_flows_rules_change_live_mirrored() {
    forged_frames_dropped_real_traffic_flows_rules_change_live(ReplyMode::Mirrored);
}

#[test]
fn forged_frames_dropped_real_traffic_flows_rules_change_live_through_br_netfilter() {
    forged_frames_dropped_real_traffic_flows_rules_change_live(ReplyMode::BrNetfilter);
}

fn forged_frames_dropped_real_traffic_flows_rules_change_live(mode: ReplyMode) {
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

        if mode == ReplyMode::BrNetfilter {
            hv_test_support::require!(brnf::available(), "br_netfilter (CONFIG_BRIDGE_NETFILTER)");
        }
        let ps = PortSecurity::with_mode(nft.clone(), mode);
        let spec = PortSpec {
            port: IfName::new("hvp0").unwrap(),
            mac: MAC.parse().unwrap(),
            ips: vec!["10.70.0.10".parse().unwrap()],
            rules: vec![
                SecurityRule::egress(Protocol::Icmp),
                SecurityRule::ingress(Protocol::Icmp),
            ],
            bridge: Some(IfName::new("hvps").unwrap()),
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
        ps.update_rules(&with(&spec, &[SecurityRule::egress(Protocol::Tcp).ports(22, 22)]))
            .unwrap();
        assert!(!guest.ping("10.70.0.11", 1), "ICMP egress no longer allowed");
        // Allow ICMP egress only towards the neighbour's /32.
        let only_neighbour =
            SecurityRule::egress(Protocol::Icmp).remote("10.70.0.11/32".parse().unwrap());
        ps.update_rules(&with(&spec, &[only_neighbour])).unwrap();
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
            bridge: Some(IfName::new("hvpa").unwrap()),
        };
        let (d, u) = (spec("hvp-1", mac_d, "10.71.0.10"), spec("hvp_1", mac_u, "10.71.0.11"));
        ps.apply(&d).unwrap();
        ps.apply(&u).unwrap();
        let per_port = if ps.mode() == ReplyMode::BrNetfilter { 2 } else { 1 };
        assert_eq!(nft.tables().unwrap().len(), 2 * per_port, "tables of each port's own");
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

/// Two guests A and B and an outsider on one bridge. A may send anything and receive nothing
/// new; B may send anything and receive ICMP from A only. Through br_netfilter: A reaches B and
/// its replies come back; B cannot reach A (with mirrored rules A's allow-all egress would let
/// it in, as the test shows); the outsider reaches neither; the host answers A but cannot
/// start anything towards it; the outsider's UDP broadcast reaches B only once B allows it.
/// Rule changes on the live ports take effect at once.
#[test]
fn security_groups_are_stateful_through_br_netfilter() {
    need_root!();
    hv_test_support::require!(Nft::locate().is_ok(), "nft binary (apt-get install nftables)");
    let nft = Nft::locate().unwrap();
    let (a, b, outsider) = (NetNs::new("hvt-sta"), NetNs::new("hvt-stb"), NetNs::new("hvt-sto"));
    let host = NetNs::new("hvt-st");
    host.run(|| {
        hv_test_support::require!(brnf::available(), "br_netfilter (CONFIG_BRIDGE_NETFILTER)");
        let mut nl = Netlink::new().unwrap();
        nl.create_bridge("hvst").unwrap();
        nl.set_up("hvst").unwrap();
        nl.add_address("hvst", "10.72.0.1".parse().unwrap(), 24).unwrap();
        let (mac_a, mac_b) = ("52:54:00:00:00:31", "52:54:00:00:00:32");
        common::attach_guest(&mut nl, "hvst", "hvsa", &a, "10.72.0.10/24", None, Some(mac_a));
        common::attach_guest(&mut nl, "hvst", "hvsb", &b, "10.72.0.11/24", None, Some(mac_b));
        common::attach_guest(&mut nl, "hvst", "hvso", &outsider, "10.72.0.12/24", None, None);
        let any_out = SecurityRule::egress(Protocol::Any);
        let icmp_from_a =
            SecurityRule::ingress(Protocol::Icmp).remote("10.72.0.10/32".parse().unwrap());
        let spec = |port: &str, mac: &str, ip: &str, rules: Vec<SecurityRule>| PortSpec {
            port: IfName::new(port).unwrap(),
            mac: mac.parse().unwrap(),
            ips: vec![ip.parse().unwrap()],
            rules,
            bridge: Some(IfName::new("hvst").unwrap()),
        };
        let sa = spec("hvsa", mac_a, "10.72.0.10", vec![any_out]);
        // Two members of a remote group, as the orchestrator expands one: a single rule with a
        // set of both addresses (the second, .99, is nobody here); the outsider stays out.
        let icmp_from_99 =
            SecurityRule::ingress(Protocol::Icmp).remote("10.72.0.99/32".parse().unwrap());
        let sb = spec("hvsb", mac_b, "10.72.0.11", vec![any_out, icmp_from_a, icmp_from_99]);

        // Mirrored rules first, for contrast: A's egress-any mirror lets B in.
        let mirrored = PortSecurity::with_mode(nft.clone(), ReplyMode::Mirrored);
        mirrored.apply(&sa).unwrap();
        mirrored.apply(&sb).unwrap();
        assert!(b.ping("10.72.0.10", 2), "mirrored: B -> A passes A's mirrored egress-any");

        let ps = PortSecurity::with_mode(nft.clone(), ReplyMode::BrNetfilter);
        ps.apply(&sa).unwrap();
        ps.apply(&sb).unwrap();
        let sysctl = std::fs::read_to_string(brnf::SYSCTL).unwrap();
        assert_eq!(sysctl.trim(), "1", "apply switched bridged IPv4 onto the IP hooks");
        assert!(a.ping("10.72.0.11", 2), "A -> B, and B's replies reach A without a rule");
        assert!(!b.ping("10.72.0.10", 1), "B -> A: A allows no ingress");
        assert!(!outsider.ping("10.72.0.11", 1), "outsider -> B: only A may reach B");
        assert!(!outsider.ping("10.72.0.10", 1), "outsider -> A");
        assert!(outsider.ping("10.72.0.1", 2), "traffic of no port's is left alone");
        assert!(a.ping("10.72.0.1", 2), "A -> host (input), the reply (output) comes back");
        assert!(!host.ping("10.72.0.10", 1), "host -> A: no ingress");
        let table = nft.list_table(hv_net::nft::Family::Inet, &brnf::table_name(&sb.port));
        assert!(table.unwrap().contains("ct state established,related accept"));
        // A broadcast carries no address of B's: B's ingress rules still decide.
        assert!(!udp_broadcast_arrives(&outsider, &b), "B allows no UDP in");

        // Live changes: B lets ICMP in from anywhere; A may no longer send.
        let icmp_in = SecurityRule::ingress(Protocol::Icmp);
        let udp_in = SecurityRule::ingress(Protocol::Udp).ports(BROADCAST_PORT, BROADCAST_PORT);
        ps.update_rules(&with(&sb, &[any_out, icmp_in, udp_in])).unwrap();
        assert!(outsider.ping("10.72.0.11", 2), "outsider -> B, now allowed");
        assert!(udp_broadcast_arrives(&outsider, &b), "and its UDP broadcast, now allowed");
        assert!(a.ping("10.72.0.11", 2), "A -> B still");
        ps.update_rules(&with(&sa, &[])).unwrap();
        assert!(!a.ping("10.72.0.11", 1), "A may not send any more");
        assert!(!a.ping("10.72.0.1", 1), "not to the host either");
        ps.update_rules(&with(&sa, &[icmp_in])).unwrap();
        assert!(b.ping("10.72.0.10", 2), "B -> A once A lets ICMP in; A's reply passes");

        ps.remove(&sa.port).unwrap();
        ps.remove(&sb.port).unwrap();
        assert!(nft.tables().unwrap().is_empty(), "both tables of both ports are gone");
        assert!(outsider.ping("10.72.0.10", 2), "port security removed: open again");
    });
}

#[test]
fn a_removed_rule_cuts_the_connection_it_let_in() {
    use std::time::{Duration, Instant};

    need_root!();
    hv_test_support::require!(Nft::locate().is_ok(), "nft binary (apt-get install nftables)");
    let nft = Nft::locate().unwrap();
    let guest = NetNs::new("hvt-ctg");
    let neighbour = NetNs::new("hvt-ctn");
    let host = NetNs::new("hvt-ct");
    host.run(|| {
        hv_test_support::require!(brnf::available(), "br_netfilter (CONFIG_BRIDGE_NETFILTER)");
        let mut nl = Netlink::new().unwrap();
        nl.create_bridge("hvct").unwrap();
        nl.set_up("hvct").unwrap();
        common::attach_guest(&mut nl, "hvct", "hvc0", &guest, "10.74.0.10/24", None, Some(MAC));
        common::attach_guest(&mut nl, "hvct", "hvc1", &neighbour, "10.74.0.11/24", None, None);
        let ps = PortSecurity::with_mode(nft.clone(), ReplyMode::BrNetfilter);
        let any_out = SecurityRule::egress(Protocol::Any);
        let spec = PortSpec {
            port: IfName::new("hvc0").unwrap(),
            mac: MAC.parse().unwrap(),
            ips: vec!["10.74.0.10".parse().unwrap()],
            rules: vec![any_out, SecurityRule::ingress(Protocol::Icmp)],
            bridge: Some(IfName::new("hvct").unwrap()),
        };
        ps.apply(&spec).unwrap();

        // One long ping from the neighbour: one ICMP id, so one tracked connection, each echo
        // request after the first passing as `established`.
        let ping = neighbour.ping_session("10.74.0.10");
        assert!(
            ping.wait_for_replies(3, Duration::from_secs(10)),
            "the neighbour's pings are answered while ICMP may come in"
        );
        let mut ct = hv_net::netlink::Conntrack::new().unwrap();
        let ours = |c: &hv_net::netlink::Connection| {
            c.protocol == 1
                && c.orig.src.to_string() == "10.74.0.11"
                && c.responder() == spec.ips[0]
        };
        assert!(ct.list().unwrap().iter().any(ours), "the ping is one tracked connection");

        // The rule goes: the connection it let in goes with it, though its packets would
        // otherwise match `ct state established` for as long as they keep coming.
        ps.update_rules(&with(&spec, &[any_out])).unwrap();
        // An answer already on its way when the rule went may still arrive.
        let settled = Instant::now() + Duration::from_millis(500);
        std::thread::sleep(Duration::from_secs(3));
        let late = ping.replies_after(settled);
        assert!(late.is_empty(), "echoes still answered after the rule went: {late:?}");
        let now = with(&spec, &[any_out]);
        assert_eq!(ps.forget_unadmitted(&[&now]).unwrap(), 0, "nothing is left to forget");
        drop(ping);
        assert!(!ct.list().unwrap().iter().any(ours), "no tracked connection is left");
        assert!(!neighbour.ping("10.74.0.10", 1), "a new ping is refused too");
        assert!(guest.ping("10.74.0.11", 1), "the guest's own egress is untouched");
        ps.remove(&spec.port).unwrap();
    });
}
