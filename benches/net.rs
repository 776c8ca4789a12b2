//! Network path benchmarks: frames through the virtio-net queue handler between guest memory
//! and a backend, one frame per iteration (a kick, the handler's pass, and the peer's send or
//! receive on the wire), for 64-byte and 1500-byte frames.
//!
//! - `net_tx_64b`, `net_tx_1500b`, `net_rx_64b`, `net_rx_1500b`: a Unix datagram socket pair as
//!   the wire (no root needed).
//! - `..._null_batch32`: a backend that takes and makes frames without system calls, so only
//!   the queue handler's own cost per frame is left.
//! - `..._batch32`: 32 frames per kick and handler pass (frames per second); the others move
//!   one frame per kick.
//! - `net_tx_64b_tap`, ..., `net_rx_1500b_tap`: a real TAP with the vnet header inside a
//!   network namespace (root only; skipped otherwise); RX frames are UDP datagrams the
//!   namespace's stack routes out of the TAP, TX frames end in that stack.
//!
//! Run briefly with `cargo bench --bench net -- --warm-up-time 1 --measurement-time 3`.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hv_core::virtio::{Activation, ActiveQueue, Interrupt, VirtioDevice};
use hv_core::vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use hv_mem::vm_memory::{Bytes, GuestAddress};
use hv_mem::{GuestMemory, GuestRam, MemoryConfig};
use hv_net::tap::Tap;
use hv_net::virtio_net::virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use hv_net::virtio_net::virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};
use hv_net::virtio_net::virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use hv_net::virtio_net::virtio_queue::desc::split::Descriptor;
use hv_net::virtio_net::virtio_queue::desc::RawDescriptor;
use hv_net::virtio_net::virtio_queue::{Queue, QueueT};
use hv_net::virtio_net::{
    DatagramBackend, NetBackend, NetConfig, NetQueueHandler, Offloads, TapBackend, VirtioNet,
    NET_HDR_LEN,
};
use hv_net::MacAddr;

const QUEUE_SIZE: u16 = 256;
const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_MRG_RXBUF;
/// TX chain: header at HDR, frame at FRAME; RX buffer at RXBUF.
const HDR: u64 = 0x10_0000;
const FRAME: u64 = 0x10_1000;
const RXBUF: u64 = 0x20_0000;

/// A split queue at `base` (descriptors, avail ring at +0x1000, used ring at +0x2000) whose
/// one chain, at descriptor 0, is made available again on each kick.
struct BenchQueue {
    queue: Queue,
    base: u64,
    avail: u16,
}

impl BenchQueue {
    fn new(mem: &GuestMemory, base: u64, descs: &[Descriptor]) -> Self {
        for (i, d) in descs.iter().enumerate() {
            let at = GuestAddress(base + 16 * i as u64);
            mem.write_obj(RawDescriptor::from(*d), at).unwrap();
        }
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        queue.set_size(QUEUE_SIZE);
        let addr = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = addr(base);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = addr(base + 0x1000);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = addr(base + 0x2000);
        queue.set_used_ring_address(lo, hi);
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        Self { queue, base, avail: 0 }
    }

    fn kick(&mut self, mem: &GuestMemory) {
        let slot = u64::from(self.avail % QUEUE_SIZE);
        mem.write_obj(0u16, GuestAddress(self.base + 0x1004 + 2 * slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        mem.write_obj(self.avail.to_le(), GuestAddress(self.base + 0x1002)).unwrap();
    }
}

fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1, 0x88, 0xb5]);
    f.extend((14..len).map(|i| i as u8));
    f
}

/// One end of the wire for the benchmark loop.
trait Peer {
    fn send(&self, frame: &[u8]);
    fn recv(&self, buf: &mut [u8]);
}

impl Peer for std::os::unix::net::UnixDatagram {
    fn send(&self, frame: &[u8]) {
        std::os::unix::net::UnixDatagram::send(self, frame).unwrap();
    }
    fn recv(&self, buf: &mut [u8]) {
        std::os::unix::net::UnixDatagram::recv(self, buf).unwrap();
    }
}

/// A wire with nothing on it: sends vanish, and each `send` from the peer side makes one
/// frame for the next `recv`. It leaves only the queue handler's own cost per frame.
#[derive(Debug, Default, Clone)]
struct NullWire(Arc<AtomicU64>);

#[derive(Debug)]
struct NullBackend {
    pending: NullWire,
    frame: Vec<u8>,
}

impl NetBackend for NullBackend {
    fn raw_fd(&self) -> RawFd {
        -1
    }
    fn has_vnet_hdr(&self) -> bool {
        false
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let p = &self.pending.0;
        if p.load(Ordering::Relaxed) == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        p.fetch_sub(1, Ordering::Relaxed);
        buf[..self.frame.len()].copy_from_slice(&self.frame);
        Ok(self.frame.len())
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        Ok(frame.len())
    }
    fn set_offloads(&mut self, _: Offloads) -> io::Result<()> {
        Ok(())
    }
}

