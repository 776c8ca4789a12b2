//! Property tests: random descriptor tables, avail rings and frames against the virtio-net queue
//! handler. Whatever the guest puts there, the handler neither panics nor errors, returns no
//! more chains than were offered, and writes guest memory only inside device-writable buffers
//! and the used ring. The same holds for the control queue.

mod virtio_net_common;

use hv_mem::{GuestRam, MemoryConfig};
use std::sync::Arc;

use hv_net::virtio_net::{CtrlQueueHandler, DatagramBackend, NetMetrics, NetQueueHandler};
use proptest::prelude::*;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_net_common::*;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};

const MEM: u64 = 2 << 20;
/// The used ring of a queue at 0, as `TestQueue` lays it out.
const USED: std::ops::Range<u64> = 0x2000..0x3000;

#[derive(Clone, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn desc() -> impl Strategy<Value = Desc> {
    let addr = prop_oneof![
        4 => 0x1_0000u64..MEM,
        1 => 0u64..0x3000,
        1 => (MEM - 4096)..(MEM + 4096),
        1 => Just(u64::MAX - 16),
    ];
    let len =
        prop_oneof![4 => 0u32..3000, 1 => 0u32..16, 1 => Just(u32::MAX), 1 => 60_000u32..70_000];
    let flags = prop_oneof![
        6 => prop::sample::select(vec![0u16, N, W, N | W]),
        1 => Just(VRING_DESC_F_INDIRECT as u16),
        1 => any::<u16>(),
    ];
    let next = prop_oneof![4 => 0u16..16, 1 => 0u16..QUEUE_SIZE + 4, 1 => any::<u16>()];
    (addr, len, flags, next).prop_map(|(addr, len, flags, next)| Desc { addr, len, flags, next })
}

fn snapshot(ram: &GuestRam) -> Vec<u8> {
    let mut v = vec![0u8; MEM as usize];
    ram.memory().read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

/// Writes `table` at descriptor indices 0.., makes `heads` available; returns the queue.
fn setup<'a>(ram: &'a GuestRam, table: &[Desc], heads: &[u16], event_idx: bool) -> TestQueue<'a> {
    let mut q = TestQueue::new(ram.memory(), 0, 0x1_0000);
    if event_idx {
        q = q.event_idx();
    }
    for (i, d) in table.iter().enumerate() {
        let raw = RawDescriptor::from(Descriptor::new(d.addr, d.len, d.flags, d.next));
        ram.memory().write_obj(raw, GuestAddress(16 * i as u64)).unwrap();
    }
    for &h in heads {
        q.push_avail(h);
    }
    q
}

/// Every byte that changed lies in a writable descriptor's range or the used ring.
fn only_allowed_writes(
    before: &[u8],
    after: &[u8],
    table: &[Desc],
    rx: bool,
) -> Result<(), String> {
    let changed = before
        .chunks(4096)
        .zip(after.chunks(4096))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .flat_map(|(c, (a, b))| {
            a.iter()
                .zip(b.iter())
                .enumerate()
                .filter(|(_, (x, y))| x != y)
                .map(move |(i, _)| c * 4096 + i)
        });
    for i in changed {
        let at = i as u64;
        if USED.contains(&at) {
            continue;
        }
        let in_writable = rx
            && table
                .iter()
                .any(|d| d.flags & W != 0 && at >= d.addr && at - d.addr < u64::from(d.len));
        if !in_writable {
            return Err(format!("byte {at:#x} changed outside every writable buffer"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn tx_survives_any_chain(
        table in prop::collection::vec(desc(), 1..16),
        heads in prop::collection::vec(0u16..QUEUE_SIZE + 2, 0..40),
        event_idx in any::<bool>(),
        vnet_hdr in any::<bool>(),
        garbage in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let ram = GuestRam::new(&MemoryConfig::new(MEM)).unwrap();
        // Random bytes where buffers tend to point, so headers are random too.
        ram.memory().write_slice(&garbage, GuestAddress(0x1_0000)).unwrap();
        let mut q = setup(&ram, &table, &heads, event_idx);
        let (backend, peer) = DatagramBackend::pair(vnet_hdr).unwrap();
        let mut h = NetQueueHandler::new(Box::new(backend), with_event_idx(all_features()));
        let before = snapshot(&ram);
        h.process_tx(&mut q.queue, ram.memory()).unwrap();
        let after = snapshot(&ram);
        prop_assert!(usize::from(q.used_idx()) <= heads.len());
        only_allowed_writes(&before, &after, &table, false).map_err(TestCaseError::fail)?;
        let st = h.metrics().snapshot();
        prop_assert_eq!(st.tx_frames + st.tx_malformed + st.tx_backend_errors, heads.len() as u64);
        drop(peer);
    }

    #[test]
    fn rx_survives_any_chain_and_frame(
        table in prop::collection::vec(desc(), 1..16),
        heads in prop::collection::vec(0u16..QUEUE_SIZE + 2, 0..40),
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..5000), 0..8),
        event_idx in any::<bool>(),
        vnet_hdr in any::<bool>(),
        mrg in any::<bool>(),
    ) {
        let ram = GuestRam::new(&MemoryConfig::new(MEM)).unwrap();
        let mut q = setup(&ram, &table, &heads, event_idx);
        let (backend, peer) = DatagramBackend::pair(vnet_hdr).unwrap();
        let features = with_event_idx(all_features());
        let features = if mrg { features } else { no_mrg(features) };
        let mut h = NetQueueHandler::new(Box::new(backend), features);
        for f in &frames {
            peer.send(f).unwrap();
        }
        let before = snapshot(&ram);
        h.process_rx(&mut q.queue, ram.memory()).unwrap();
        // A second pass, as after a kick.
        h.process_rx(&mut q.queue, ram.memory()).unwrap();
        let after = snapshot(&ram);
        prop_assert!(usize::from(q.used_idx()) <= heads.len());
        only_allowed_writes(&before, &after, &table, true).map_err(TestCaseError::fail)?;
        let st = h.metrics().snapshot();
        prop_assert!(st.rx_frames + st.rx_dropped <= frames.len() as u64);
    }

    #[test]
    fn ctrl_survives_any_chain(
        table in prop::collection::vec(desc(), 1..16),
        heads in prop::collection::vec(0u16..QUEUE_SIZE + 2, 0..40),
        garbage in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let ram = GuestRam::new(&MemoryConfig::new(MEM)).unwrap();
        ram.memory().write_slice(&garbage, GuestAddress(0x1_0000)).unwrap();
        let mut q = setup(&ram, &table, &heads, false);
        let mut h = CtrlQueueHandler::new(4, Arc::new(NetMetrics::default()));
        let before = snapshot(&ram);
        let mut applied = Vec::new();
        h.process(&mut q.queue, ram.memory(), &mut |n| applied.push(n)).unwrap();
        let after = snapshot(&ram);
        prop_assert!(usize::from(q.used_idx()) <= heads.len());
        prop_assert!(applied.iter().all(|&n| (1..=4).contains(&n)));
        only_allowed_writes(&before, &after, &table, true).map_err(TestCaseError::fail)?;
    }
}
