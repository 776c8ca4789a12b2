//! virtio-net across a snapshot, without KVM: the device is quiesced with an RX buffer the
//! driver posted and no frame has used yet; a fresh device restored at the saved positions
//! takes that buffer again and delivers the next frame into it. A device with another MAC
//! refuses the state.

mod virtio_net_common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use hv_core::virtio::{
    Activation, ActiveQueue, DeviceState, Interrupt, QueuePosition, StateError, VirtioDevice,
};
use hv_net::virtio_net::{DatagramBackend, NetConfig, VirtioNet, NET_HDR_LEN};
use hv_net::MacAddr;
use virtio_net_common::*;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xaa, 0xbb, 0x02]);

fn device(mac: MacAddr) -> (VirtioNet, UnixDatagram) {
    let (backend, peer) = DatagramBackend::pair(false).unwrap();
    let mut cfg = NetConfig::new(mac);
    cfg.queue_size = QUEUE_SIZE;
    (VirtioNet::new(cfg, Box::new(backend)).0, peer)
}

/// A device-side queue at the rings of `q`, at `pos` when given.
fn queue_like(q: &Queue, pos: Option<&QueuePosition>) -> Queue {
    let mut c = Queue::new(QUEUE_SIZE).unwrap();
    c.set_size(q.size());
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(q.desc_table());
    c.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    c.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    c.set_used_ring_address(lo, hi);
    c.set_ready(true);
    if let Some(p) = pos {
        c.set_next_avail(p.next_avail);
        c.set_next_used(p.next_used);
    }
    c
}

fn activation(
    mem: &hv_mem::GuestMemory,
    rx: Queue,
    tx: Queue,
    rx_kick: &EventFd,
    tx_kick: &EventFd,
) -> Activation {
    Activation {
        mem: mem.clone(),
        acked_features: plain_features(),
        queues: vec![
            ActiveQueue { index: 0, queue: rx, notify: rx_kick.try_clone().unwrap() },
            ActiveQueue { index: 1, queue: tx, notify: tx_kick.try_clone().unwrap() },
        ],
        interrupt: Interrupt::disconnected().unwrap(),
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_posted_rx_buffer_survives_a_snapshot_and_takes_the_next_frame() {
    let ram = ram();
    let mem = ram.memory();
    let (mut dev, peer) = device(MAC);
    let mut rx = TestQueue::rx(mem);
    let tx = TestQueue::tx(mem);
    let (rx_kick, tx_kick) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
    let a = activation(
        mem,
        queue_like(&rx.queue, None),
        queue_like(&tx.queue, None),
        &rx_kick,
        &tx_kick,
    );
    dev.activate(a).unwrap();

    // Two buffers; one frame uses the first, the device holds the second.
    rx.post_rx(&[2048]);
    let (_, second) = rx.post_rx(&[2048]);
    rx_kick.write(1).unwrap();
    peer.send(&frame(200, 1)).unwrap();
    wait_until("the first frame", || rx.used_idx() == 1);

    let saved = dev.quiesce().expect("quiesce");
    assert!(!dev.is_active());
    let rx_pos = saved.queues.iter().find(|p| p.index == 0).copied().unwrap();
    // The held buffer is given back: the device will take avail entry 1 again.
    assert_eq!((rx_pos.next_avail, rx_pos.next_used), (1, 1));

    // Another MAC is refused.
    let (mut other, _p) = device(MacAddr([2, 0, 0, 0, 0, 9]));
    assert!(matches!(other.restore_state(&saved.state), Err(StateError::BadState { .. })));
    let wrong = DeviceState { version: 7, data: saved.state.data.clone() };
    assert!(dev.restore_state(&wrong).is_err());

    // A fresh device on the same backend's peer takes the state and the positions.
    let (mut restored, peer2) = device(MAC);
    restored.restore_state(&saved.state).unwrap();
    let tx_pos = saved.queues.iter().find(|p| p.index == 1).copied().unwrap();
    let a = activation(
        mem,
        queue_like(&rx.queue, Some(&rx_pos)),
        queue_like(&tx.queue, Some(&tx_pos)),
        &rx_kick,
        &tx_kick,
    );
    restored.activate(a).unwrap();
    peer2.send(&frame(300, 2)).unwrap();
    wait_until("the frame in the held buffer", || rx.used_idx() == 2);
    assert_eq!(rx.used(1), (1, 300 + NET_HDR_LEN as u32));
    assert_eq!(rx.read_guest(second[0], 312)[NET_HDR_LEN..], frame(300, 2)[..]);
}
