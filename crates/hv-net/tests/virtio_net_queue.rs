//! The virtio-net queue handler, driven through split queues in guest memory with a Unix
//! datagram socket as the wire: TX and RX with and without the vnet header, mergeable and
//! single RX buffers, offload headers, malformed chains, notification suppression and the rate
//! limiter.

mod virtio_net_common;

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hv_core::rate_limiter::{BucketConfig, RateLimiter};
use hv_net::virtio_net::{
    DatagramBackend, NetHeader, NetQueueHandler, NetStats, Offloads, RxWait, NET_HDR_LEN,
};
use virtio_bindings::bindings::virtio_net::*;
use virtio_bindings::bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_net_common::*;
use virtio_queue::QueueT;

/// A handler over a datagram socket, and the peer end.
fn handler(features: u64, vnet_hdr: bool) -> (NetQueueHandler, UnixDatagram) {
    let (backend, peer) = DatagramBackend::pair(vnet_hdr).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (NetQueueHandler::new(Box::new(backend), features), peer)
}

fn recv(peer: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let n = peer.recv(&mut buf).expect("a frame on the wire");
    buf.truncate(n);
    buf
}

fn nothing_waiting(peer: &UnixDatagram) -> bool {
    peer.set_nonblocking(true).unwrap();
    let mut b = [0u8; 16];
    let none = peer.recv(&mut b).is_err();
    peer.set_nonblocking(false).unwrap();
    none
}

/// (address, length, flags, next) of a descriptor.
type RawDesc = (u64, u32, u16, u16);

fn stats(h: &NetQueueHandler) -> NetStats {
    h.metrics().snapshot()
}

#[test]
fn tx_frames_reach_the_wire_without_the_header() {
    let ram = ram();
    let (mut h, peer) = handler(plain_features(), false);
    let mut tx = TestQueue::tx(ram.memory());
    let small = frame(60, 1);
    let big = frame(1514, 2);
    tx.send(&NetHeader::default(), &small, &[]);
    // Header and frame mixed across four pieces.
    tx.send(&NetHeader::default(), &big, &[5, 500, 21, 1000]);
    // All in one descriptor.
    tx.send(&NetHeader::default(), &small, &[NET_HDR_LEN + 60]);
    assert!(h.process_tx(&mut tx.queue, ram.memory()).unwrap(), "interrupt expected");
    assert_eq!(recv(&peer), small);
    assert_eq!(recv(&peer), big);
    assert_eq!(recv(&peer), small);
    assert_eq!(tx.all_used(), [(0, 0), (2, 0), (6, 0)]);
    let st = stats(&h);
    assert_eq!((st.tx_frames, st.tx_bytes, st.tx_malformed), (3, 60 + 1514 + 60, 0));
    // Nothing more: no interrupt.
    assert!(!h.process_tx(&mut tx.queue, ram.memory()).unwrap());
}

#[test]
fn tx_offload_headers_pass_to_a_vnet_backend() {
    let ram = ram();
    let (mut h, peer) = handler(all_features(), true);
    let mut tx = TestQueue::tx(ram.memory());
    let f = frame(4000, 3);
    let hdr = NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    tx.send(&hdr, &f, &[]);
    h.process_tx(&mut tx.queue, ram.memory()).unwrap();
    let got = recv(&peer);
    assert_eq!(got[..NET_HDR_LEN], hdr.to_bytes());
    assert_eq!(got[NET_HDR_LEN..], f[..]);
    assert_eq!(stats(&h).tx_frames, 1);
}

