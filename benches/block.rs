//! Block path benchmarks: virtio-blk request parsing, and whole requests through the queue
//! handler into guest memory from a raw file and a qcow2 image on tmpfs (/dev/shm).
//!
//! Names follow Cloud Hypervisor's metric style: `block_parse_request`,
//! `block_read_4k_raw`, `block_read_64k_qcow2`, ... Run briefly with
//! `cargo bench --bench block -- --warm-up-time 1 --measurement-time 3`.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion};
use hv_mem::vm_memory::{Bytes, GuestAddress};
use hv_mem::{GuestMemory, GuestRam, MemoryConfig};
use hv_storage::block::{open_disk, DiskFormat, DiskOptions, Engine};
use hv_storage::virtio_blk::request::{Request, RequestLimits};
use hv_storage::virtio_blk::virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use hv_storage::virtio_blk::virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use hv_storage::virtio_blk::virtio_queue::desc::split::Descriptor;
use hv_storage::virtio_blk::virtio_queue::desc::RawDescriptor;
use hv_storage::virtio_blk::virtio_queue::{Queue, QueueT};
use hv_storage::virtio_blk::{BlockConfig, BlockQueueHandler};

const DISK_SIZE: u64 = 256 << 20;
const QUEUE_SIZE: u16 = 256;
const HEADER: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x1f_0000;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// A one-chain split queue: descriptors 0..3 at 0, avail ring at 0x4000, used ring at 0x8000.
struct BenchQueue {
    queue: Queue,
    avail: u16,
}

impl BenchQueue {
    fn new(mem: &GuestMemory, type_: u32, len: u32) -> Self {
        let dir = if type_ == VIRTIO_BLK_T_IN { WRITE } else { 0 };
        let descs = [
            Descriptor::new(HEADER, 16, NEXT, 1),
            Descriptor::new(DATA, len, dir | NEXT, 2),
            Descriptor::new(STATUS, 1, WRITE, 0),
        ];
        for (i, d) in descs.into_iter().enumerate() {
            mem.write_obj(RawDescriptor::from(d), GuestAddress(16 * i as u64)).unwrap();
        }
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(0), Some(0));
        queue.set_avail_ring_address(Some(0x4000), Some(0));
        queue.set_used_ring_address(Some(0x8000), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        let q = Self { queue, avail: 0 };
        q.header(mem, type_, 0);
        q
    }

    fn header(&self, mem: &GuestMemory, type_: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&type_.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HEADER)).unwrap();
    }

    /// Makes the chain available once more.
    fn kick(&mut self, mem: &GuestMemory) {
        let slot = u64::from(self.avail % QUEUE_SIZE);
        mem.write_obj(0u16, GuestAddress(0x4004 + 2 * slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        mem.write_obj(self.avail.to_le(), GuestAddress(0x4002)).unwrap();
    }
}

fn shm_file(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/hv-bench-{}-{name}", std::process::id()))
}

fn raw_image() -> PathBuf {
    let p = shm_file("disk.raw");
    let data: Vec<u8> = (0..DISK_SIZE as usize).map(|i| (i * 7 + (i >> 12)) as u8).collect();
    std::fs::write(&p, data).unwrap();
    p
}

/// A fully allocated qcow2 image converted from `raw`, or None without qemu-img.
fn qcow2_image(raw: &Path) -> Option<PathBuf> {
    let p = shm_file("disk.qcow2");
    let ok = Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(raw)
        .arg(&p)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(p)
}

fn bench_request(c: &mut Criterion, name: &str, path: &Path, engine: Engine, type_: u32, len: u32) {
    let ram = GuestRam::new(&MemoryConfig::new(64 << 20)).unwrap();
    let mem = ram.memory();
    let Ok(disk) = open_disk(path, DiskFormat::Raw, DiskOptions { engine, ..Default::default() })
    else {
        eprintln!("skipping {name}: cannot open {} with {engine:?}", path.display());
        return;
    };
    let mut handler = BlockQueueHandler::new(disk, &BlockConfig::default());
    let mut q = BenchQueue::new(mem, type_, len);
    let sectors_per_req = u64::from(len / 512);
    let slots = (DISK_SIZE / 512) / sectors_per_req;
    let mut n = 0u64;
    c.bench_function(name, |b| {
        b.iter(|| {
            // Spread requests over the disk (a fixed stride, co-prime with the slot count).
            n = (n + 7919) % slots;
            q.header(mem, type_, n * sectors_per_req);
            q.kick(mem);
            handler.process_queue(&mut q.queue, mem).unwrap();
            // An asynchronous engine (io_uring) may still hold it: the figure is per request.
            handler.drain(&mut q.queue, mem).unwrap();
        })
    });
    assert_eq!(handler.stats().io_errors + handler.stats().invalid_requests, 0);
}

fn benches(c: &mut Criterion) {
    // Parsing alone: a 3-descriptor 4 KiB read.
    let ram = GuestRam::new(&MemoryConfig::new(64 << 20)).unwrap();
    let mem = ram.memory();
    let q = BenchQueue::new(mem, VIRTIO_BLK_T_IN, 4096);
    q.header(mem, VIRTIO_BLK_T_IN, 8);
    let descs = [
        Descriptor::new(HEADER, 16, NEXT, 1),
        Descriptor::new(DATA, 4096, WRITE | NEXT, 2),
        Descriptor::new(STATUS, 1, WRITE, 0),
    ];
    let limits = RequestLimits {
        capacity_sectors: DISK_SIZE / 512,
        read_only: false,
        max_data_descriptors: 254,
        max_data_bytes: 32 << 20,
        max_discard_seg: 32,
        max_discard_sectors: 1 << 22,
        max_write_zeroes_seg: 32,
        max_write_zeroes_sectors: 1 << 22,
    };
    c.bench_function("block_parse_request", |b| {
        b.iter(|| Request::parse_descriptors(descs.iter().copied(), mem, &limits).unwrap())
    });

    let raw = raw_image();
    let qcow2 = qcow2_image(&raw);
    for (len, tag) in [(4096u32, "4k"), (65536, "64k")] {
        bench_request(
            c,
            &format!("block_read_{tag}_raw"),
            &raw,
            Engine::Sync,
            VIRTIO_BLK_T_IN,
            len,
        );
        bench_request(
            c,
            &format!("block_read_{tag}_raw_uring"),
            &raw,
            Engine::Uring,
            VIRTIO_BLK_T_IN,
            len,
        );
        if let Some(qcow2) = &qcow2 {
            bench_request(
                c,
                &format!("block_read_{tag}_qcow2"),
                qcow2,
                Engine::Sync,
                VIRTIO_BLK_T_IN,
                len,
            );
        }
    }
    bench_request(c, "block_write_4k_raw", &raw, Engine::Sync, VIRTIO_BLK_T_OUT, 4096);
    bench_request(c, "block_write_1m_raw", &raw, Engine::Sync, VIRTIO_BLK_T_OUT, 1 << 20);
    if let Some(qcow2) = &qcow2 {
        bench_request(c, "block_write_4k_qcow2", qcow2, Engine::Sync, VIRTIO_BLK_T_OUT, 4096);
        bench_request(c, "block_write_1m_qcow2", qcow2, Engine::Sync, VIRTIO_BLK_T_OUT, 1 << 20);
        std::fs::remove_file(qcow2).ok();
    }
    std::fs::remove_file(&raw).ok();
}

criterion_group!(block, benches);
criterion_main!(block);
