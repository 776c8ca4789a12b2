//! The virtio-net queue handler over a real TAP inside a test namespace, with the host kernel
//! as the peer: the guest's ARP request, ping and UDP datagram (its checksum left to the host
//! through the offload header) are answered by the namespace's own IP stack, and the answers
//! arrive in the guest's RX buffers with a correct header.

mod virtio_net_common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hv_net::netlink::Netlink;
use hv_net::tap::Tap;
use hv_net::virtio_net::{NetHeader, NetQueueHandler, TapBackend, NET_HDR_LEN};
use hv_test_support::netns::NetNs;
use virtio_bindings::bindings::virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM;
use virtio_net_common::*;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GUEST_IP: [u8; 4] = [10, 9, 0, 2];
const HOST_IP: [u8; 4] = [10, 9, 0, 1];

fn ip_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(GUEST_MAC);
    f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend(GUEST_MAC);
    f.extend(GUEST_IP);
    f.extend([0; 6]);
    f.extend(HOST_IP);
    f
}

/// An IPv4 frame to the host carrying `proto` with `payload`.
fn ipv4(dst_mac: [u8; 6], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = dst_mac.to_vec();
    f.extend(GUEST_MAC);
    f.extend([0x08, 0x00]);
    let total = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend(total.to_be_bytes());
    ip.extend([0, 1, 0x40, 0, 64, proto, 0, 0]);
    ip.extend(GUEST_IP);
    ip.extend(HOST_IP);
    let c = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend(ip);
    f.extend(payload);
    f
}

fn icmp_echo() -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend(b"hv virtio-net ping");
    let c = ip_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    icmp
}

/// A UDP datagram to a closed port whose checksum field holds garbage: only a host that
/// honours NEEDS_CSUM (and so trusts or computes it) answers with "port unreachable".
fn udp_bad_checksum(port: u8) -> Vec<u8> {
    let mut udp = vec![0x30, 0x39, 0x00, port, 0, 0, 0xde, 0xad];
    udp.extend(b"checksum offloaded");
    let len = udp.len() as u16;
    udp[4..6].copy_from_slice(&len.to_be_bytes());
    udp
}

/// Opens TAP `name` (with the vnet header or not) in the current namespace, with IPv6 off and
/// the host address, and brings it up.
fn host_tap(name: &str, vnet_hdr: bool) -> Tap {
    let tap = Tap::builder(name).vnet_hdr(vnet_hdr).open().unwrap();
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    let mut nl = Netlink::new().unwrap();
    nl.add_address(name, Ipv4Addr::from(HOST_IP).into(), 24).unwrap();
    nl.set_up(name).unwrap();
    tap
}

/// Posts `n` RX buffers of 2048 bytes; returns their (head, address).
fn post_rx_buffers(rx: &mut TestQueue, n: usize) -> Vec<(u16, u64)> {
    (0..n)
        .map(|_| {
            let (head, a) = rx.post_rx(&[2048]);
            (head, a[0])
        })
        .collect()
}

