//! virtio-net queues come from the guest: whatever the descriptor tables and rings hold, hv-net's
//! queue handler (its chain parser, headers, mergeable RX buffers, used-ring publishing) must
//! never panic, must hand the backend only frames of legal size, and must stay in guest memory.
//!
//! Input: a features byte, a flags byte, u16-prefixed frames the backend delivers (their total
//! length first as a u16), then the guest memory image written at address 0: the RX queue's
//! descriptor table at 0x000, avail ring at 0x100, used ring at 0x200; the TX queue's at 0x300,
//! 0x400, 0x500; buffers from 0x600 on. Queues have 16 entries.
#![no_main]

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hv_core::vmm_sys_util::eventfd::EventFd;
use hv_fuzz::Reader;
use hv_mem::{GuestRam, MemoryConfig};
use hv_net::virtio_net::virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};
use hv_net::virtio_net::virtio_queue::{Queue, QueueT};
use hv_net::virtio_net::{NetBackend, NetQueueHandler, Offloads, MAX_FRAME_LEN, NET_HDR_LEN};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const RAM: u64 = 2 << 20;
const QUEUE_SIZE: u16 = 16;
const EVENT_IDX: u32 = 29;
const VERSION_1: u32 = 32;

/// A backend that delivers the frames of the input and checks the frames it is sent.
#[derive(Debug)]
struct FuzzBackend {
    rx: VecDeque<Vec<u8>>,
    vnet_hdr: bool,
    sent: Arc<AtomicUsize>,
    evt: EventFd,
}

impl NetBackend for FuzzBackend {
    fn raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
    fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self.rx.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        let hdr = if self.vnet_hdr { NET_HDR_LEN } else { 0 };
        assert!(frame.len() >= hdr + 14, "sent a frame of {} bytes", frame.len());
        assert!(frame.len() <= hdr + MAX_FRAME_LEN, "sent a frame of {} bytes", frame.len());
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(frame.len())
    }
    fn set_offloads(&mut self, _offloads: Offloads) -> io::Result<()> {
        Ok(())
    }
}

fn queue(base: u64, event_idx: bool) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).expect("queue");
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

fuzz_target!(|data: &[u8]| {
    let mut input = Reader::new(data);
    let bits = input.u8();
    let flags = input.u8();
    let mut features = 1u64 << VERSION_1;
    for (i, f) in [
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        EVENT_IDX,
    ]
    .iter()
    .enumerate()
    {
        if bits & (1 << i) != 0 {
            features |= 1 << f;
        }
    }
    let event_idx = bits & 0x80 != 0;
    let vnet_hdr = flags & 1 != 0;
    let mut frames = Reader::new(input.chunk());
    let mut rx = VecDeque::new();
    while !frames.is_empty() {
        rx.push_back(frames.chunk().to_vec());
    }
    let sent = Arc::new(AtomicUsize::new(0));
    let evt = EventFd::new(0).expect("eventfd");
    let backend = FuzzBackend { rx, vnet_hdr, sent: sent.clone(), evt };
    let mut handler = NetQueueHandler::new(Box::new(backend), features);

    let ram = GuestRam::new(&MemoryConfig::new(RAM)).expect("guest RAM");
    let mem = ram.memory();
    let image = input.rest();
    mem.write_slice(&image[..image.len().min(0x10000)], GuestAddress(0)).expect("in RAM");
    let mut rxq = queue(0, event_idx);
    let mut txq = queue(0x300, event_idx);

    let _ = handler.process_tx(&mut txq, mem);
    let _ = handler.process_rx(&mut rxq, mem);
    // The guest posts nothing new, but a second round must not re-use what the first used.
    let _ = handler.process_rx(&mut rxq, mem);
    let _ = handler.process_tx(&mut txq, mem);
    assert!(handler.rx_buffers_held() <= usize::from(QUEUE_SIZE));
    let stats = handler.metrics().snapshot();
    assert_eq!(stats.tx_frames, sent.load(Ordering::Relaxed) as u64, "TX count != frames sent");
    if stats.tx_frames + stats.rx_frames > 0 {
        hv_fuzz::reached("moved a frame");
    }
});