impl Peer for NullWire {
    fn send(&self, _frame: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn recv(&self, _buf: &mut [u8]) {}
}

/// Frames per kick: 1 (latency-like: one kick, one pass, one frame) or a batch (throughput:
/// one kick and one handler pass move `BATCH` frames).
const BATCH: u64 = 32;

fn throughput(len: usize, batch: u64) -> Throughput {
    if batch == 1 {
        Throughput::Bytes(len as u64)
    } else {
        Throughput::Elements(batch)
    }
}

fn bench_tx(
    c: &mut Criterion,
    name: &str,
    backend: Box<dyn NetBackend>,
    peer: Option<&dyn Peer>,
    len: usize,
    batch: u64,
) {
    let ram = GuestRam::new(&MemoryConfig::new(64 << 20)).unwrap();
    let mem = ram.memory();
    mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(HDR)).unwrap();
    mem.write_slice(&frame(len), GuestAddress(FRAME)).unwrap();
    let next = VRING_DESC_F_NEXT as u16;
    let descs = [
        Descriptor::new(HDR, NET_HDR_LEN as u32, next, 1),
        Descriptor::new(FRAME, len as u32, 0, 0),
    ];
    let mut q = BenchQueue::new(mem, 0, &descs);
    let mut h = NetQueueHandler::new(backend, FEATURES);
    let mut buf = vec![0u8; 65_536];
    let mut g = c.benchmark_group("net");
    g.throughput(throughput(len, batch));
    let mut kicks = 0u64;
    g.bench_function(name, |b| {
        b.iter(|| {
            for _ in 0..batch {
                q.kick(mem);
            }
            kicks += batch;
            h.process_tx(&mut q.queue, mem).unwrap();
            if let Some(p) = peer {
                for _ in 0..batch {
                    p.recv(&mut buf);
                }
            }
        })
    });
    g.finish();
    let st = h.metrics().snapshot();
    assert_eq!(st.tx_malformed + st.tx_backend_errors, 0, "{name}: {st:?}");
    assert_eq!(st.tx_frames, kicks, "{name}: every frame reached the backend");
}

fn bench_rx(
    c: &mut Criterion,
    name: &str,
    backend: Box<dyn NetBackend>,
    peer: &dyn Peer,
    len: usize,
    batch: u64,
) {
    let ram = GuestRam::new(&MemoryConfig::new(64 << 20)).unwrap();
    let mem = ram.memory();
    let descs = [Descriptor::new(RXBUF, 2048, VRING_DESC_F_WRITE as u16, 0)];
    let mut q = BenchQueue::new(mem, 0, &descs);
    let mut h = NetQueueHandler::new(backend, FEATURES);
    let f = frame(len);
    let mut g = c.benchmark_group("net");
    g.throughput(throughput(len, batch));
    let mut sent = 0u64;
    g.bench_function(name, |b| {
        b.iter(|| {
            // The same buffer posted `batch` times: each frame overwrites the last.
            for _ in 0..batch {
                q.kick(mem);
                peer.send(&f);
            }
            h.process_rx(&mut q.queue, mem).unwrap();
            sent += batch;
        })
    });
    g.finish();
    let st = h.metrics().snapshot();
    assert_eq!(st.rx_dropped + st.rx_malformed, 0, "{name}: {st:?}");
    assert_eq!(st.rx_frames, sent, "{name}: every frame sent reached the guest");
    assert_eq!(st.rx_bytes, sent * len as u64);
}

/// The host stack as the sender: UDP datagrams to the guest's address, routed out of the TAP
/// (a static neighbour entry stands in for the guest's ARP reply).
struct HostUdp(std::net::UdpSocket);

impl Peer for HostUdp {
    fn send(&self, frame: &[u8]) {
        // Ethernet, IPv4 and UDP headers take 42 bytes of the frame.
        self.0.send_to(&frame[42..], "10.9.0.2:9").unwrap();
    }
    fn recv(&self, _buf: &mut [u8]) {}
}

/// A fresh TAP `hvbench0` as a backend: up, 10.9.0.1/24, the guest 10.9.0.2 a static
/// neighbour, no IPv6 chatter.
fn tap_backend(ns: &hv_test_support::netns::NetNs) -> TapBackend {
    let tap = Tap::builder("hvbench0").open().unwrap();
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/hvbench0/disable_ipv6", "1");
    let mut nl = hv_net::netlink::Netlink::new().unwrap();
    nl.add_address("hvbench0", [10, 9, 0, 1].into(), 24).unwrap();
    nl.set_up("hvbench0").unwrap();
    let neigh = "ip neigh replace 10.9.0.2 lladdr 52:54:00:00:00:02 dev hvbench0 nud permanent";
    ns.exec_ok(&neigh.split(' ').collect::<Vec<_>>());
    TapBackend::new(tap).unwrap()
}