/// Processes RX until a frame matching `want` arrives; returns its header and frame.
fn wait_rx(
    h: &mut NetQueueHandler,
    rx: &mut TestQueue,
    bufs: &[(u16, u64)],
    seen: &mut u16,
    want: impl Fn(&[u8]) -> bool,
) -> (NetHeader, Vec<u8>) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let mem = rx.mem;
        h.process_rx(&mut rx.queue, mem).unwrap();
        while *seen < rx.used_idx() {
            let (head, len) = rx.used(*seen);
            *seen += 1;
            let addr = bufs.iter().find(|b| u32::from(b.0) == head).expect("a posted head").1;
            let bytes = rx.read_guest(addr, len as usize);
            let mut hb = [0u8; NET_HDR_LEN];
            hb.copy_from_slice(&bytes[..NET_HDR_LEN]);
            if want(&bytes[NET_HDR_LEN..]) {
                return (NetHeader::from_bytes(&hb), bytes[NET_HDR_LEN..].to_vec());
            }
        }
        assert!(
            Instant::now() < end,
            "no matching frame from the host: {:?}",
            h.metrics().snapshot()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_host_stack_answers_the_guest_through_a_tap() {
    hv_test_support::require!(hv_test_support::is_root(), "network namespaces need root");
    hv_test_support::require!(hv_test_support::netns::have_netns_tools(), "ip is not installed");
    let ns = NetNs::new("hvt-vnet");
    ns.run(|| {
        let tap = host_tap("hvvnet0", true);

        let ram = ram();
        let backend = TapBackend::new(tap).unwrap();
        let mut h = NetQueueHandler::new(Box::new(backend), all_features());
        h.apply_offloads().unwrap();
        let mut rx = TestQueue::rx(ram.memory());
        let mut tx = TestQueue::tx(ram.memory());
        let bufs = post_rx_buffers(&mut rx, 48);
        let mut seen = 0;

        // ARP: the host learns the guest and answers with its own MAC.
        tx.send(&NetHeader::default(), &arp_request(), &[]);
        h.process_tx(&mut tx.queue, ram.memory()).unwrap();
        let (hdr, reply) = wait_rx(&mut h, &mut rx, &bufs, &mut seen, |f| {
            f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
        });
        assert_eq!(hdr.num_buffers, 1);
        assert_eq!(hdr.gso_type, 0);
        assert_eq!(reply[..6], GUEST_MAC, "the reply is for the guest");
        assert_eq!(reply[28..32], HOST_IP);
        let mut host_mac = [0u8; 6];
        host_mac.copy_from_slice(&reply[6..12]);

        // ICMP echo.
        tx.send(&NetHeader::default(), &ipv4(host_mac, 1, &icmp_echo()), &[12, 20, 40]);
        h.process_tx(&mut tx.queue, ram.memory()).unwrap();
        let (_, pong) = wait_rx(&mut h, &mut rx, &bufs, &mut seen, |f| {
            f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 0
        });
        assert_eq!(pong[38..40], [0x12, 0x34], "the echo identifier comes back");
        assert_eq!(&pong[42..], b"hv virtio-net ping");

        // UDP with the checksum offloaded to the host.
        let partial = NetHeader {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            csum_start: 14 + 20,
            csum_offset: 6,
            ..NetHeader::default()
        };
        // The same bad checksum without the offload flag is dropped by the host (sent first:
        // had it been taken, its answer would come first).
        tx.send(&NetHeader::default(), &ipv4(host_mac, 17, &udp_bad_checksum(10)), &[]);
        tx.send(&partial, &ipv4(host_mac, 17, &udp_bad_checksum(9)), &[]);
        h.process_tx(&mut tx.queue, ram.memory()).unwrap();
        let (_, unreachable) = wait_rx(&mut h, &mut rx, &bufs, &mut seen, |f| {
            f.len() >= 66 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 3
        });
        assert_eq!(unreachable[35], 3, "port unreachable");
        assert_eq!(unreachable[64..66], [0, 9], "only the offloaded datagram was taken");

        let st = h.metrics().snapshot();
        assert_eq!((st.tx_frames, st.tx_malformed, st.tx_backend_errors), (4, 0, 0));
        assert!(st.rx_frames >= 3);
    });
}

#[test]
fn a_tap_without_the_vnet_header_carries_bare_frames() {
    hv_test_support::require!(hv_test_support::is_root(), "network namespaces need root");
    hv_test_support::require!(hv_test_support::netns::have_netns_tools(), "ip is not installed");
    let ns = NetNs::new("hvt-vnb");
    ns.run(|| {
        let tap = host_tap("hvvnb0", false);
        let backend = TapBackend::new(tap).unwrap();
        assert!(!hv_net::virtio_net::NetBackend::has_vnet_hdr(&backend));
        let ram = ram();
        let mut h = NetQueueHandler::new(Box::new(backend), all_features());
        h.apply_offloads().unwrap();
        let mut rx = TestQueue::rx(ram.memory());
        let mut tx = TestQueue::tx(ram.memory());
        let bufs = post_rx_buffers(&mut rx, 16);
        let mut seen = 0;
        tx.send(&NetHeader::default(), &arp_request(), &[]);
        h.process_tx(&mut tx.queue, ram.memory()).unwrap();
        let (hdr, reply) = wait_rx(&mut h, &mut rx, &bufs, &mut seen, |f| {
            f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
        });
        assert_eq!(hdr, NetHeader { num_buffers: 1, ..NetHeader::default() });
        assert_eq!(reply[28..32], HOST_IP);
    });
}
