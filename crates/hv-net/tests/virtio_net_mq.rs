//! Multiqueue virtio-net: the control queue's requests (well-formed, refused, malformed), a
//! two-pair device whose second pair the driver switches on with VQ_PAIRS_SET, a driver
//! without multiqueue on a multiqueue device, and a multiqueue TAP's queues detached and
//! attached in a namespace.

mod virtio_net_common;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hv_core::virtio::{ActivateError, Activation, ActiveQueue, Interrupt, VirtioDevice};
use hv_net::tap::Tap;
use hv_net::virtio_net::{
    CtrlQueueHandler, DatagramBackend, NetBackend, NetConfig, NetDeviceError, NetHeader,
    NetMetrics, TapBackend, VirtioNet, NET_HDR_LEN,
};
use hv_net::MacAddr;
use hv_test_support::netns::NetNs;
use virtio_bindings::bindings::virtio_net::*;
use virtio_net_common::*;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

const OK: u8 = VIRTIO_NET_OK as u8;
const ERR: u8 = VIRTIO_NET_ERR as u8;

/// Queue `i` of a device: rings at `0x4000 * i`, buffers from `1 MiB * (i + 1)`.
fn queue(mem: &hv_mem::GuestMemory, i: u64) -> TestQueue<'_> {
    TestQueue::new(mem, 0x4000 * i, 0x10_0000 * (i + 1))
}

/// Adds a control request `class, command, data` and returns the ack address (preset 0xff).
fn ctrl(q: &mut TestQueue, class: u32, cmd: u32, data: &[u8]) -> u64 {
    let out = q.alloc(2 + data.len() as u64);
    let mut bytes = vec![class as u8, cmd as u8];
    bytes.extend_from_slice(data);
    q.write_guest(out, &bytes);
    let ack = q.alloc(1);
    q.write_guest(ack, &[0xff]);
    q.add_chain(&[(out, 2, R), (out + 2, data.len() as u32, R), (ack, 1, W)]);
    ack
}

fn mq_features() -> u64 {
    plain_features() | 1 << VIRTIO_NET_F_MQ | 1 << VIRTIO_NET_F_CTRL_VQ
}

#[test]
fn control_requests_are_answered() {
    let ram = ram();
    let mut q = queue(ram.memory(), 0);
    let metrics = Arc::new(NetMetrics::default());
    let mut h = CtrlQueueHandler::new(4, metrics.clone());
    let set = |n: u16| n.to_le_bytes();
    let acks = [
        ctrl(&mut q, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &set(3)),
        ctrl(&mut q, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &set(0)),
        ctrl(&mut q, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &set(5)),
        ctrl(&mut q, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[1]),
        ctrl(&mut q, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &[]),
    ];
    // Malformed: no ack byte; readable after writable; a buffer past guest memory.
    let a = q.alloc(64);
    q.write_guest(a, &[4, 0, 2, 0]);
    q.add_chain(&[(a, 4, R)]);
    q.add_chain(&[(a, 2, R), (a + 8, 1, W), (a + 2, 2, R)]);
    q.add_chain(&[(a, 2, R), (RAM_SIZE - 1, 2, R), (a + 8, 1, W)]);
    let mut applied = Vec::new();
    assert!(h.process(&mut q.queue, ram.memory(), &mut |n| applied.push(n)).unwrap());
    assert_eq!(applied, [3]);
    assert_eq!(acks.map(|a| q.read_guest(a, 1)[0]), [OK, ERR, ERR, ERR, ERR]);
    let used = q.all_used();
    assert_eq!(used.len(), 8);
    assert!(used[..5].iter().all(|&(_, len)| len == 1), "{used:?}");
    assert!(used[5..].iter().all(|&(_, len)| len == 0), "{used:?}");
    assert_eq!(metrics.snapshot().ctrl_malformed, 3);
}

