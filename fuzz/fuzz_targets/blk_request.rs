//! Descriptor chains come from the guest: parsing one into a virtio-blk request must never
//! panic, and a request that parses must stay inside guest memory and the disk.
#![no_main]

use hv_mem::{GuestRam, MemoryConfig};
use hv_storage::virtio_blk::request::{Request, RequestLimits};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

const RAM: u64 = 2 << 20;

fuzz_target!(|data: &[u8]| {
    // The first 512 bytes land in guest memory (headers, segments); the rest are descriptors.
    let (memory, descs) = data.split_at(data.len().min(512));
    let ram = GuestRam::new(&MemoryConfig::new(RAM)).expect("guest RAM");
    let mem = ram.memory();
    mem.write_slice(memory, GuestAddress(0x1000)).expect("in RAM");
    let chain = descs.chunks_exact(16).map(|d| {
        let addr = u64::from_le_bytes(d[0..8].try_into().unwrap()) % (RAM + 0x1000);
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
        let next = u16::from_le_bytes(d[14..16].try_into().unwrap());
        Descriptor::new(addr, len, flags, next)
    });
    let limits = RequestLimits {
        capacity_sectors: 2048,
        read_only: data.first().is_some_and(|b| b & 1 == 1),
        max_data_descriptors: 16,
        max_data_bytes: 1 << 20,
        max_discard_seg: 4,
        max_discard_sectors: 1024,
        max_write_zeroes_seg: 4,
        max_write_zeroes_sectors: 1024,
    };
    if let Ok(req) = Request::parse_descriptors(chain, mem, &limits) {
        assert!(req.sector <= limits.capacity_sectors);
    }
});
