//! The DHCP server on real sockets: a bridge with two veth ports inside a network namespace the
//! test creates, our server on the bridge, busybox's `udhcpc` as the client on the far end of
//! each veth. Needs root and `busybox`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

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

/// A bridge `hvbr0` with the gateway address, and veth pairs `c1`/`p1`, `c2`/`p2` whose `p`
/// ends are its ports; the `c` ends carry the clients' MACs.
fn build_network(ns: &NetNs) {
    ns.exec_ok(&["ip", "link", "add", "hvbr0", "type", "bridge", "stp_state", "0"]);
    ns.exec_ok(&["ip", "addr", "add", "10.77.0.1/24", "dev", "hvbr0"]);
    ns.exec_ok(&["ip", "link", "set", "hvbr0", "up"]);
    for (c, p, mac) in [("c1", "p1", DYNAMIC_MAC), ("c2", "p2", RESERVED_MAC)] {
        ns.exec_ok(&["ip", "link", "add", c, "address", mac, "type", "veth", "peer", "name", p]);
        ns.exec_ok(&["ip", "link", "set", p, "master", "hvbr0"]);
        ns.exec_ok(&["ip", "link", "set", p, "up"]);
        ns.exec_ok(&["ip", "link", "set", c, "up"]);
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
    let host = format!("hostname:{hostname}");
    let out = ns.exec(&[
        BUSYBOX,
        "udhcpc",
        "-i",
        iface,
        "-n",
        "-q",
        "-f",
        "-s",
        "/bin/true",
        "-t",
        "5",
        "-T",
        "1",
        "-x",
        &host,
    ]);
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

#[test]
fn udhcpc_gets_leases_from_our_server_on_a_bridge() {
    hv_test_support::require!(hv_test_support::is_root(), "network namespaces need root");
    hv_test_support::require!(
        have_busybox_udhcpc(),
        "busybox with udhcpc (busybox-static) is not installed"
    );
    let dir = tempfile::tempdir().unwrap();
    let lease_file = dir.path().join("state/net.leases");
    let ns = NetNs::new("hvdhcp");
    build_network(&ns);

    let server = start(&ns, config(&lease_file));
    assert_eq!(udhcpc(&ns, "c1", "dyn-guest"), Ipv4Addr::new(10, 77, 0, 100));
    assert_eq!(udhcpc(&ns, "c2", "ignored-name"), RESERVED_IP);
    let leases = server.leases();
    let stats = server.stats();
    server.stop().unwrap();
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
            (DYNAMIC_MAC.parse().unwrap(), Ipv4Addr::new(10, 77, 0, 100), Some("dyn-guest")),
        ]
    );
    let now = SystemTime::now();
    for l in &on_disk {
        assert!(
            l.expires > now + Duration::from_secs(3500)
                && l.expires <= now + Duration::from_secs(3600)
        );
    }

    // A restarted server reloads the file: the dynamic client keeps its address even though it
    // does not ask for it, and a new client does not get it.
    let server = start(&ns, config(&lease_file));
    assert_eq!(server.leases(), on_disk);
    ns.exec_ok(&["ip", "link", "set", "c2", "address", "52:54:00:77:00:0c"]);
    assert_eq!(udhcpc(&ns, "c2", "newcomer"), Ipv4Addr::new(10, 77, 0, 101));
    assert_eq!(udhcpc(&ns, "c1", "dyn-guest"), Ipv4Addr::new(10, 77, 0, 100));
    server.stop().unwrap();
    assert_eq!(read_leases(&lease_file).unwrap().len(), 3);
}

#[test]
fn a_missing_interface_is_a_clear_error() {
    hv_test_support::require!(hv_test_support::is_root(), "network namespaces need root");
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::new("hvdhcp");
    let mut c = config(&dir.path().join("net.leases"));
    c.interface = "hvnope0".into();
    let err = ns.run(move || DhcpServer::new(c)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("hvnope0") && text.contains("SO_BINDTODEVICE"), "{text}");
}