#[test]
fn tx_headers_asking_for_what_was_not_negotiated_are_dropped() {
    let ram = ram();
    // A plain guest (no CSUM, no HOST_TSO) on a backend that would pass headers.
    let (mut h, peer) = handler(plain_features(), true);
    let mut tx = TestQueue::tx(ram.memory());
    let csum = NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        csum_start: 34,
        csum_offset: 16,
        ..NetHeader::default()
    };
    let tso = NetHeader { gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8, gso_size: 1448, ..csum };
    tx.send(&csum, &frame(100, 1), &[]);
    tx.send(&tso, &frame(3000, 2), &[]);
    tx.send(&NetHeader { gso_type: VIRTIO_NET_HDR_GSO_UDP as u8, ..tso }, &frame(100, 3), &[]);
    tx.send(&NetHeader::default(), &frame(64, 4), &[]);
    h.process_tx(&mut tx.queue, ram.memory()).unwrap();
    assert_eq!(recv(&peer)[NET_HDR_LEN..], frame(64, 4)[..]);
    assert!(nothing_waiting(&peer));
    let st = stats(&h);
    assert_eq!((st.tx_frames, st.tx_malformed), (1, 3));
    assert_eq!(tx.used_idx(), 4, "dropped chains are still returned");
    assert!(h.last_error().unwrap().contains("header"), "{:?}", h.last_error());
}

#[test]
fn rx_frames_land_with_a_header() {
    let ram = ram();
    let (mut h, peer) = handler(plain_features(), false);
    let mut rx = TestQueue::rx(ram.memory());
    let (_, a) = rx.post_rx(&[2048]);
    let (_, b) = rx.post_rx(&[2048]);
    peer.send(&frame(60, 9)).unwrap();
    peer.send(&frame(1514, 10)).unwrap();
    assert!(h.process_rx(&mut rx.queue, ram.memory()).unwrap());
    assert_eq!(h.rx_wait(), None);
    assert_eq!(rx.all_used(), [(0, 72), (1, 1526)]);
    let got = rx.read_guest(a[0], 72);
    assert_eq!(got[..NET_HDR_LEN], plain_header(1).to_bytes());
    assert_eq!(got[NET_HDR_LEN..], frame(60, 9)[..]);
    assert_eq!(rx.read_guest(b[0], 1526)[NET_HDR_LEN..], frame(1514, 10)[..]);
    let st = stats(&h);
    assert_eq!((st.rx_frames, st.rx_bytes), (2, 60 + 1514));
}

#[test]
fn a_large_frame_spans_mergeable_buffers() {
    let ram = ram();
    let (mut h, peer) = handler(plain_features(), false);
    let mut rx = TestQueue::rx(ram.memory());
    // Buffers of 1536 bytes, the second made of two pieces.
    let bufs: Vec<_> = [vec![1536], vec![1000, 536], vec![1536], vec![1536]]
        .iter()
        .map(|l| (rx.post_rx(l).1, l.clone()))
        .collect();
    let f = frame(4000, 5);
    peer.send(&f).unwrap();
    h.process_rx(&mut rx.queue, ram.memory()).unwrap();
    // 12 + 4000 bytes: 1536 + 1536 + 940.
    assert_eq!(rx.all_used(), [(0, 1536), (1, 1536), (3, 940)]);
    let mut got = Vec::new();
    for ((addrs, lens), used) in bufs.iter().zip([1536, 1536, 940]) {
        got.extend(rx.gather(addrs, lens, used));
    }
    assert_eq!(got[..NET_HDR_LEN], plain_header(3).to_bytes());
    assert_eq!(got[NET_HDR_LEN..], f[..]);
    assert_eq!(h.rx_buffers_held(), 1);
    // The next frame goes into the buffer left over.
    peer.send(&frame(100, 6)).unwrap();
    h.process_rx(&mut rx.queue, ram.memory()).unwrap();
    assert_eq!(rx.used(3), (4, 112));
}

#[test]
fn a_frame_waits_for_buffers_and_the_backend_is_left_alone() {
    let ram = ram();
    let (mut h, peer) = handler(plain_features(), false);
    let mut rx = TestQueue::rx(ram.memory());
    let f = frame(3000, 7);
    peer.send(&f).unwrap();
    peer.send(&frame(80, 8)).unwrap();
    assert!(!h.process_rx(&mut rx.queue, ram.memory()).unwrap());
    assert_eq!(h.rx_wait(), Some(RxWait::Buffers));
    // One buffer is not enough for 3012 bytes: still waiting, nothing used.
    rx.post_rx(&[2048]);
    assert!(!h.process_rx(&mut rx.queue, ram.memory()).unwrap());
    assert_eq!(h.rx_wait(), Some(RxWait::Buffers));
    assert_eq!(rx.used_idx(), 0);
    rx.post_rx(&[2048]);
    rx.post_rx(&[2048]);
    assert!(h.process_rx(&mut rx.queue, ram.memory()).unwrap());
    assert_eq!(h.rx_wait(), None);
    assert_eq!(rx.all_used(), [(0, 2048), (1, 964), (2, 92)]);
    let st = stats(&h);
    assert_eq!((st.rx_frames, st.rx_no_buffers, st.rx_dropped), (2, 2, 0));
}

