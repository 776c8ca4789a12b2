//! qcow2 images are untrusted (a tenant uploads one): opening one whose metadata is damaged,
//! and reading, writing, discarding and zeroing through it, must give typed errors, never a
//! panic, and never an access outside the virtual disk.
//!
//! Input: an operation count, operations of 8 bytes (kind, offset in 512-byte units as u32,
//! length in 512-byte units as u16, fill byte), then the image. Images are made with qemu-img
//! (see `gen_seeds.py`); the fuzzer damages their header, L1/L2 and refcount tables.
//!
//! Any panic is a crash (imago 0.2.6's feature-name table panic, finding F2, is refused by
//! hv's header check before imago parses anything; see `disk_image`). Images naming a backing
//! or external data file are opened read-only and not written: imago's
//! permissive open would follow the name to a host file, which this target must not modify.
//!
//! Finding F1 (README, regressions/qcow2_io/): a write to an image whose refcount table has a
//! zero entry for clusters the file already uses recursed in imago 0.2.6's allocator until the
//! stack overflowed. hv now refuses to open such an image writable; this target checks that
//! it does, and reads such images through a read-only open.
#![no_main]

use hv_fuzz::{scratch_dir, Reader};
use hv_mem::{GuestRam, MemoryConfig};
use hv_storage::block::{open_disk, DiskFormat, DiskOptions};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const RAM: u64 = 2 << 20;

const MAX_IO: usize = 128 << 10;

/// Whether the header names a file outside the image (backing file, or the external data file
/// incompatible feature of a version 3 header).
fn names_other_files(image: &[u8]) -> bool {
    let be64 =
        |at: usize| image.get(at..at + 8).map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
    be64(8) != 0 || be64(72) & 0b100 != 0 || image.len() < 104
}

/// Whether some cluster the file holds has no refcount block (a zero refcount table entry, or
/// one past the table): imago 0.2.6 overflows its stack allocating a cluster in such an image.
fn refcounts_missing(image: &[u8]) -> bool {
    // A big-endian field at `at` (zero when the image is shorter).
    let be = |at: u64, n: usize| {
        let field = usize::try_from(at).ok().and_then(|a| image.get(a..a.checked_add(n)?));
        field.map_or(0, |b| b.iter().fold(0u64, |v, &x| v << 8 | u64::from(x)))
    };
    let cluster_bits = be(20, 4);
    let version = be(4, 4);
    let refcount_order = if version >= 3 { be(96, 4) } else { 4 };
    if !(9..=21).contains(&cluster_bits) || refcount_order > 6 {
        return false; // imago refuses these at open
    }
    let cluster = 1u64 << cluster_bits;
    let per_block = (cluster * 8) >> refcount_order;
    let table = be(48, 8);
    let table_len = be(56, 4) * cluster / 8;
    let clusters = (image.len() as u64).div_ceil(cluster);
    let blocks = clusters.div_ceil(per_block);
    (0..blocks).any(|i| i >= table_len || table.checked_add(i * 8).is_none_or(|at| be(at, 8) == 0))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Reader::new(data);
    let count = input.u8() % 16;
    let ops: Vec<(u8, u32, u16, u8)> =
        (0..count).map(|_| (input.u8(), input.u32(), input.u16(), input.u8())).collect();
    let image = input.rest();
    let path = scratch_dir().join("image.qcow2");
    if std::fs::write(&path, image).is_err() {
        return;
    }
    let missing = refcounts_missing(image);
    let mut read_only = names_other_files(image);
    let mut opened =
        open_disk(&path, DiskFormat::Qcow2, DiskOptions { read_only, ..DiskOptions::default() });
    if opened.is_ok() && !read_only {
        assert!(!missing, "opened writable an image whose refcount table misses clusters in use");
    }
    if opened.is_err() && missing && !read_only {
        read_only = true;
        opened = open_disk(
            &path,
            DiskFormat::Qcow2,
            DiskOptions { read_only, ..DiskOptions::default() },
        );
    }
    let Ok(mut disk) = opened else { return };
    hv_fuzz::reached("opened");
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
