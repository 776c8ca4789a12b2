//! Property tests: random descriptor tables, avail rings and request headers against the
//! virtio-blk queue handler. Whatever the guest writes: no panic, every chain the avail ring
//! names is returned to the guest, status bytes are only OK/IOERR/UNSUPP, nothing outside the
//! buffers the descriptors describe is written, and successful requests moved the right bytes.

mod blk_common;

use blk_common::*;
use hv_storage::block::{open_disk, DiskFormat, DiskOptions};
use hv_storage::virtio_blk::request::{Request, RequestLimits};
use hv_storage::virtio_blk::{BlockConfig, BlockQueueHandler};
use proptest::prelude::*;
use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

const DISK: usize = 256 << 10;
/// Buffers that are "in memory" lie in [DATA_BASE, DATA_BASE + DATA_SPAN + 64 KiB).
const DATA_SPAN: u64 = 1 << 20;
/// Nothing may ever write here: no descriptor addresses it.
const CANARY: u64 = 8 << 20;
const CANARY_LEN: usize = 64 << 10;

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0..DATA_SPAN).prop_map(|o| DATA_BASE + o),
        1 => Just(RAM_SIZE - 8),
        1 => RAM_SIZE..RAM_SIZE + 4096,
        1 => Just(1u64 << 40),
        1 => Just(u64::MAX - 3),
    ]
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => Just(16u32),
        2 => Just(512u32),
        1 => Just(0u32),
        1 => Just(1u32),
        2 => 0u32..65536,
        1 => (1u32 << 27)..u32::MAX,
        1 => Just(u32::MAX),
    ]
}

fn flags() -> impl Strategy<Value = u16> {
    let (n, w, i) = (VRING_DESC_F_NEXT as u16, W, VRING_DESC_F_INDIRECT as u16);
    prop_oneof![
        4 => Just(n),
        4 => Just(n | w),
        2 => Just(w),
        2 => Just(0u16),
        1 => Just(i),
        1 => any::<u16>(),
    ]
}

fn next() -> impl Strategy<Value = u16> {
    prop_oneof![8 => 0..QUEUE_SIZE, 1 => any::<u16>()]
}

fn desc() -> impl Strategy<Value = (u64, u32, u16, u16)> {
    (addr(), len(), flags(), next())
}

/// A plausible-or-not header: known types most of the time, sectors around the disk end.
fn header() -> impl Strategy<Value = (u32, u64)> {
    let t = prop_oneof![
        3 => Just(VIRTIO_BLK_T_IN),
        3 => Just(VIRTIO_BLK_T_OUT),
        1 => Just(VIRTIO_BLK_T_FLUSH),
        1 => Just(VIRTIO_BLK_T_GET_ID),
        1 => Just(VIRTIO_BLK_T_DISCARD),
        1 => Just(VIRTIO_BLK_T_WRITE_ZEROES),
        1 => any::<u32>(),
    ];
    let sectors = (DISK / 512) as u64;
    let s = prop_oneof![4 => 0..sectors, 1 => sectors - 4..sectors + 4, 1 => any::<u64>()];
    (t, s)
}

