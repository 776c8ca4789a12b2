//! The DHCP server on real sockets: a bridge with two veth ports inside a network namespace the
//! test creates, our server on the bridge, busybox's `udhcpc` as the client on the far end of
//! each veth. Needs root and `busybox`.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use hv_net::dhcp::{read_leases, DhcpConfig, DhcpHandle, DhcpServer, MacAddr, Reservation};
use hv_test_support::netns::NetNs;

const BUSYBOX: &str = "/usr/bin/busybox";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const DYNAMIC_MAC: &str = "52:54:00:77:00:0a";
const RESERVED_MAC: &str = "52:54:00:77:00:0b";
const RESERVED_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 50);

fn have_busybox_udhcpc() -> bool {
    Command::new(BUSYBOX).args(["udhcpc", "--help"]).output().is_ok_and(|o| {
        let text = [o.stdout, o.stderr].concat();
        String::from_utf8_lossy(&text).contains("udhcpc")
    })
}

/// In `server`: a bridge `hvbr0` with the gateway address, whose ports are the `p` ends of veth
/// pairs `c1`/`p1` and `c2`/`p2`. The `c` ends, carrying the clients' MACs, are moved to
/// `client`, so that traffic between a client address and the gateway really crosses the veth
/// (in one namespace it would take the loopback).
fn build_network(server: &NetNs, client: &NetNs) {
    server.exec_ok(&["ip", "link", "add", "hvbr0", "type", "bridge", "stp_state", "0"]);
    server.exec_ok(&["ip", "addr", "add", "10.77.0.1/24", "dev", "hvbr0"]);
    server.exec_ok(&["ip", "link", "set", "hvbr0", "up"]);
    for (c, p, mac) in [("c1", "p1", DYNAMIC_MAC), ("c2", "p2", RESERVED_MAC)] {
        server
            .exec_ok(&["ip", "link", "add", c, "address", mac, "type", "veth", "peer", "name", p]);
        server.exec_ok(&["ip", "link", "set", p, "master", "hvbr0"]);
        server.exec_ok(&["ip", "link", "set", p, "up"]);
        server.exec_ok(&["ip", "link", "set", c, "netns", client.name()]);
        client.exec_ok(&["ip", "link", "set", c, "up"]);
    }
}

fn config(lease_file: &Path) -> DhcpConfig {
    let mut c = DhcpConfig::new(
        "hvbr0",
        GATEWAY,
        24,
        Ipv4Addr::new(10, 77, 0, 100)..=Ipv4Addr::new(10, 77, 0, 120),
        lease_file,
    );
    c.dns_servers = vec![GATEWAY];
    c.reservations = vec![Reservation {
        mac: RESERVED_MAC.parse().unwrap(),
        ip: RESERVED_IP,
        hostname: Some("reserved-guest".into()),
    }];
    c
}

/// Runs `udhcpc` once on `iface` (no script: it only reports the lease) and returns the
/// address it says it obtained.
fn udhcpc(ns: &NetNs, iface: &str, hostname: &str) -> Ipv4Addr {
    udhcpc_args(ns, iface, hostname, &[])
}

/// [`udhcpc`] with extra arguments.
fn udhcpc_args(ns: &NetNs, iface: &str, hostname: &str, extra: &[&str]) -> Ipv4Addr {
    let host = format!("hostname:{hostname}");
    let mut args = vec![BUSYBOX, "udhcpc", "-i", iface, "-n", "-q", "-f", "-s", "/bin/true"];
    args.extend_from_slice(&["-t", "5", "-T", "1", "-x", &host]);
    args.extend_from_slice(extra);
    let out = ns.exec(&args);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "udhcpc on {iface} failed:\n{text}");
    // "udhcpc: lease of 10.77.0.100 obtained from 10.77.0.1, lease time 3600"
    let ip = text
        .split("lease of ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no lease in udhcpc output:\n{text}"));
    assert!(text.contains(&format!("obtained from {GATEWAY}")), "{text}");
    ip
}

fn start(ns: &NetNs, config: DhcpConfig) -> DhcpHandle {
    // The socket is made on a thread inside the namespace, and the server thread it spawns
    // inherits the namespace.
    ns.run(move || DhcpServer::spawn(config)).expect("start the DHCP server")
}

/// Sends `request` from `from:68` to the gateway's port 67 (unicast, as a client in RENEWING
/// does) and returns the reply, if one comes within `wait`. Runs inside `client`.
fn unicast_exchange(
    client: &NetNs,
    from: Ipv4Addr,
    request: Message,
    wait: Duration,
) -> Option<Message> {
    client.run(move || {
        let sock = UdpSocket::bind((from, 68)).expect("bind the client port");
        sock.set_read_timeout(Some(wait)).unwrap();
        sock.send_to(&request.to_vec().unwrap(), (GATEWAY, 67)).expect("send to the server");
        let mut buf = [0u8; 1500];
        let (len, peer) = sock.recv_from(&mut buf).ok()?;
        assert_eq!(peer.ip(), std::net::IpAddr::V4(GATEWAY));
        Some(Message::from_bytes(&buf[..len]).expect("parse the reply"))
    })
}

fn client_message(kind: MessageType, mac: &str, ciaddr: Ipv4Addr) -> Message {
    let mac: MacAddr = mac.parse().unwrap();
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest).set_htype(HType::Eth).set_chaddr(&mac.0).set_ciaddr(ciaddr);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(GATEWAY));
    m
}