#[test]
fn without_mergeable_buffers_a_frame_needs_one_buffer() {
    let ram = ram();
    let (mut h, peer) = handler(no_mrg(plain_features()), false);
    let mut rx = TestQueue::rx(ram.memory());
    let (_, small) = rx.post_rx(&[1000]);
    let (_, big) = rx.post_rx(&[512, 1024, 512]);
    // Too big for the first buffer: dropped, the buffer kept for the next frame.
    peer.send(&frame(1500, 1)).unwrap();
    peer.send(&frame(900, 2)).unwrap();
    peer.send(&frame(1500, 3)).unwrap();
    h.process_rx(&mut rx.queue, ram.memory()).unwrap();
    assert_eq!(rx.all_used(), [(0, 912), (1, 1512)]);
    let got = rx.read_guest(small[0], 912);
    assert_eq!(got[..NET_HDR_LEN], plain_header(1).to_bytes());
    assert_eq!(got[NET_HDR_LEN..], frame(900, 2)[..]);
    assert_eq!(rx.gather(&big, &[512, 1024, 512], 1512)[NET_HDR_LEN..], frame(1500, 3)[..]);
    let st = stats(&h);
    assert_eq!((st.rx_frames, st.rx_dropped), (2, 1));
}

#[test]
fn rx_headers_from_the_host_are_fitted_to_the_guest() {
    let ram = ram();
    // The guest takes checksum offload but no TSO.
    let features = plain_features() | 1 << VIRTIO_NET_F_GUEST_CSUM;
    let (mut h, peer) = handler(features, true);
    let mut rx = TestQueue::rx(ram.memory());
    let (_, a) = rx.post_rx(&[2048]);
    rx.post_rx(&[2048]);
    let partial = NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        csum_start: 34,
        csum_offset: 16,
        ..NetHeader::default()
    };
    let tso = NetHeader { gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8, gso_size: 1448, ..partial };
    let mut wire = tso.to_bytes().to_vec();
    wire.extend(frame(3000, 1));
    peer.send(&wire).unwrap();
    let mut wire = partial.to_bytes().to_vec();
    wire.extend(frame(200, 2));
    peer.send(&wire).unwrap();
    h.process_rx(&mut rx.queue, ram.memory()).unwrap();
    // The TSO frame is dropped; the partial-checksum one arrives with its header.
    assert_eq!(rx.all_used(), [(0, 212)]);
    let got = rx.read_guest(a[0], 212);
    assert_eq!(got[..NET_HDR_LEN], NetHeader { num_buffers: 1, ..partial }.to_bytes());
    assert_eq!(stats(&h).rx_dropped, 1);
}

#[test]
fn offloads_follow_the_guest_features() {
    assert_eq!(Offloads::from_features(plain_features()), Offloads::default());
    assert_eq!(
        Offloads::from_features(all_features()),
        Offloads { csum: true, tso4: true, tso6: true }
    );
    // TSO without checksum offload is not usable.
    let f = plain_features() | 1 << VIRTIO_NET_F_GUEST_TSO4;
    assert_eq!(Offloads::from_features(f), Offloads::default());
}