fn tap_benches(c: &mut Criterion) {
    hv_test_support::require!(hv_test_support::is_root(), "the TAP benchmarks need root");
    hv_test_support::require!(
        hv_test_support::netns::have_netns_tools(),
        "the TAP benchmarks need iproute2 (apt-get install iproute2)"
    );
    let ns = hv_test_support::netns::NetNs::new("hvb-net");
    for (len, tag) in [(64, "64b"), (1500, "1500b")] {
        // Each benchmark gets its own TAP, gone when its backend is dropped. The TAP and the
        // UDP socket are made inside the namespace and stay there when used from here.
        let backend = ns.run(|| tap_backend(&ns));
        bench_tx(c, &format!("net_tx_{tag}_tap"), Box::new(backend), None, len, 1);
        let (backend, udp) = ns.run(|| {
            let backend = tap_backend(&ns);
            (backend, HostUdp(std::net::UdpSocket::bind("10.9.0.1:0").unwrap()))
        });
        bench_rx(c, &format!("net_rx_{tag}_tap"), Box::new(backend), &udp, len, 1);
    }
    // Many frames per kick: what one handler pass costs per frame.
    let backend = ns.run(|| tap_backend(&ns));
    bench_tx(c, "net_tx_64b_tap_batch32", Box::new(backend), None, 64, BATCH);
    let (backend, udp) = ns.run(|| {
        let backend = tap_backend(&ns);
        (backend, HostUdp(std::net::UdpSocket::bind("10.9.0.1:0").unwrap()))
    });
    bench_rx(c, "net_rx_64b_tap_batch32", Box::new(backend), &udp, 64, BATCH);
}

/// The whole device: a TX kick on the queue's eventfd wakes the pair's worker thread, which
/// sends the frame; the iteration ends when the peer has it (kick-to-wire latency).
fn bench_device_tx(c: &mut Criterion) {
    let ram = GuestRam::new(&MemoryConfig::new(64 << 20)).unwrap();
    let mem = ram.memory();
    mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(HDR)).unwrap();
    mem.write_slice(&frame(64), GuestAddress(FRAME)).unwrap();
    let next = VRING_DESC_F_NEXT as u16;
    let descs =
        [Descriptor::new(HDR, NET_HDR_LEN as u32, next, 1), Descriptor::new(FRAME, 64, 0, 0)];
    let mut tx = BenchQueue::new(mem, 0x10000, &descs);
    let rx = BenchQueue::new(mem, 0, &[Descriptor::new(RXBUF, 2048, VRING_DESC_F_WRITE as u16, 0)]);
    let (backend, peer) = DatagramBackend::pair(false).unwrap();
    let (mut dev, handle) =
        VirtioNet::new(NetConfig::new(MacAddr([2, 0, 0, 0, 0, 1])), Box::new(backend));
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let take =
        |q: &mut BenchQueue| std::mem::replace(&mut q.queue, Queue::new(QUEUE_SIZE).unwrap());
    let mut rx = rx;
    let queues = vec![
        ActiveQueue { index: 0, queue: take(&mut rx), notify: EventFd::new(EFD_NONBLOCK).unwrap() },
        ActiveQueue { index: 1, queue: take(&mut tx), notify: kick.try_clone().unwrap() },
    ];
    let interrupt = Interrupt::disconnected().unwrap();
    dev.activate(Activation { mem: mem.clone(), acked_features: FEATURES, queues, interrupt })
        .unwrap();
    let mut buf = [0u8; 2048];
    c.bench_function("net_tx_64b_device", |b| {
        b.iter(|| {
            tx.kick(mem);
            kick.write(1).unwrap();
            peer.recv(&mut buf).unwrap();
        })
    });
    dev.reset();
    assert_eq!(handle.stats().tx_malformed, 0);
}

fn benches(c: &mut Criterion) {
    for (len, tag) in [(64, "64b"), (1500, "1500b")] {
        let (backend, peer) = DatagramBackend::pair(false).unwrap();
        bench_tx(c, &format!("net_tx_{tag}"), Box::new(backend), Some(&peer), len, 1);
        let (backend, peer) = DatagramBackend::pair(false).unwrap();
        bench_rx(c, &format!("net_rx_{tag}"), Box::new(backend), &peer, len, 1);
    }
    let wire = NullWire::default();
    let null = |len| Box::new(NullBackend { pending: wire.clone(), frame: frame(len) });
    bench_tx(c, "net_tx_64b_null_batch32", null(64), None, 64, BATCH);
    bench_rx(c, "net_rx_64b_null_batch32", null(64), &wire, 64, BATCH);
    bench_rx(c, "net_rx_1500b_null_batch32", null(1500), &wire, 1500, BATCH);
    let (backend, peer) = DatagramBackend::pair(false).unwrap();
    bench_tx(c, "net_tx_64b_batch32", Box::new(backend), Some(&peer), 64, BATCH);
    let (backend, peer) = DatagramBackend::pair(false).unwrap();
    bench_rx(c, "net_rx_64b_batch32", Box::new(backend), &peer, 64, BATCH);
    bench_device_tx(c);
    tap_benches(c);
}

criterion_group!(net, benches);
criterion_main!(net);
