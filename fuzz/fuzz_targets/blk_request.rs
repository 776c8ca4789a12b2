//! Descriptor chains come from the guest: parsing one into a virtio-blk request must never
//! panic, a request that parses must keep every promise the parser makes (buffers inside guest
//! memory, sectors inside the disk, lengths and counts within the limits), and performing it
//! must never reach outside the disk.
//!
//! Input: a limits byte, then 16-byte descriptors (addr u64, len u32, flags u16, next u16) up to
//! a u16-prefixed count, then bytes written into guest memory at 0x1000 (headers, segments).
#![no_main]

use hv_fuzz::{reached, Reader};
use hv_mem::{GuestRam, MemoryConfig};
use hv_storage::block::{BlockBackend, GuestSlice, Result as BlockResult};
use hv_storage::virtio_blk::request::{Request, RequestLimits, RequestType};
use hv_storage::virtio_blk::{SECTOR_SIZE, SERIAL_LEN};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const RAM: u64 = 2 << 20;
const CAPACITY_SECTORS: u64 = 2048;

/// A disk that checks every access against its size: the parser promised the range.
#[derive(Debug)]
struct CheckedDisk {
    read_only: bool,
}

impl CheckedDisk {
    fn check(&self, offset: u64, len: u64) {
        let end = offset.checked_add(len).expect("access wraps around");
        assert!(end <= CAPACITY_SECTORS * SECTOR_SIZE, "access {offset:#x}+{len} outside the disk");
    }
}

impl BlockBackend for CheckedDisk {
    fn size(&self) -> u64 {
        CAPACITY_SECTORS * SECTOR_SIZE
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_vectored(&mut self, offset: u64, bufs: &[GuestSlice<'_>]) -> BlockResult<()> {
        self.check(offset, bufs.iter().map(|b| b.len() as u64).sum());
        Ok(())
    }
    fn write_vectored(&mut self, offset: u64, bufs: &[GuestSlice<'_>]) -> BlockResult<()> {
        assert!(!self.read_only, "write reached a read-only disk");
        self.check(offset, bufs.iter().map(|b| b.len() as u64).sum());
        Ok(())
    }
    fn flush(&mut self) -> BlockResult<()> {
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> BlockResult<()> {
        assert!(!self.read_only, "discard reached a read-only disk");
        self.check(offset, len);
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, _unmap: bool) -> BlockResult<()> {
        assert!(!self.read_only, "write-zeroes reached a read-only disk");
        self.check(offset, len);
        Ok(())
    }
    fn try_clone(&self) -> BlockResult<Box<dyn BlockBackend>> {
        Ok(Box::new(CheckedDisk { read_only: self.read_only }))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Reader::new(data);
    let flags = input.u8();
    let limits = RequestLimits {
        capacity_sectors: CAPACITY_SECTORS,
        read_only: flags & 1 == 1,
        max_data_descriptors: 16,
        max_data_bytes: 1 << 20,
        max_discard_seg: 4,
        max_discard_sectors: 1024,
        max_write_zeroes_seg: 4,
        max_write_zeroes_sectors: 1024,
    };
    let count = usize::from(input.u16() % 64);
    let descs: Vec<Descriptor> = (0..count)
        .map(|_| {
            // Mostly inside RAM, sometimes just past it.
            let addr = input.u64() % (RAM + 0x1000);
            Descriptor::new(addr, input.u32(), input.u16(), input.u16())
        })
        .collect();
    let ram = GuestRam::new(&MemoryConfig::new(RAM)).expect("guest RAM");
    let mem = ram.memory();
    let image = input.rest();
    mem.write_slice(&image[..image.len().min(0x10000)], GuestAddress(0x1000)).expect("in RAM");

    let Ok(req) = Request::parse_descriptors(descs.iter().copied(), mem, &limits) else { return };
    reached("parsed");
    assert!(mem.check_range(req.status_addr, 1), "status byte outside RAM");
    for d in &req.data {
        assert!(mem.check_range(d.addr, d.len as usize), "data buffer outside RAM");
    }
    let data_len: u64 = req.data.iter().map(|d| u64::from(d.len)).sum();
    match req.request_type {
        RequestType::In | RequestType::Out => {
            assert!(data_len > 0 && data_len.is_multiple_of(SECTOR_SIZE));
            assert!(data_len <= u64::from(limits.max_data_bytes));
            assert_eq!(u64::from(req.data_len), data_len);
            let end = req.sector.checked_add(data_len / SECTOR_SIZE).expect("sector overflow");
            assert!(end <= limits.capacity_sectors, "read/write past the end of the disk");
            assert!(!(limits.read_only && req.request_type == RequestType::Out));
        }
        // The sector field of these is reserved: any value is legal.
        RequestType::Flush => assert!(req.data.is_empty()),
        RequestType::GetId => assert!(data_len > 0),
        RequestType::Discard | RequestType::WriteZeroes => {
            assert!(!limits.read_only);
            assert!(req.data.is_empty() && !req.segments.is_empty());
            let (max_seg, max_sectors) = if req.request_type == RequestType::Discard {
                (limits.max_discard_seg, limits.max_discard_sectors)
            } else {
                (limits.max_write_zeroes_seg, limits.max_write_zeroes_sectors)
            };
            assert!(req.segments.len() <= max_seg as usize);
            for s in &req.segments {
                assert!(s.num_sectors <= max_sectors);
                let end = s.sector.checked_add(u64::from(s.num_sectors)).expect("overflow");
                assert!(end <= limits.capacity_sectors, "segment past the end of the disk");
            }
        }
        RequestType::Unsupported(t) => panic!("unsupported type {t} parsed"),
    }
    let mut disk = CheckedDisk { read_only: limits.read_only };
    let done = req.execute(mem, &mut disk, &[0x5a; SERIAL_LEN]);
    assert!(done.used_len >= 1);
    if req.request_type == RequestType::GetId {
        assert!(done.used_len as usize <= SERIAL_LEN + 1);
    }
});