#[test]
fn malformed_tx_chains_are_dropped_and_counted() {
    let ram = ram();
    let (mut h, peer) = handler(plain_features(), false);
    let mut tx = TestQueue::tx(ram.memory());
    let hdr = NetHeader::default().to_bytes();
    let a = tx.alloc(4096);
    tx.write_guest(a, &hdr);
    tx.write_guest(a + NET_HDR_LEN as u64, &frame(100, 1));
    let past_ram = RAM_SIZE - 8;
    let cases: Vec<(&str, Vec<RawDesc>)> = vec![
        ("no room for the header", vec![(a, 10, R, 0)]),
        ("header but no frame", vec![(a, NET_HDR_LEN as u32 + 4, R, 0)]),
        ("a writable descriptor", vec![(a, 12, R | N, 1), (a + 12, 100, W, 0)]),
        ("buffer past guest memory", vec![(a, 12, R | N, 1), (past_ram, 100, R, 0)]),
        ("address overflow", vec![(u64::MAX - 4, 112, R, 0)]),
        ("a loop", vec![(a, 12, R | N, 1), (a + 12, 100, R | N, 0)]),
        ("a link past the table", vec![(a, 12, R | N, 1000)]),
        ("too large", vec![(a, 70_000, R, 0)]),
        ("a self loop", vec![(a, 112, R | N, 0)]),
    ];
    for (_, descs) in &cases {
        tx.add_raw(descs, 0);
    }
    // A head past the queue size in the avail ring.
    tx.push_avail(200);
    tx.send(&NetHeader::default(), &frame(64, 2), &[]);
    assert!(h.process_tx(&mut tx.queue, ram.memory()).unwrap());
    assert_eq!(recv(&peer), frame(64, 2));
    assert!(nothing_waiting(&peer));
    let st = stats(&h);
    assert_eq!((st.tx_frames, st.tx_malformed), (1, cases.len() as u64 + 1));
    // Every chain with a real head went back to the guest.
    assert_eq!(tx.used_idx() as usize, cases.len() + 1);
}

#[test]
fn malformed_rx_chains_go_back_unused() {
    let ram = ram();
    let (mut h, peer) = handler(plain_features(), false);
    let mut rx = TestQueue::rx(ram.memory());
    let a = rx.alloc(8192);
    let cases: Vec<Vec<RawDesc>> = vec![
        vec![(a, 2048, R, 0)],                                 // device-readable
        vec![(a, 8, W, 0)],                                    // no room for the header
        vec![(a, 1024, W | N, 1), (a + 1024, 100, R, 0)],      // a readable piece
        vec![(RAM_SIZE - 100, 2048, W, 0)],                    // past guest memory
        vec![(a, 1024, W | N, 1), (a + 1024, 1024, W | N, 0)], // a loop
        vec![(a, 1024, W | N, 999)],                           // a link past the table
    ];
    for descs in &cases {
        rx.add_raw(descs, 0);
    }
    rx.push_avail(QUEUE_SIZE + 3);
    let (good, addrs) = rx.post_rx(&[2048]);
    peer.send(&frame(500, 4)).unwrap();
    assert!(h.process_rx(&mut rx.queue, ram.memory()).unwrap());
    let used = rx.all_used();
    assert_eq!(used.len(), cases.len() + 1);
    assert!(used[..cases.len()].iter().all(|&(_, len)| len == 0), "{used:?}");
    assert_eq!(used[cases.len()], (u32::from(good), 512));
    assert_eq!(rx.read_guest(addrs[0], 512)[NET_HDR_LEN..], frame(500, 4)[..]);
    let st = stats(&h);
    assert_eq!((st.rx_frames, st.rx_malformed), (1, cases.len() as u64 + 1));
}

#[test]
fn short_frames_from_the_wire_are_dropped() {
    let ram = ram();
    let (mut h, peer) = handler(plain_features(), true);
    let mut rx = TestQueue::rx(ram.memory());
    rx.post_rx(&[2048]);
    peer.send(&[0u8; 5]).unwrap(); // not even a header
    peer.send(&[0u8; NET_HDR_LEN + 3]).unwrap(); // a header and no Ethernet header
    let mut ok = NetHeader::default().to_bytes().to_vec();
    ok.extend(frame(60, 1));
    peer.send(&ok).unwrap();
    h.process_rx(&mut rx.queue, ram.memory()).unwrap();
    assert_eq!(rx.all_used(), [(0, 72)]);
    assert_eq!(stats(&h).rx_dropped, 2);
}