fn two_pairs() -> (VirtioNet, hv_net::virtio_net::NetHandle, Vec<UnixDatagram>) {
    let mut backends: Vec<Box<dyn NetBackend>> = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..2 {
        let (b, p) = DatagramBackend::pair(false).unwrap();
        p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        backends.push(Box::new(b));
        peers.push(p);
    }
    let mut cfg = NetConfig::new(MacAddr([0x52, 0x54, 0, 0, 0x4d, 0x51]));
    cfg.queue_size = QUEUE_SIZE;
    let (dev, handle) = VirtioNet::multi_queue(cfg, backends).unwrap();
    (dev, handle, peers)
}

/// Activates `dev` with queues `0..n` set up in guest memory; returns the test queues and
/// their kick eventfds.
fn activate<'a>(
    dev: &mut VirtioNet,
    mem: &'a hv_mem::GuestMemory,
    features: u64,
    n: u16,
) -> Result<(Vec<TestQueue<'a>>, Vec<EventFd>), ActivateError> {
    activate_some(dev, mem, features, n, &(0..n).collect::<Vec<_>>())
}

/// Like [`activate`], but only the queues in `ready` are handed to the device (the driver
/// left the others not ready); the test queues of all `n` are returned.
fn activate_some<'a>(
    dev: &mut VirtioNet,
    mem: &'a hv_mem::GuestMemory,
    features: u64,
    n: u16,
    ready: &[u16],
) -> Result<(Vec<TestQueue<'a>>, Vec<EventFd>), ActivateError> {
    let mut tqs = Vec::new();
    let mut kicks = Vec::new();
    let mut queues = Vec::new();
    for i in 0..n {
        let mut tq = queue(mem, u64::from(i));
        let q = std::mem::replace(&mut tq.queue, Queue::new(QUEUE_SIZE).unwrap());
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        if ready.contains(&i) {
            queues.push(ActiveQueue { index: i, queue: q, notify: kick.try_clone().unwrap() });
        }
        tqs.push(tq);
        kicks.push(kick);
    }
    let interrupt = Interrupt::disconnected().unwrap();
    dev.activate(Activation { mem: mem.clone(), acked_features: features, queues, interrupt })?;
    Ok((tqs, kicks))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn the_driver_switches_the_second_pair_on() {
    let ram = ram();
    let (mut dev, handle, peers) = two_pairs();
    assert_eq!(dev.queue_max_sizes().len(), 5);
    let f = dev.features();
    assert_ne!(f & (1 << VIRTIO_NET_F_MQ), 0);
    assert_ne!(f & (1 << VIRTIO_NET_F_CTRL_VQ), 0);
    let mut pairs = [0u8; 2];
    dev.read_config(8, &mut pairs);
    assert_eq!(pairs, [2, 0]);

    let (mut q, kicks) = activate(&mut dev, ram.memory(), mq_features(), 5).unwrap();
    assert_eq!(handle.active_pairs(), 1);
    q[2].post_rx(&[2048]);
    kicks[2].write(1).unwrap();
    peers[1].send(&frame(100, 1)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(q[2].used_idx(), 0, "a pair that is off does not receive");

    let ack =
        ctrl(&mut q[4], VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &2u16.to_le_bytes());
    kicks[4].write(1).unwrap();
    wait_until("the ack", || q[4].used_idx() == 1);
    assert_eq!(q[4].read_guest(ack, 1), [OK]);
    assert_eq!(handle.active_pairs(), 2);
    wait_until("the frame on pair 1", || q[2].used_idx() == 1);
    assert_eq!(q[2].used(0).1, 112);

    // TX on each pair goes to its own backend.
    q[3].send(&NetHeader::default(), &frame(60, 3), &[]);
    kicks[3].write(1).unwrap();
    q[1].send(&NetHeader::default(), &frame(60, 1), &[]);
    kicks[1].write(1).unwrap();
    let mut buf = [0u8; 2048];
    let n = peers[1].recv(&mut buf).unwrap();
    assert_eq!(buf[..n], frame(60, 3)[..]);
    let n = peers[0].recv(&mut buf).unwrap();
    assert_eq!(buf[..n], frame(60, 1)[..]);

    // Back to one pair.
    let ack =
        ctrl(&mut q[4], VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &1u16.to_le_bytes());
    kicks[4].write(1).unwrap();
    wait_until("the second ack", || q[4].used_idx() == 2);
    assert_eq!(q[4].read_guest(ack, 1), [OK]);
    assert_eq!(handle.active_pairs(), 1);
    dev.reset();
    assert_eq!(handle.active_pairs(), 0);
}

#[test]
fn a_driver_without_multiqueue_uses_one_pair() {
    let ram = ram();
    let (mut dev, handle, peers) = two_pairs();
    // Without MQ only queues 0 and 1 are needed.
    let (mut q, kicks) = activate(&mut dev, ram.memory(), plain_features(), 2).unwrap();
    assert_eq!(handle.active_pairs(), 1);
    let (_, addrs) = q[0].post_rx(&[2048]);
    kicks[0].write(1).unwrap();
    peers[0].send(&frame(64, 7)).unwrap();
    wait_until("the frame", || q[0].used_idx() == 1);
    assert_eq!(q[0].read_guest(addrs[0], 76)[NET_HDR_LEN..], frame(64, 7)[..]);
    dev.reset();
    // With MQ but the control queue not ready, the driver cannot switch pairs on: it stays on
    // pair 0, and pair 1 does not receive.
    let (mut q, kicks) = activate(&mut dev, ram.memory(), mq_features(), 4).unwrap();
    assert_eq!(handle.active_pairs(), 1);
    q[2].post_rx(&[2048]);
    kicks[2].write(1).unwrap();
    q[0].post_rx(&[2048]);
    kicks[0].write(1).unwrap();
    peers[1].send(&frame(100, 1)).unwrap();
    peers[0].send(&frame(100, 2)).unwrap();
    wait_until("the frame on pair 0", || q[0].used_idx() == 1);
    assert_eq!(q[2].used_idx(), 0, "pair 1 stays off without a control queue");
    dev.reset();
    let (mut q, kicks) = activate(&mut dev, ram.memory(), mq_features(), 5).unwrap();
    q[3].send(&NetHeader::default(), &frame(60, 9), &[]);
    kicks[3].write(1).unwrap();
    let mut buf = [0u8; 128];
    let n = peers[1].recv(&mut buf).unwrap();
    assert_eq!(buf[..n], frame(60, 9)[..]);
}

#[test]
fn pairs_run_with_the_queues_the_driver_made_ready() {
    let ram = ram();
    let (mut dev, handle, peers) = two_pairs();
    // Pair 0 transmit-only (queue 0 not ready), pair 1 receive-only (queue 3 not ready), and
    // the control queue.
    let (mut q, kicks) = activate_some(&mut dev, ram.memory(), mq_features(), 5, &[1, 2, 4])
        .expect("a driver may leave queues not ready");
    assert!(dev.is_active());
    q[1].send(&NetHeader::default(), &frame(80, 1), &[]);
    kicks[1].write(1).unwrap();
    let mut buf = [0u8; 2048];
    let n = peers[0].recv(&mut buf).unwrap();
    assert_eq!(buf[..n], frame(80, 1)[..], "pair 0 transmits without an RX queue");
    wait_until("the TX chain back", || q[1].used_idx() == 1);

    let ack =
        ctrl(&mut q[4], VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &2u16.to_le_bytes());
    kicks[4].write(1).unwrap();
    wait_until("the ack", || q[4].used_idx() == 1);
    assert_eq!(q[4].read_guest(ack, 1), [OK]);
    assert_eq!(handle.active_pairs(), 2);
    let (_, addrs) = q[2].post_rx(&[2048]);
    kicks[2].write(1).unwrap();
    peers[1].send(&frame(90, 2)).unwrap();
    wait_until("the frame on pair 1", || q[2].used_idx() == 1);
    assert_eq!(q[2].read_guest(addrs[0], 102)[NET_HDR_LEN..], frame(90, 2)[..]);
    // Frames for pair 0, which has no RX queue, are left to the backend, not read.
    peers[0].send(&frame(70, 3)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(handle.stats().rx_frames, 1);
    assert_eq!(handle.stats().rx_no_buffers, 0);

    // After a reset every backend is back in pair order for a full activation.
    dev.reset();
    let (mut q, kicks) = activate(&mut dev, ram.memory(), mq_features(), 5).unwrap();
    q[3].send(&NetHeader::default(), &frame(60, 4), &[]);
    kicks[3].write(1).unwrap();
    q[1].send(&NetHeader::default(), &frame(60, 5), &[]);
    kicks[1].write(1).unwrap();
    let n = peers[1].recv(&mut buf).unwrap();
    assert_eq!(buf[..n], frame(60, 4)[..]);
    let n = peers[0].recv(&mut buf).unwrap();
    assert_eq!(buf[..n], frame(60, 5)[..]);

    // A pair with no queue ready keeps its backend idle; the other pair and the control
    // queue run, and switching to two pairs is harmless.
    dev.reset();
    let (mut q, kicks) =
        activate_some(&mut dev, ram.memory(), mq_features(), 5, &[0, 1, 4]).unwrap();
    let ack =
        ctrl(&mut q[4], VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &2u16.to_le_bytes());
    kicks[4].write(1).unwrap();
    wait_until("the ack", || q[4].used_idx() == 1);
    assert_eq!(q[4].read_guest(ack, 1), [OK]);
    q[1].send(&NetHeader::default(), &frame(60, 6), &[]);
    kicks[1].write(1).unwrap();
    let n = peers[0].recv(&mut buf).unwrap();
    assert_eq!(buf[..n], frame(60, 6)[..]);
    // The idle backend is still pair 1's at the next full activation.
    dev.reset();
    let (mut q, kicks) = activate(&mut dev, ram.memory(), mq_features(), 5).unwrap();
    q[3].send(&NetHeader::default(), &frame(60, 7), &[]);
    kicks[3].write(1).unwrap();
    let n = peers[1].recv(&mut buf).unwrap();
    assert_eq!(buf[..n], frame(60, 7)[..]);
    dev.reset();
}

#[test]
fn backend_counts_are_checked() {
    let cfg = NetConfig::new(MacAddr([2, 0, 0, 0, 0, 1]));
    assert_eq!(
        VirtioNet::multi_queue(cfg.clone(), Vec::new()).err(),
        Some(NetDeviceError::Backends(0))
    );
    let many: Vec<Box<dyn NetBackend>> = (0..17)
        .map(|_| Box::new(DatagramBackend::pair(false).unwrap().0) as Box<dyn NetBackend>)
        .collect();
    assert_eq!(VirtioNet::multi_queue(cfg, many).err(), Some(NetDeviceError::Backends(17)));
}

#[test]
fn a_multiqueue_tap_detaches_and_attaches_queues() {
    hv_test_support::require!(hv_test_support::is_root(), "network namespaces need root");
    hv_test_support::require!(hv_test_support::netns::have_netns_tools(), "ip is not installed");
    NetNs::new("hvt-vnmq").run(|| {
        let tap = Tap::builder("hvvnmq0").queues(2).open().unwrap();
        let mut backends = TapBackend::per_queue(tap).unwrap();
        assert_eq!(backends.len(), 2);
        assert_eq!(backends[1].index(), 1);
        assert!(backends.iter().all(|b| b.has_vnet_hdr()));
        backends[1].set_enabled(false).unwrap();
        backends[1].set_enabled(false).unwrap();
        backends[1].set_enabled(true).unwrap();
        let boxed: Vec<Box<dyn NetBackend>> =
            backends.into_iter().map(|b| Box::new(b) as Box<dyn NetBackend>).collect();
        let (dev, _) =
            VirtioNet::multi_queue(NetConfig::new(MacAddr([2, 0, 0, 0, 0, 2])), boxed).unwrap();
        assert_ne!(dev.features() & (1 << VIRTIO_NET_F_HOST_TSO4), 0, "offloads over a TAP");
    });
}