#[test]
fn udhcpc_gets_leases_from_our_server_on_a_bridge() {
    hv_test_support::require!(hv_test_support::is_root(), "network namespaces need root");
    hv_test_support::require!(
        have_busybox_udhcpc(),
        "busybox with udhcpc (busybox-static) is not installed"
    );
    let dir = tempfile::tempdir().unwrap();
    let lease_file = dir.path().join("state/net.leases");
    let host = NetNs::new("hvdhcp-s");
    let guests = NetNs::new("hvdhcp-c");
    build_network(&host, &guests);

    let server = start(&host, config(&lease_file));
    let dynamic_ip = Ipv4Addr::new(10, 77, 0, 100);
    assert_eq!(udhcpc(&guests, "c1", "dyn-guest"), dynamic_ip);
    assert_eq!(udhcpc(&guests, "c2", "ignored-name"), RESERVED_IP);
    let leases = server.leases();
    let stats = server.stats();
    assert_eq!((stats.offers, stats.acks), (2, 2), "{stats:?}");

    // The lease file records both, readable without a server.
    let on_disk = read_leases(&lease_file).unwrap();
    assert_eq!(on_disk, leases);
    let summary: Vec<(MacAddr, Ipv4Addr, Option<&str>)> =
        on_disk.iter().map(|l| (l.mac, l.ip, l.hostname.as_deref())).collect();
    assert_eq!(
        summary,
        vec![
            (RESERVED_MAC.parse().unwrap(), RESERVED_IP, Some("reserved-guest")),
            (DYNAMIC_MAC.parse().unwrap(), dynamic_ip, Some("dyn-guest")),
        ]
    );
    let now = SystemTime::now();
    for l in &on_disk {
        assert!(
            l.expires > now + Duration::from_secs(3500)
                && l.expires <= now + Duration::from_secs(3600)
        );
    }

    // The client configures its address and renews by unicast: the ACK comes back unicast.
    guests.exec_ok(&["ip", "addr", "add", "10.77.0.100/24", "dev", "c1"]);
    let ack = unicast_exchange(
        &guests,
        dynamic_ip,
        client_message(MessageType::Request, DYNAMIC_MAC, dynamic_ip),
        Duration::from_secs(5),
    )
    .expect("an ACK to the renewal");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), dynamic_ip);
    // INFORM is answered the same way, without a lease.
    let inform = unicast_exchange(
        &guests,
        dynamic_ip,
        client_message(MessageType::Inform, DYNAMIC_MAC, dynamic_ip),
        Duration::from_secs(5),
    )
    .expect("an ACK to the INFORM");
    assert_eq!(inform.opts().get(OptionCode::Router), Some(&DhcpOption::Router(vec![GATEWAY])));
    // RELEASE gets no answer and frees the address, on disk too.
    let none = unicast_exchange(
        &guests,
        dynamic_ip,
        client_message(MessageType::Release, DYNAMIC_MAC, dynamic_ip),
        Duration::from_millis(300),
    );
    assert!(none.is_none());
    let mut left = Vec::new();
    for _ in 0..50 {
        left = read_leases(&lease_file).unwrap().iter().map(|l| l.ip).collect::<Vec<_>>();
        if left == [RESERVED_IP] {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(left, vec![RESERVED_IP]);
    // udhcpc asks for its old address again (INIT-REBOOT style, -r) and gets it back.
    guests.exec_ok(&["ip", "addr", "flush", "dev", "c1"]);
    assert_eq!(udhcpc_args(&guests, "c1", "dyn-guest", &["-r", "10.77.0.100"]), dynamic_ip);
    server.stop().unwrap();
    let on_disk = read_leases(&lease_file).unwrap();

    // A restarted server reloads the file: the dynamic client keeps its address even though it
    // does not ask for it, and a new client does not get it.
    let server = start(&host, config(&lease_file));
    assert_eq!(server.leases(), on_disk);
    guests.exec_ok(&["ip", "link", "set", "c2", "address", "52:54:00:77:00:0c"]);
    assert_eq!(udhcpc(&guests, "c2", "newcomer"), Ipv4Addr::new(10, 77, 0, 101));
    assert_eq!(udhcpc(&guests, "c1", "dyn-guest"), dynamic_ip);
    server.stop().unwrap();
    assert_eq!(read_leases(&lease_file).unwrap().len(), 3);
}

#[test]
fn one_server_per_interface_and_clear_socket_errors() {
    hv_test_support::require!(hv_test_support::is_root(), "network namespaces need root");
    let dir = tempfile::tempdir().unwrap();
    let host = NetNs::new("hvdhcp-s");
    for (br, cidr) in [("hvbr0", "10.77.0.1/24"), ("hvbr1", "10.78.0.1/24")] {
        host.exec_ok(&["ip", "link", "add", br, "type", "bridge"]);
        host.exec_ok(&["ip", "addr", "add", cidr, "dev", br]);
        host.exec_ok(&["ip", "link", "set", br, "up"]);
    }
    let first = start(&host, config(&dir.path().join("a.leases")));

    // Another network's server runs beside it...
    let mut other = config(&dir.path().join("b.leases"));
    other.interface = "hvbr1".into();
    other.server_ip = Ipv4Addr::new(10, 78, 0, 1);
    other.router = Some(other.server_ip);
    other.range = Ipv4Addr::new(10, 78, 0, 100)..=Ipv4Addr::new(10, 78, 0, 120);
    other.reservations.clear();
    let second = start(&host, other);

    // ...but a second server on the same bridge is refused, naming the interface.
    let dup = config(&dir.path().join("c.leases"));
    let err = host.run(move || DhcpServer::new(dup)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("hvbr0") && text.contains("bind"), "{text}");

    // So is a bridge that does not exist.
    let mut missing = config(&dir.path().join("d.leases"));
    missing.interface = "hvnope0".into();
    let err = host.run(move || DhcpServer::new(missing)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("hvnope0") && text.contains("SO_BINDTODEVICE"), "{text}");

    first.stop().unwrap();
    second.stop().unwrap();
}