#[test]
fn interrupts_follow_the_drivers_suppression() {
    let ram = ram();
    let (mut h, _peer) = handler(plain_features(), false);
    let mut tx = TestQueue::tx(ram.memory());
    tx.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
    tx.send(&NetHeader::default(), &frame(60, 1), &[]);
    assert!(!h.process_tx(&mut tx.queue, ram.memory()).unwrap());
    assert_eq!(tx.used_idx(), 1);

    // EVENT_IDX: interrupt only when the used index passes used_event.
    let (mut h, _peer) = handler(with_event_idx(plain_features()), false);
    let mut tx = TestQueue::tx(ram.memory()).event_idx();
    tx.set_used_event(2);
    tx.send(&NetHeader::default(), &frame(60, 1), &[]);
    tx.send(&NetHeader::default(), &frame(60, 2), &[]);
    assert!(!h.process_tx(&mut tx.queue, ram.memory()).unwrap(), "used 0..2, event at 2");
    tx.send(&NetHeader::default(), &frame(60, 3), &[]);
    assert!(h.process_tx(&mut tx.queue, ram.memory()).unwrap(), "used passes 2");
}

#[test]
fn event_idx_rx_still_delivers() {
    let ram = ram();
    let (mut h, peer) = handler(with_event_idx(plain_features()), false);
    let mut rx = TestQueue::rx(ram.memory()).event_idx();
    rx.post_rx(&[2048]);
    peer.send(&frame(60, 1)).unwrap();
    assert!(h.process_rx(&mut rx.queue, ram.memory()).unwrap());
    assert_eq!(rx.all_used(), [(0, 72)]);
}

#[test]
fn the_rate_limiter_throttles_tx() {
    let ram = ram();
    let (backend, peer) = DatagramBackend::pair(false).unwrap();
    // Two frames per 200 ms.
    let rl =
        RateLimiter::new(None, Some(BucketConfig::new(2, Duration::from_millis(200)))).unwrap();
    let mut h = NetQueueHandler::new(Box::new(backend), plain_features())
        .with_rate_limiters(None, Some(rl));
    let mut tx = TestQueue::tx(ram.memory());
    for i in 0..5 {
        tx.send(&NetHeader::default(), &frame(60, i), &[]);
    }
    h.process_tx(&mut tx.queue, ram.memory()).unwrap();
    assert_eq!(tx.used_idx(), 2);
    let wait = h.tx_throttled_for().expect("throttled");
    assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
    // Too early: nothing more.
    h.process_tx(&mut tx.queue, ram.memory()).unwrap();
    assert_eq!(tx.used_idx(), 2);
    std::thread::sleep(Duration::from_millis(250));
    h.process_tx(&mut tx.queue, ram.memory()).unwrap();
    assert_eq!(tx.used_idx(), 4);
    for i in 0..4 {
        assert_eq!(recv(&peer), frame(60, i), "frames stay in order");
    }
    assert!(stats(&h).tx_throttled >= 2);
}

#[test]
fn the_rate_limiter_throttles_rx() {
    let ram = ram();
    let (backend, peer) = DatagramBackend::pair(false).unwrap();
    // 1000 bytes per 200 ms.
    let rl =
        RateLimiter::new(Some(BucketConfig::new(1000, Duration::from_millis(200))), None).unwrap();
    let mut h = NetQueueHandler::new(Box::new(backend), plain_features())
        .with_rate_limiters(Some(rl), None);
    let mut rx = TestQueue::rx(ram.memory());
    for _ in 0..4 {
        rx.post_rx(&[2048]);
    }
    for i in 0..3 {
        peer.send(&frame(600, i)).unwrap();
    }
    h.process_rx(&mut rx.queue, ram.memory()).unwrap();
    assert_eq!(rx.used_idx(), 1);
    let Some(RxWait::RateLimit(wait)) = h.rx_wait() else { panic!("{:?}", h.rx_wait()) };
    assert!(wait <= Duration::from_millis(200), "{wait:?}");
    std::thread::sleep(wait + Duration::from_millis(10));
    h.process_rx(&mut rx.queue, ram.memory()).unwrap();
    assert_eq!(rx.used_idx(), 2);
    assert_eq!(stats(&h).rx_frames, 2);
    assert!(stats(&h).rx_throttled >= 2);
}