fn handler(dir: &std::path::Path) -> BlockQueueHandler {
    let path = raw_file(dir, "disk.raw", DISK, 1);
    let disk = open_disk(&path, DiskFormat::Raw, DiskOptions::default()).unwrap();
    let cfg = BlockConfig { queue_size: QUEUE_SIZE, max_discard_seg: 4, ..Default::default() };
    BlockQueueHandler::new(disk, &cfg)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random descriptor tables, avail rings and memory contents.
    #[test]
    fn random_descriptor_tables_never_escape(
        table in proptest::collection::vec(desc(), QUEUE_SIZE as usize),
        heads in proptest::collection::vec(prop_oneof![9 => 0..QUEUE_SIZE, 1 => any::<u16>()], 0..48),
        headers in proptest::collection::vec((0..DATA_SPAN / 16, header()), 0..64),
        segs in proptest::collection::vec((0..DATA_SPAN / 16, any::<u64>(), any::<u32>(), 0u32..4), 0..32),
        event_idx in any::<bool>(),
    ) {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut h = handler(dir.path());
        let ram = ram();
        let mem = ram.memory();
        mem.write_slice(&[0xa5u8; CANARY_LEN], GuestAddress(CANARY)).unwrap();
        // Plant headers and discard segments where random descriptors may point.
        for (slot, (t, sector)) in &headers {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&t.to_le_bytes());
            b[8..].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&b, GuestAddress(DATA_BASE + slot * 16)).unwrap();
        }
        for (slot, sector, n, f) in &segs {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&(sector % (DISK as u64 / 512 + 8)).to_le_bytes());
            b[8..12].copy_from_slice(&(n % 64).to_le_bytes());
            b[12..].copy_from_slice(&f.to_le_bytes());
            mem.write_slice(&b, GuestAddress(DATA_BASE + slot * 16)).unwrap();
        }
        let mut q = TestQueue::new(mem);
        // Makes table entry 0 available; the random heads follow.
        q.add_raw(&table, 0);
        q.queue.set_event_idx(event_idx);
        let first = 0u16;
        for &hd in &heads {
            q.push_avail(hd);
        }
        let res = h.process_queue(&mut q.queue, mem);
        prop_assert!(res.is_ok(), "{res:?}");
        let valid_heads = 1 + heads.iter().filter(|&&x| x < QUEUE_SIZE).count();
        prop_assert_eq!(usize::from(q.used_idx() - first), valid_heads, "{:?} {:?}", h.stats(), h.last_error());
        let canary = q.read_guest(CANARY, CANARY_LEN);
        prop_assert!(canary.iter().all(|&b| b == 0xa5), "canary overwritten");
        prop_assert_eq!(std::fs::metadata(dir.path().join("disk.raw")).unwrap().len(), DISK as u64);
    }

    /// Well-formed chains with random headers and buffer shapes: the status tells the truth.
    #[test]
    fn random_headers_get_truthful_status(
        (t, sector) in header(),
        bufs in proptest::collection::vec((prop_oneof![3 => (1u32..9).prop_map(|n| n * 512), 1 => 0u32..5000], any::<bool>()), 0..4),
    ) {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut h = handler(dir.path());
        let ram = ram();
        let mem = ram.memory();
        let mut q = TestQueue::new(mem);
        let hd = q.header(t, sector);
        let addrs: Vec<u64> = bufs.iter().map(|&(l, _)| q.alloc(u64::from(l))).collect();
        let st = q.status();
        let mut chain = vec![(hd, 16, R)];
        chain.extend(addrs.iter().zip(&bufs).map(|(&a, &(l, w))| (a, l, if w { W } else { R })));
        chain.push((st, 1, W));
        q.add_chain(&chain);
        h.process_queue(&mut q.queue, mem).unwrap();
        let status = q.status_at(st);
        prop_assert!(status <= 2, "status {status}");
        let total: u64 = bufs.iter().map(|&(l, _)| u64::from(l)).sum();
        let dirs_ok = |want: bool| bufs.iter().all(|&(_, w)| w == want);
        let in_range = total.is_multiple_of(512)
            && total > 0
            && sector.checked_add(total / 512).is_some_and(|e| e <= (DISK / 512) as u64);
        let expect_ok = match t {
            VIRTIO_BLK_T_IN => in_range && dirs_ok(true),
            VIRTIO_BLK_T_OUT => in_range && dirs_ok(false),
            VIRTIO_BLK_T_FLUSH => true,
            VIRTIO_BLK_T_GET_ID => total > 0 && dirs_ok(true),
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => status == 0 || status == 1 || status == 2,
            _ => false,
        };
        if matches!(t, VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES) {
            // Segment contents are whatever the buffers held (zeroes): only the status range
            // is checked above.
        } else if expect_ok {
            prop_assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        } else {
            prop_assert_ne!(status, VIRTIO_BLK_S_OK as u8);
        }
        if t == VIRTIO_BLK_T_IN && status == VIRTIO_BLK_S_OK as u8 {
            let file = pattern(DISK, 1);
            let mut off = (sector * 512) as usize;
            for (&a, &(l, _)) in addrs.iter().zip(&bufs) {
                prop_assert_eq!(q.read_guest(a, l as usize), &file[off..off + l as usize]);
                off += l as usize;
            }
        }
        let known = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
            VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES];
        if !known.contains(&t) {
            prop_assert_eq!(status, VIRTIO_BLK_S_UNSUPP as u8);
        }
    }

    /// The parser alone, on arbitrary descriptor lists (including ones a chain never yields).
    #[test]
    fn parser_never_panics(descs in proptest::collection::vec(desc(), 0..70)) {
        let ram = ram();
        let limits = RequestLimits {
            capacity_sectors: (DISK / 512) as u64,
            read_only: false,
            max_data_descriptors: 62,
            max_data_bytes: 1 << 20,
            max_discard_seg: 4,
            max_discard_sectors: 1 << 20,
            max_write_zeroes_seg: 4,
            max_write_zeroes_sectors: 1 << 20,
        };
        let it = descs.into_iter().map(|(a, l, f, n)| Descriptor::new(a, l, f, n));
        match Request::parse_descriptors(it, ram.memory(), &limits) {
            Ok(req) => {
                prop_assert!(req.data_len <= 1 << 20 || req.request_type == hv_storage::virtio_blk::RequestType::GetId);
                prop_assert!(req.segments.len() <= 4);
            }
            Err(f) => prop_assert!(f.error.status() == 1 || f.error.status() == 2),
        }
    }
}
