//! A domain NIC's port security on an hv network, in a namespace the test makes: the TAP that
//! `plug` makes for a `type='network'` interface passes the guest's own frames (an ICMP echo to
//! the gateway is answered) and drops frames with a forged source MAC or IP (a reply would
//! come back were they let through: the host knows where to send it); `unplug` removes the
//! port's tables with the TAP. Frames are written into the TAP as a guest's virtio-net device
//! writes them.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hv_host::domain::InterfaceSource;
use hv_host::network::{plug, unplug};
use hv_net::network::{NetworkDef, NetworkManager, NetworkMode};
use hv_net::nft::port::{brnf, table_name, ReplyMode};
use hv_net::nft::{Family, Nft};
use hv_net::tap::Tap;
use hv_net::{IfName, MacAddr};
use hv_test_support::netns::{have_netns_tools, NetNs};
use hv_test_support::{is_root, require};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x21];
const FORGED_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x99];
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 72, 0, 10);
const FORGED_IP: Ipv4Addr = Ipv4Addr::new(10, 72, 0, 99);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 72, 0, 1);
/// The virtio-net header the TAP carries before each frame (its default size).
const VNET_HDR: usize = 10;

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request from (`src_mac`, `src_ip`) to the gateway, broadcast at layer 2.
fn echo_request(src_mac: [u8; 6], src_ip: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend_from_slice(b"hv port security");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src_ip.octets());
    ip.extend_from_slice(&GATEWAY.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = vec![0u8; VNET_HDR];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    frame
}

/// True when an ICMP echo reply with identifier `id` comes out of the TAP within `wait`.
fn reply_arrives(tap: &mut std::fs::File, id: u16, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // The queue is non-blocking: nothing there yet reads as WouldBlock.
        let Ok(n) = tap.read(&mut buf) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let f = &buf[VNET_HDR.min(n)..n];
        // Ethernet (14) + IPv4 (20) + ICMP type/code/checksum (4) + identifier (2).
        let is_reply = f.len() >= 40 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 0;
        if is_reply && u16::from_be_bytes([f[38], f[39]]) == id {
            return true;
        }
    }
    false
}

#[test]
fn forged_source_mac_or_ip_from_a_domain_tap_is_dropped() {
    require!(is_root(), "root (network namespaces, TAPs)");
    require!(have_netns_tools(), "ip and ping");
    require!(Nft::locate().is_ok(), "nft binary (apt-get install nftables)");
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::new("hvt-hps");
    ns.run(|| {
        let mgr = NetworkManager::open(dir.path()).unwrap();
        let mac = MacAddr(MAC);
        let def = NetworkDef::builder("psn", NetworkMode::Nat)
            .ip("10.72.0.1/24".parse().unwrap())
            .dhcp_range(Ipv4Addr::new(10, 72, 0, 100), Ipv4Addr::new(10, 72, 0, 200))
            .dhcp_host(mac, GUEST)
            .build()
            .unwrap();
        mgr.define(def).unwrap();
        mgr.start("psn").unwrap();
        let source = InterfaceSource::Network("psn".into());
        plug(dir.path(), &source, "hvtps0", mac).unwrap();
        let nft = Nft::locate().unwrap();
        let table = table_name(&IfName::new("hvtps0").unwrap());
        assert!(nft.has_table(Family::Bridge, &table).unwrap(), "port security installed");
        // Without bridge conntrack, its rules are stateful in an inet table of the port's.
        let sg = brnf::table_name(&IfName::new("hvtps0").unwrap());
        let brnf_mode = ReplyMode::detect(&nft) == ReplyMode::BrNetfilter;
        assert_eq!(nft.has_table(Family::Inet, &sg).unwrap(), brnf_mode, "the inet table");

        // The guest's side of the TAP, as its VMM holds it.
        let tap = Tap::open("hvtps0").unwrap();
        let mut q = tap.into_queues().remove(0);
        // The host knows where the guest's and the forger's addresses live, so a frame that
        // passes is answered.
        for (ip, mac) in [(GUEST, MAC), (FORGED_IP, FORGED_MAC)] {
            let lladdr = MacAddr(mac).to_string();
            let ip = ip.to_string();
            ns.exec_ok(&["ip", "neigh", "replace", &ip, "lladdr", &lladdr, "dev", "hvpsn"]);
        }
        let wait = Duration::from_secs(2);

        q.write_all(&echo_request(MAC, GUEST, 1)).unwrap();
        assert!(reply_arrives(&mut q, 1, wait), "the guest's own MAC and IP: answered");

        q.write_all(&echo_request(MAC, FORGED_IP, 2)).unwrap();
        assert!(!reply_arrives(&mut q, 2, wait), "a forged source IP is dropped");

        q.write_all(&echo_request(FORGED_MAC, GUEST, 3)).unwrap();
        assert!(!reply_arrives(&mut q, 3, wait), "a forged source MAC is dropped");

        q.write_all(&echo_request(MAC, GUEST, 4)).unwrap();
        assert!(reply_arrives(&mut q, 4, wait), "own frames still pass");

        drop(q);
        unplug("hvtps0");
        assert!(!nft.has_table(Family::Bridge, &table).unwrap(), "port security removed");
        assert!(!nft.has_table(Family::Inet, &sg).unwrap(), "both tables");
        mgr.destroy("psn").unwrap();
    });
}