#[test]
fn a_guest_that_posts_the_same_buffer_forever_is_bounded() {
    let ram = ram();
    let (mut h, _peer) = handler(plain_features(), false);
    let mut rx = TestQueue::rx(ram.memory());
    let (head, _) = rx.post_rx(&[2048]);
    for _ in 0..(QUEUE_SIZE - 1) {
        rx.push_avail(head);
    }
    h.process_rx(&mut rx.queue, ram.memory()).unwrap();
    assert_eq!(h.rx_buffers_held(), usize::from(QUEUE_SIZE));
    for _ in 0..10 {
        rx.push_avail(head);
    }
    h.process_rx(&mut rx.queue, ram.memory()).unwrap();
    assert_eq!(h.rx_buffers_held(), usize::from(QUEUE_SIZE), "never more than a queue's worth");
}

#[test]
fn a_frame_larger_than_every_buffer_is_dropped() {
    let ram = ram();
    let (mut h, peer) = handler(plain_features(), false);
    let mut rx = TestQueue::rx(ram.memory());
    for _ in 0..QUEUE_SIZE {
        rx.post_rx(&[64]);
    }
    // 64 buffers of 64 bytes hold 4096 bytes; the frame needs 9012.
    peer.send(&frame(9000, 1)).unwrap();
    peer.send(&frame(100, 2)).unwrap();
    h.process_rx(&mut rx.queue, ram.memory()).unwrap();
    assert_eq!(stats(&h).rx_dropped, 1);
    assert_eq!(stats(&h).rx_frames, 1);
    assert_eq!(rx.all_used(), [(0, 64), (1, 48)]);
}

#[test]
fn a_link_that_is_down_drops_frames_both_ways() {
    let ram = ram();
    let (backend, peer) = DatagramBackend::pair(false).unwrap();
    let link = Arc::new(AtomicBool::new(false));
    let mut h = NetQueueHandler::new(Box::new(backend), plain_features()).with_link(link.clone());
    let mut tx = TestQueue::tx(ram.memory());
    let mut rx = TestQueue::rx(ram.memory());
    rx.post_rx(&[2048]);
    tx.send(&NetHeader::default(), &frame(60, 1), &[]);
    peer.send(&frame(60, 2)).unwrap();
    h.process_tx(&mut tx.queue, ram.memory()).unwrap();
    h.process_rx(&mut rx.queue, ram.memory()).unwrap();
    assert_eq!(tx.used_idx(), 1, "the TX chain goes back");
    assert_eq!(rx.used_idx(), 0, "no frame for the guest");
    assert!(nothing_waiting(&peer));
    assert_eq!(stats(&h).link_down_drops, 2);
    // Cable back in.
    link.store(true, Ordering::Relaxed);
    tx.send(&NetHeader::default(), &frame(60, 3), &[]);
    peer.send(&frame(60, 4)).unwrap();
    h.process_tx(&mut tx.queue, ram.memory()).unwrap();
    h.process_rx(&mut rx.queue, ram.memory()).unwrap();
    assert_eq!(recv(&peer), frame(60, 3));
    assert_eq!(rx.used_idx(), 1);
    let st = stats(&h);
    assert_eq!((st.tx_frames, st.rx_frames, st.link_down_drops), (1, 1, 2));
}

#[test]
fn a_queue_that_is_not_ready_is_left_alone() {
    let ram = ram();
    let (mut h, peer) = handler(plain_features(), false);
    let mut tx = TestQueue::tx(ram.memory());
    let mut rx = TestQueue::rx(ram.memory());
    tx.send(&NetHeader::default(), &frame(60, 1), &[]);
    rx.post_rx(&[2048]);
    peer.send(&frame(60, 2)).unwrap();
    tx.queue.set_ready(false);
    rx.queue.set_ready(false);
    assert!(!h.process_tx(&mut tx.queue, ram.memory()).unwrap());
    assert!(!h.process_rx(&mut rx.queue, ram.memory()).unwrap());
    assert_eq!((tx.used_idx(), rx.used_idx()), (0, 0));
    assert!(nothing_waiting(&peer));
}
