//! The virtio-net device through the `VirtioDevice` trait, without KVM: configuration space,
//! features, activation with a worker thread over queue eventfds and a datagram-socket
//! backend, the link switch, throttling timers, reset and re-activation.

mod virtio_net_common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use hv_core::rate_limiter::{BucketConfig, RateLimiter};
use hv_core::virtio::{
    Activation, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING,
};
use hv_net::virtio_net::{
    device_features, DatagramBackend, NetConfig, NetHandle, NetHeader, VirtioNet, NET_HDR_LEN,
};
use hv_net::MacAddr;
use virtio_bindings::bindings::virtio_net::*;
use virtio_net_common::*;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01]);

fn device(limit_tx: bool) -> (VirtioNet, NetHandle, UnixDatagram) {
    let (backend, peer) = DatagramBackend::pair(false).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut cfg = NetConfig::new(MAC);
    cfg.queue_size = QUEUE_SIZE;
    let (dev, handle) = VirtioNet::new(cfg, Box::new(backend));
    let dev = if limit_tx {
        let rl = RateLimiter::new(None, Some(BucketConfig::new(2, Duration::from_millis(100))));
        dev.with_rate_limiters(None, Some(rl.unwrap()))
    } else {
        dev
    };
    (dev, handle, peer)
}

struct Driver<'a> {
    rx: TestQueue<'a>,
    tx: TestQueue<'a>,
    rx_kick: EventFd,
    tx_kick: EventFd,
    interrupt: Interrupt,
}

/// Sets up both queues and activates `dev` with `features`.
fn activate<'a>(dev: &mut VirtioNet, mem: &'a hv_mem::GuestMemory, features: u64) -> Driver<'a> {
    let mut rx = TestQueue::rx(mem);
    let mut tx = TestQueue::tx(mem);
    let take = |q: &mut TestQueue| std::mem::replace(&mut q.queue, Queue::new(QUEUE_SIZE).unwrap());
    let rx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let tx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Interrupt::disconnected().unwrap();
    let queues = vec![
        ActiveQueue { index: 0, queue: take(&mut rx), notify: rx_kick.try_clone().unwrap() },
        ActiveQueue { index: 1, queue: take(&mut tx), notify: tx_kick.try_clone().unwrap() },
    ];
    let a = Activation {
        mem: mem.clone(),
        acked_features: features,
        queues,
        interrupt: interrupt.clone(),
    };
    dev.activate(a).expect("activate");
    Driver { rx, tx, rx_kick, tx_kick, interrupt }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn recv(peer: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let n = peer.recv(&mut buf).expect("a frame on the wire");
    buf.truncate(n);
    buf
}

#[test]
fn config_space_and_features() {
    let (dev, handle, _peer) = device(false);
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes(), [QUEUE_SIZE, QUEUE_SIZE]);
    let f = dev.features();
    assert_eq!(f, device_features(dev.config(), false));
    for bit in [VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MRG_RXBUF] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    // A datagram backend without the header cannot take offloads.
    assert_eq!(f & (1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4), 0);
    let mut b = [0u8; 10];
    dev.read_config(0, &mut b);
    assert_eq!(b, [0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01, 1, 0, 1, 0]);
    handle.set_link_up(false);
    let mut s = [0u8; 2];
    dev.read_config(6, &mut s);
    assert_eq!(s, [0, 0]);
    assert!(!handle.link_up());
}

