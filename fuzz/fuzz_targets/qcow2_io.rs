//! qcow2 images are untrusted (a tenant uploads one): opening one whose metadata is damaged,
//! and reading, writing, discarding and zeroing through it, must give typed errors, never a
//! panic, and never an access outside the virtual disk.
//!
//! Input: an operation count, operations of 8 bytes (kind, offset in 512-byte units as u32,
//! length in 512-byte units as u16, fill byte), then the image. Images are made with qemu-img
//! (see `gen_seeds.py`); the fuzzer damages their header, L1/L2 and refcount tables.
//!
//! imago 0.2.6 panics on a short feature-name table; hv-storage catches it (see `disk_image`).
//! Images naming a backing or external data file are opened read-only and not written: imago's
//! permissive open would follow the name to a host file, which this target must not modify.
#![no_main]

use hv_fuzz::{allow_known_panics, scratch_dir, Reader, IMAGO_FEATURE_TABLE};
use hv_mem::{GuestRam, MemoryConfig};
use hv_storage::block::{open_disk, DiskOptions, ImageFormat};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const RAM: u64 = 2 << 20;
const MAX_IO: usize = 128 << 10;

/// Whether the header names a file outside the image (backing file, or the external data file
/// incompatible feature of a version 3 header).
fn names_other_files(image: &[u8]) -> bool {
    let be64 = |at: usize| {
        image.get(at..at + 8).map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()))
    };
    be64(8) != 0 || be64(72) & 0b100 != 0 || image.len() < 104
}

fuzz_target!(init: allow_known_panics(&[IMAGO_FEATURE_TABLE]), |data: &[u8]| {
    let mut input = Reader::new(data);
    let count = input.u8() % 16;
    let ops: Vec<(u8, u32, u16, u8)> =
        (0..count).map(|_| (input.u8(), input.u32(), input.u16(), input.u8())).collect();
    let image = input.rest();
    let path = scratch_dir().join("image.qcow2");
    if std::fs::write(&path, image).is_err() {
        return;
    }
    let read_only = names_other_files(image);
    let options =
        DiskOptions { read_only, format: Some(ImageFormat::Qcow2), ..DiskOptions::default() };
    let Ok(mut disk) = open_disk(&path, options) else { return };
    let size = disk.size();
    let ram = GuestRam::new(&MemoryConfig::new(RAM)).expect("guest RAM");
    let mem = ram.memory();
    for (kind, sector, sectors, fill) in ops {
        let offset = if size == 0 { 0 } else { (u64::from(sector) << 9) % size };
        let len = (usize::from(sectors) << 9).min(MAX_IO);
        let len64 = len as u64;
        let fits = offset.checked_add(len64).is_some_and(|end| end <= size);
        match kind % 6 {
            0 | 1 => {
                let slices: Vec<_> = mem
                    .get_slices(GuestAddress(0x1000), len)
                    .collect::<Result<_, _>>()
                    .expect("in RAM");
                if kind % 6 == 0 {
                    let r = disk.read_vectored(offset, &slices);
                    assert!(fits || r.is_err(), "read past the end succeeded");
                } else {
                    mem.write_slice(&vec![fill; len], GuestAddress(0x1000)).expect("in RAM");
                    let r = disk.write_vectored(offset, &slices);
                    assert!(fits || r.is_err(), "write past the end succeeded");
                    assert!(!read_only || r.is_err(), "write on a read-only disk succeeded");
                }
            }
            2 => {
                let r = disk.discard(offset, len64);
                assert!(fits || r.is_err());
            }
            3 | 4 => {
                let r = disk.write_zeroes(offset, len64, kind % 6 == 4);
                assert!(fits || r.is_err());
            }
            _ => {
                let _ = disk.flush();
            }
        }
    }
    drop(disk);
    let _ = std::fs::remove_file(&path);
});