#[test]
fn the_worker_moves_frames_both_ways() {
    let ram = ram();
    let (mut dev, handle, peer) = device(false);
    let mut d = activate(&mut dev, ram.memory(), plain_features());
    assert!(dev.is_active());

    // Host to guest: the backend wakes the worker.
    let (_, addrs) = d.rx.post_rx(&[2048]);
    d.rx_kick.write(1).unwrap();
    peer.send(&frame(300, 1)).unwrap();
    wait_until("an RX frame", || d.rx.used_idx() == 1);
    assert_eq!(d.rx.used(0), (0, 312));
    assert_eq!(d.rx.read_guest(addrs[0], 312)[NET_HDR_LEN..], frame(300, 1)[..]);
    assert_ne!(d.interrupt.status() & VIRTIO_MMIO_INT_VRING, 0);

    // Guest to host: a kick.
    d.tx.send(&NetHeader::default(), &frame(1000, 2), &[]);
    d.tx_kick.write(1).unwrap();
    assert_eq!(recv(&peer), frame(1000, 2));
    wait_until("the TX chain back", || d.tx.used_idx() == 1);

    // The link goes down: a configuration interrupt.
    handle.set_link_up(false);
    assert_ne!(d.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    let st = handle.stats();
    assert_eq!((st.rx_frames, st.tx_frames), (1, 1));
}

#[test]
fn without_rx_buffers_the_worker_stops_polling_the_backend() {
    let ram = ram();
    let (mut dev, handle, peer) = device(false);
    let mut d = activate(&mut dev, ram.memory(), plain_features());
    peer.send(&frame(100, 1)).unwrap();
    peer.send(&frame(100, 2)).unwrap();
    wait_until("the worker to notice", || handle.stats().rx_no_buffers >= 1);
    // A level-triggered backend would wake the worker in a loop, counting each time.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(handle.stats().rx_no_buffers, 1);
    d.rx.post_rx(&[2048]);
    d.rx.post_rx(&[2048]);
    d.rx_kick.write(1).unwrap();
    wait_until("both frames", || d.rx.used_idx() == 2);
    assert_eq!(handle.stats().rx_frames, 2);
}

#[test]
fn a_throttled_queue_resumes_on_its_timer() {
    let ram = ram();
    let (mut dev, handle, peer) = device(true);
    let mut d = activate(&mut dev, ram.memory(), plain_features());
    for i in 0..6 {
        d.tx.send(&NetHeader::default(), &frame(60, i), &[]);
    }
    let start = Instant::now();
    d.tx_kick.write(1).unwrap();
    for i in 0..6 {
        assert_eq!(recv(&peer), frame(60, i));
    }
    // Two frames per 100 ms: the last two leave after about 200 ms, with no further kick.
    assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
    assert!(handle.stats().tx_throttled >= 2);
}

#[test]
fn a_transmit_only_driver_sends_every_frame() {
    let ram = ram();
    let (mut dev, handle, peer) = device(false);
    let mut tx = TestQueue::tx(ram.memory());
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let queue = std::mem::replace(&mut tx.queue, Queue::new(QUEUE_SIZE).unwrap());
    let a = Activation {
        mem: ram.memory().clone(),
        acked_features: plain_features(),
        queues: vec![ActiveQueue { index: 1, queue, notify: kick.try_clone().unwrap() }],
        interrupt: Interrupt::disconnected().unwrap(),
    };
    dev.activate(a).expect("a TX-only driver is legal");
    // A frame for the guest is not read: there is nowhere to put it.
    peer.send(&frame(100, 0)).unwrap();
    // In rounds of 10 chains, so the test's descriptor table never wraps over chains in flight.
    for round in 0..4u8 {
        for i in round * 10..round * 10 + 10 {
            tx.send(&NetHeader::default(), &frame(60 + usize::from(i), i), &[]);
            kick.write(1).unwrap();
        }
        for i in round * 10..round * 10 + 10 {
            assert_eq!(recv(&peer), frame(60 + usize::from(i), i));
        }
        wait_until("the round's TX chains back", || tx.used_idx() == u16::from(round + 1) * 10);
    }
    let st = handle.stats();
    assert_eq!((st.tx_frames, st.rx_frames, st.rx_no_buffers), (40, 0, 0));
}

#[test]
fn reset_gives_the_backend_back_for_the_next_activation() {
    let ram = ram();
    let (mut dev, _handle, peer) = device(false);
    let d = activate(&mut dev, ram.memory(), plain_features());
    drop(d);
    dev.reset();
    assert!(!dev.is_active());
    // A driver that made only the RX queue ready still receives.
    let mut rx = TestQueue::rx(ram.memory());
    let (_, addrs) = rx.post_rx(&[2048]);
    let queue = std::mem::replace(&mut rx.queue, Queue::new(QUEUE_SIZE).unwrap());
    let a = Activation {
        mem: ram.memory().clone(),
        acked_features: plain_features(),
        queues: vec![ActiveQueue { index: 0, queue, notify: EventFd::new(0).unwrap() }],
        interrupt: Interrupt::disconnected().unwrap(),
    };
    dev.activate(a).expect("an RX-only driver is legal");
    peer.send(&frame(200, 8)).unwrap();
    wait_until("the RX-only frame", || rx.used_idx() == 1);
    assert_eq!(rx.read_guest(addrs[0], 212)[NET_HDR_LEN..], frame(200, 8)[..]);
    dev.reset();
    let mut d = activate(&mut dev, ram.memory(), plain_features());
    d.tx.send(&NetHeader::default(), &frame(64, 9), &[]);
    d.tx_kick.write(1).unwrap();
    assert_eq!(recv(&peer), frame(64, 9));
}
