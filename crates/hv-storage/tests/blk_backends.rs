//! Block backends against real files: bytes move between files and guest memory, discard and
//! write-zeroes zero what they should, qcow2 images stay valid for qemu-img.

mod blk_common;

use std::fs::File;
use std::sync::Arc;

use blk_common::*;
use hv_storage::block::raw_uring::uring_available;
use hv_storage::block::{
    open_disk, BlockBackend, BlockError, Confinement, DiskFormat, DiskOptions, Engine, GuestSlice,
    ImageFormat, RawSyncDisk, Segment, SegmentDisk, SegmentPath,
};
use hv_storage::format::{probe_path, FormatError};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

const MIB: usize = 1 << 20;

fn slices<'a>(mem: &'a hv_mem::GuestMemory, parts: &[(u64, usize)]) -> Vec<GuestSlice<'a>> {
    parts.iter().map(|&(a, l)| mem.get_slice(GuestAddress(a), l).expect("slice")).collect()
}

/// Reads 3 uneven slices at an offset, writes them elsewhere, and checks the file.
fn roundtrip(disk: &mut dyn BlockBackend, path: &std::path::Path, seed: u8) {
    let ram = ram();
    let mem = ram.memory();
    let parts = [(0x20_0000u64, 1024usize), (0x30_0100, 3072), (0x40_0000, 4096)];
    let bufs = slices(mem, &parts);
    disk.read_vectored(8192, &bufs).expect("read");
    let file = pattern(MIB, seed);
    let mut off = 8192;
    for &(a, l) in &parts {
        let mut got = vec![0u8; l];
        mem.read_slice(&mut got, GuestAddress(a)).unwrap();
        assert_eq!(got, file[off..off + l], "guest bytes at {a:#x}");
        off += l;
    }
    // Reading into guest RAM logs the pages as dirty (device DMA).
    let (region, rel) = mem.to_region_addr(GuestAddress(0x30_0100)).unwrap();
    assert!(region.bitmap().dirty_at(rel.0 as usize));

    let data = pattern(8192, seed.wrapping_add(7));
    mem.write_slice(&data[..1024], GuestAddress(0x20_0000)).unwrap();
    mem.write_slice(&data[1024..4096], GuestAddress(0x30_0100)).unwrap();
    mem.write_slice(&data[4096..], GuestAddress(0x40_0000)).unwrap();
    disk.write_vectored(512 * 1000, &bufs).expect("write");
    disk.flush().expect("flush");
    let on_disk = std::fs::read(path).unwrap();
    assert_eq!(on_disk[512 * 1000..512 * 1000 + 8192], data[..]);
    assert_eq!(on_disk[..8192], file[..8192], "bytes before the write are untouched");
}

#[test]
fn raw_sync_moves_bytes_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 3);
    let mut disk = open_disk(&path, DiskFormat::Raw, DiskOptions::default()).unwrap();
    assert_eq!(disk.size(), MIB as u64);
    assert!(!disk.read_only());
    roundtrip(disk.as_mut(), &path, 3);
}

#[test]
fn raw_uring_moves_bytes_both_ways() {
    hv_test_support::require!(uring_available().is_ok(), "io_uring is not available");
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 5);
    let opts = DiskOptions { engine: Engine::Uring, ..Default::default() };
    let mut disk = open_disk(&path, DiskFormat::Raw, opts).unwrap();
    roundtrip(disk.as_mut(), &path, 5);
    let mut clone = disk.try_clone().unwrap();
    roundtrip(clone.as_mut(), &path, 5);
}

#[test]
fn raw_direct_handles_aligned_and_unaligned_requests() {
    // O_DIRECT needs a file system that supports it: the temp dir is on the root file system.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 9);
    hv_test_support::require!(direct_io_supported(dir.path()), "O_DIRECT on the target dir");
    let mut disk = RawSyncDisk::open(&path, false, true).unwrap();
    assert!(disk.is_direct());
    assert_eq!(disk.block_size(), 4096);
    // Aligned: straight into guest memory. Unaligned (512-byte offset, odd address): bounced.
    roundtrip(&mut disk, &path, 9);
    if uring_available().is_ok() {
        let opts = DiskOptions { direct: true, engine: Engine::Uring, ..Default::default() };
        let mut disk = open_disk(&path, DiskFormat::Raw, opts).unwrap();
        let ram = ram();
        let mem = ram.memory();
        let bufs = slices(mem, &[(0x20_0000, 8192)]);
        disk.read_vectored(4096, &bufs).unwrap();
        let mut got = vec![0u8; 8192];
        mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(got, std::fs::read(&path).unwrap()[4096..4096 + 8192]);
    }
}

#[test]
fn raw_direct_refuses_unaligned_size() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    hv_test_support::require!(direct_io_supported(dir.path()), "O_DIRECT on the target dir");
    let path = raw_file(dir.path(), "odd.raw", 4096 + 512, 1);
    match RawSyncDisk::open(&path, false, true) {
        Err(BlockError::UnalignedSize { size: 4608, align: 4096 }) => {}
        other => panic!("expected UnalignedSize, got {other:?}"),
    }
}

fn zero_ops(disk: &mut dyn BlockBackend, read_back: impl Fn() -> Vec<u8>) {
    disk.write_zeroes(4096, 8192, false).unwrap();
    disk.write_zeroes(65536, 4096 * 3, true).unwrap();
    disk.discard(131072, 65536).unwrap();
    disk.flush().unwrap();
    let got = read_back();
    assert!(got[4096..4096 + 8192].iter().all(|&b| b == 0), "write-zeroes");
    assert!(got[65536..65536 + 12288].iter().all(|&b| b == 0), "write-zeroes with unmap");
    assert_ne!(got[4095], 0, "byte before the zeroed range is kept");
    assert_eq!(got[4096 + 8192..4096 + 8192 + 16], pattern(MIB, 4)[12288..12288 + 16]);
}

#[test]
fn raw_write_zeroes_and_discard() {
    for dir in [tempfile::tempdir().unwrap(), tempfile::tempdir_in("/dev/shm").unwrap()] {
        let path = raw_file(dir.path(), "disk.raw", MIB, 4);
        let mut disk = open_disk(&path, DiskFormat::Raw, DiskOptions::default()).unwrap();
        zero_ops(disk.as_mut(), || std::fs::read(&path).unwrap());
        // Hole punching on a regular file reads back zeroes after a discard.
        assert!(std::fs::read(&path).unwrap()[131072..196608].iter().all(|&b| b == 0));
    }
}

#[test]
fn read_only_and_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), "disk.raw", MIB, 2);
    let opts = DiskOptions { read_only: true, ..Default::default() };
    let mut disk = open_disk(&path, DiskFormat::Raw, opts).unwrap();
    assert!(disk.read_only());
    let ram = ram();
    let bufs = slices(ram.memory(), &[(0x20_0000, 512)]);
    assert!(matches!(disk.write_vectored(0, &bufs), Err(BlockError::ReadOnly { .. })));
    assert!(matches!(disk.discard(0, 512), Err(BlockError::ReadOnly { .. })));
    assert!(matches!(disk.write_zeroes(0, 512, false), Err(BlockError::ReadOnly { .. })));
    assert!(matches!(
        disk.read_vectored(MIB as u64 - 256, &bufs),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(disk.read_vectored(u64::MAX - 10, &bufs), Err(BlockError::OutOfRange { .. })));
    assert_eq!(std::fs::read(&path).unwrap(), pattern(MIB, 2));
}

#[test]
fn format_is_probed_from_contents_not_name_and_only_when_asked() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().unwrap();
    let fake = raw_file(dir.path(), "looks-like.qcow2", 4096, 0);
    assert_eq!(probe_path(&fake).unwrap().format(), ImageFormat::Raw);
    let real = dir.path().join("disk.img");
    qemu_img(&["create", "-q", "-f", "qcow2", real.to_str().unwrap(), "1M"]);
    assert_eq!(probe_path(&real).unwrap().format(), ImageFormat::Qcow2);
    let disk = open_disk(&real, DiskFormat::Auto, DiskOptions::default()).unwrap();
    assert_eq!(disk.size(), MIB as u64);
    assert!(format!("{disk:?}").contains("Qcow2Disk"));
    // Without `Auto` nothing is probed: the default is raw, header bytes and all.
    let disk = open_disk(&real, DiskFormat::default(), DiskOptions::default()).unwrap();
    assert!(format!("{disk:?}").contains("RawSyncDisk"));
    assert_eq!(disk.size(), std::fs::metadata(&real).unwrap().len());
    let empty = dir.path().join("empty");
    File::create(&empty).unwrap();
    assert_eq!(probe_path(&empty).unwrap().format(), ImageFormat::Raw);
    assert!(matches!(probe_path(&dir.path().join("missing")), Err(FormatError::Io { .. })));
}

#[test]
fn qcow2_overlay_reads_base_writes_on_top_and_passes_qemu_img_check() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().unwrap();
    let (overlay, base) = qcow2_over_raw(dir.path(), MIB, 4);
    {
        let opts = DiskOptions { confinement: allow(&base), ..Default::default() };
        let mut disk = open_disk(&overlay, DiskFormat::Qcow2, opts).unwrap();
        assert_eq!(disk.size(), MIB as u64);
        // Read: the base's bytes show through.
        let ram = ram();
        let mem = ram.memory();
        let parts = [(0x20_0000u64, 1536usize), (0x30_0000, 2560)];
        let bufs = slices(mem, &parts);
        disk.read_vectored(4096 * 10, &bufs).unwrap();
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got[..1536], GuestAddress(0x20_0000)).unwrap();
        mem.read_slice(&mut got[1536..], GuestAddress(0x30_0000)).unwrap();
        assert_eq!(got, pattern(MIB, 4)[40960..40960 + 4096]);
        // Write across a cluster boundary (64 KiB clusters).
        let data = pattern(4096, 99);
        mem.write_slice(&data[..1536], GuestAddress(0x20_0000)).unwrap();
        mem.write_slice(&data[1536..], GuestAddress(0x30_0000)).unwrap();
        disk.write_vectored(4 * 65536 - 2048, &bufs).unwrap();
        zero_ops(disk.as_mut(), || qemu_img_contents(&overlay, dir.path()));
        disk.flush().unwrap();
    }
    qemu_img_check(&overlay);
    let contents = qemu_img_contents(&overlay, dir.path());
    assert_eq!(contents[4 * 65536 - 2048..4 * 65536 + 2048], pattern(4096, 99)[..]);
    assert_eq!(std::fs::read(&base).unwrap(), pattern(MIB, 4), "the base stays untouched");
}

#[test]
fn qcow2_read_only_and_backing_chain_of_qcow2() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().unwrap();
    let (mid, _base) = qcow2_over_raw(dir.path(), MIB, 8);
    let top = dir.path().join("top.qcow2");
    qcow2_overlay(&mid, "qcow2", &top, None);
    let confinement = Confinement::none().allow_dir(dir.path()).unwrap();
    let opts = DiskOptions { read_only: true, confinement, ..Default::default() };
    let mut disk = open_disk(&top, DiskFormat::Qcow2, opts).unwrap();
    let ram = ram();
    let mem = ram.memory();
    let bufs = slices(mem, &[(0x20_0000, 4096)]);
    disk.read_vectored(MIB as u64 - 4096, &bufs).unwrap();
    let mut got = vec![0u8; 4096];
    mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(got, pattern(MIB, 8)[MIB - 4096..]);
    assert!(matches!(disk.write_vectored(0, &bufs), Err(BlockError::ReadOnly { .. })));
    assert!(matches!(disk.read_vectored(MIB as u64, &bufs), Err(BlockError::OutOfRange { .. })));
}

#[test]
fn segments_split_requests_over_extents() {
    let dir = tempfile::tempdir().unwrap();
    let a = raw_file(dir.path(), "pv-a", 2 * MIB, 1);
    let b = raw_file(dir.path(), "pv-b", 2 * MIB, 2);
    let open = |p: &std::path::Path| {
        Arc::new(std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap())
    };
    let (fa, fb) = (open(&a), open(&b));
    let segs = vec![
        Segment { disk_offset: 0, len: MIB as u64, file: fa.clone(), file_offset: MIB as u64 / 2 },
        Segment { disk_offset: MIB as u64, len: MIB as u64 / 2, file: fb.clone(), file_offset: 0 },
        Segment { disk_offset: 3 * MIB as u64 / 2, len: 4096, file: fa.clone(), file_offset: 0 },
    ];
    let mut disk = SegmentDisk::new(segs, false).unwrap();
    assert_eq!(disk.size(), 3 * MIB as u64 / 2 + 4096);
    let ram = ram();
    let mem = ram.memory();
    // A read across the first boundary, in two slices that do not line up with it.
    let parts = [(0x20_0000u64, 3000usize), (0x30_0000, 5192)];
    let bufs = slices(mem, &parts);
    let off = MIB as u64 - 4096;
    disk.read_vectored(off, &bufs).unwrap();
    let mut got = vec![0u8; 8192];
    mem.read_slice(&mut got[..3000], GuestAddress(0x20_0000)).unwrap();
    mem.read_slice(&mut got[3000..], GuestAddress(0x30_0000)).unwrap();
    let (pa, pb) = (pattern(2 * MIB, 1), pattern(2 * MIB, 2));
    assert_eq!(got[..4096], pa[MIB + MIB / 2 - 4096..MIB + MIB / 2]);
    assert_eq!(got[4096..], pb[..4096]);
    // A write across the second boundary lands in both files.
    let data = pattern(8192, 50);
    mem.write_slice(&data[..3000], GuestAddress(0x20_0000)).unwrap();
    mem.write_slice(&data[3000..], GuestAddress(0x30_0000)).unwrap();
    let bufs = slices(mem, &[(0x20_0000, 3000), (0x30_0000, 1096)]);
    disk.write_vectored(3 * MIB as u64 / 2 - 2048, &bufs).unwrap();
    disk.flush().unwrap();
    assert_eq!(std::fs::read(&b).unwrap()[MIB / 2 - 2048..MIB / 2], data[..2048]);
    assert_eq!(std::fs::read(&a).unwrap()[..2048], data[2048..4096]);
    // Zeroing across extents.
    disk.write_zeroes(MIB as u64 - 512, 1024, false).unwrap();
    assert!(std::fs::read(&a).unwrap()[MIB + MIB / 2 - 512..MIB + MIB / 2].iter().all(|&x| x == 0));
    assert!(std::fs::read(&b).unwrap()[..512].iter().all(|&x| x == 0));
    assert!(matches!(
        disk.read_vectored(disk.size() - 512, &bufs),
        Err(BlockError::OutOfRange { .. })
    ));
}

#[test]
fn segment_lists_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let f = Arc::new(File::open(raw_file(dir.path(), "pv", 4096, 0)).unwrap());
    let seg = |disk_offset, len| Segment { disk_offset, len, file: f.clone(), file_offset: 0 };
    let err = |segs| SegmentDisk::new(segs, true).unwrap_err();
    assert!(matches!(err(vec![seg(0, 0)]), BlockError::InvalidSegments { index: 0, .. }));
    assert!(matches!(err(vec![seg(512, 512)]), BlockError::InvalidSegments { index: 0, .. }));
    assert!(matches!(
        err(vec![seg(0, 512), seg(1024, 512)]),
        BlockError::InvalidSegments { index: 1, .. }
    ));
    let overflow = Segment { disk_offset: 0, len: 512, file: f.clone(), file_offset: u64::MAX };
    assert!(matches!(err(vec![overflow]), BlockError::InvalidSegments { index: 0, .. }));
    assert_eq!(SegmentDisk::new(vec![], true).unwrap().size(), 0);
}

#[test]
fn segment_disks_open_by_path_with_every_extent_inside_its_pv() {
    let dir = tempfile::tempdir().unwrap();
    let a = raw_file(dir.path(), "pv-a", 8192, 3);
    let b = raw_file(dir.path(), "pv-b", 4096, 4);
    let ext = |path: &std::path::Path, file_offset, len| SegmentPath {
        path: path.to_path_buf(),
        file_offset,
        len,
    };
    let disk =
        SegmentDisk::open(&[ext(&a, 4096, 4096), ext(&b, 0, 4096), ext(&a, 0, 512)], true).unwrap();
    assert_eq!((disk.size(), disk.read_only()), (8704, true));
    // An extent past its PV's end, an overflowing one, and a missing PV are refused.
    let err = SegmentDisk::open(&[ext(&a, 0, 512), ext(&b, 2048, 4096)], false).unwrap_err();
    assert!(matches!(err, BlockError::InvalidSegments { index: 1, .. }), "{err}");
    let err = SegmentDisk::open(&[ext(&a, u64::MAX, 1)], false).unwrap_err();
    assert!(matches!(err, BlockError::InvalidSegments { index: 0, .. }), "{err}");
    let gone = dir.path().join("gone");
    let err = SegmentDisk::open(&[ext(&gone, 0, 512)], false).unwrap_err();
    assert!(matches!(&err, BlockError::Open { path, .. } if *path == gone), "{err}");
}

#[test]
fn qcow2_direct_reads_and_writes_unaligned_guest_buffers() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    hv_test_support::require!(direct_io_supported(dir.path()), "O_DIRECT on the target dir");
    let (overlay, base) = qcow2_over_raw(dir.path(), MIB, 6);
    let opts = DiskOptions { direct: true, confinement: allow(&base), ..Default::default() };
    let mut disk = open_disk(&overlay, DiskFormat::Qcow2, opts).unwrap();
    let ram = ram();
    let mem = ram.memory();
    let bufs = slices(mem, &[(0x20_0100, 1024), (0x30_0000, 512)]);
    disk.read_vectored(512 * 3, &bufs).unwrap();
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(0x20_0100)).unwrap();
    assert_eq!(got, pattern(MIB, 6)[1536..2560]);
    mem.write_slice(&pattern(1536, 42)[..1024], GuestAddress(0x20_0100)).unwrap();
    mem.write_slice(&pattern(1536, 42)[1024..], GuestAddress(0x30_0000)).unwrap();
    disk.write_vectored(512 * 7, &bufs).unwrap();
    disk.flush().unwrap();
    drop(disk);
    qemu_img_check(&overlay);
    assert_eq!(qemu_img_contents(&overlay, dir.path())[3584..3584 + 1536], pattern(1536, 42)[..]);
}

#[test]
fn qcow2_images_from_qemu_img_convert_are_read_compressed_or_not() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_file(dir.path(), "src.raw", 2 * MIB, 33);
    // Half the image zeroes, so the converted image has unallocated clusters too.
    std::fs::OpenOptions::new().write(true).open(&raw).unwrap().set_len(MIB as u64).unwrap();
    std::fs::OpenOptions::new().write(true).open(&raw).unwrap().set_len(2 * MIB as u64).unwrap();
    let ram = ram();
    let mem = ram.memory();
    for (name, extra) in [("plain.qcow2", None), ("compressed.qcow2", Some("-c"))] {
        let out = dir.path().join(name);
        let mut args = vec!["convert", "-q", "-O", "qcow2"];
        args.extend(extra);
        args.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
        qemu_img(&args);
        let mut disk = open_disk(&out, DiskFormat::Qcow2, DiskOptions::default()).unwrap();
        assert_eq!(disk.size(), 2 * MIB as u64);
        let bufs = slices(mem, &[(0x20_0000, 2 * MIB)]);
        disk.read_vectored(0, &bufs).unwrap();
        let mut got = vec![0u8; 2 * MIB];
        mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        let mut want = pattern(2 * MIB, 33);
        want[MIB..].fill(0);
        assert!(got == want, "{name} reads back what qemu-img converted");
        // Writing over a compressed cluster works and keeps the image valid.
        disk.write_vectored(4096, &slices(mem, &[(0x20_0000, 4096)])).unwrap();
        disk.flush().unwrap();
        drop(disk);
        qemu_img_check(&out);
    }
}

fn allow(file: &std::path::Path) -> Confinement {
    Confinement::none().allow_file(file).unwrap()
}

#[test]
fn a_raw_disk_with_a_guest_written_qcow2_header_never_opens_its_backing_file() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().unwrap();
    // A "raw" disk whose guest wrote a qcow2 header naming a host file as backing file.
    let secret = raw_file(dir.path(), "host-secret", 65536, 77);
    let disk = dir.path().join("guest.raw");
    qcow2_overlay(&secret, "raw", &disk, Some("64K"));
    let opened = open_disk(&disk, DiskFormat::Raw, DiskOptions::default()).unwrap();
    assert_eq!(opened.size(), std::fs::metadata(&disk).unwrap().len(), "opened as raw bytes");
    // Probing or naming qcow2 without an allowance: the backing file is refused, typed.
    for format in [DiskFormat::Auto, DiskFormat::Qcow2] {
        match open_disk(&disk, format, DiskOptions::default()) {
            Err(BlockError::NotAllowed { what: "backing file", file, .. }) => {
                assert_eq!(file.canonicalize().unwrap(), secret.canonicalize().unwrap())
            }
            other => panic!("{format:?}: expected NotAllowed, got {other:?}"),
        }
    }
    // Allowed elsewhere (another file, a directory the secret is not directly in): refused.
    let other = raw_file(dir.path(), "other", 4096, 1);
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    for confinement in [allow(&other), Confinement::none().allow_dir(&sub).unwrap()] {
        let opts = DiskOptions { confinement, ..Default::default() };
        let r = open_disk(&disk, DiskFormat::Auto, opts);
        assert!(matches!(r, Err(BlockError::NotAllowed { .. })), "{r:?}");
    }
    // A symlink in an allowed directory pointing at the secret resolves to the secret.
    let link_dir = dir.path().join("links");
    std::fs::create_dir(&link_dir).unwrap();
    std::os::unix::fs::symlink(&secret, link_dir.join("base")).unwrap();
    let via_link = link_dir.join("top.qcow2");
    qcow2_overlay(&link_dir.join("base"), "raw", &via_link, Some("64K"));
    let opts = DiskOptions {
        confinement: Confinement::none().allow_dir(&link_dir).unwrap(),
        ..Default::default()
    };
    let r = open_disk(&via_link, DiskFormat::Qcow2, opts);
    assert!(matches!(r, Err(BlockError::NotAllowed { .. })), "{r:?}");
    // Explicitly allowed: it opens.
    let opts = DiskOptions { confinement: allow(&secret), ..Default::default() };
    assert_eq!(open_disk(&disk, DiskFormat::Qcow2, opts).unwrap().size(), 65536);
    // A pinned qcow2 that is not one is a mismatch.
    let fake = raw_file(dir.path(), "fake.qcow2", 4096, 0);
    assert!(matches!(
        open_disk(&fake, DiskFormat::Qcow2, DiskOptions::default()),
        Err(BlockError::FormatMismatch {
            expected: ImageFormat::Qcow2,
            probed: ImageFormat::Raw,
            ..
        })
    ));
}

#[test]
fn a_backing_file_without_a_stated_format_is_never_probed() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().unwrap();
    let base = raw_file(dir.path(), "base", 65536, 3);
    let top = dir.path().join("top.qcow2");
    qcow2_overlay(&base, "raw", &top, Some("64K"));
    // Turn the backing-format extension into an unknown one (qemu-img refuses to write an
    // overlay without it; older tools did not).
    let mut bytes = std::fs::read(&top).unwrap();
    let magic = 0xE279_2ACAu32.to_be_bytes();
    let at = bytes.windows(4).position(|w| w == magic).expect("backing format extension");
    bytes[at..at + 4].copy_from_slice(&0x0bad_0badu32.to_be_bytes());
    std::fs::write(&top, bytes).unwrap();
    let opts = DiskOptions { confinement: allow(&base), ..Default::default() };
    let r = open_disk(&top, DiskFormat::Qcow2, opts);
    assert!(matches!(r, Err(BlockError::BackingFormatUnknown { .. })), "{r:?}");
}

#[test]
fn a_data_file_is_confined_like_a_backing_file() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.raw");
    let img = dir.path().join("img.qcow2");
    let opt = format!("data_file={}", data.display());
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", &opt, img.to_str().unwrap(), "1M"]);
    let r = open_disk(&img, DiskFormat::Qcow2, DiskOptions::default());
    assert!(matches!(r, Err(BlockError::NotAllowed { what: "data file", .. })), "{r:?}");
    let opts = DiskOptions { confinement: allow(&data), ..Default::default() };
    assert_eq!(open_disk(&img, DiskFormat::Qcow2, opts).unwrap().size(), MIB as u64);
}

/// Rewrites the feature-name table extension of a fresh qcow2 image to `len` bytes.
fn qcow2_with_feature_table_len(
    dir: &std::path::Path,
    len: impl Fn(u32) -> u32,
) -> std::path::PathBuf {
    let path = dir.join("bad.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path.to_str().unwrap(), "1M"]);
    let mut bytes = std::fs::read(&path).unwrap();
    let magic = 0x6803_f857u32.to_be_bytes();
    let at = bytes.windows(4).position(|w| w == magic).expect("feature name table");
    let old = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().unwrap());
    bytes[at + 4..at + 8].copy_from_slice(&len(old).to_be_bytes());
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_qcow2_image_that_panics_imago_is_refused_by_hvs_header_check() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().unwrap();
    // A table ending in a 1-byte entry (imago 0.2.6 slices it as `entry[2..]`), one longer
    // than the cluster, and one of a single byte.
    let cases: [fn(u32) -> u32; 3] = [|l| l - 47, |_| 70_000, |_| 1];
    for len in cases {
        let path = qcow2_with_feature_table_len(dir.path(), len);
        for format in [DiskFormat::Qcow2, DiskFormat::Auto] {
            match open_disk(&path, format, DiskOptions::default()) {
                Err(BlockError::BadHeader { reason, .. }) => {
                    assert!(reason.contains("feature name table") || reason.contains("extension"))
                }
                Err(other) => panic!("expected BadHeader, got {other}"),
                Ok(_) => panic!("a damaged feature-name table was accepted"),
            }
        }
        std::fs::remove_file(&path).unwrap();
    }
}

/// A qcow2 whose refcount table lost an entry (found by the `qcow2_io` fuzzer): imago 0.2.6's
/// allocator recursed until the stack overflowed on the first write, killing the VMM. hv
/// refuses to open such an image writable; read-only access, which never allocates, still works.
#[test]
fn a_qcow2_with_a_zeroed_refcount_entry_is_refused_for_writing() {
    use std::os::unix::fs::FileExt;
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("damaged.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        img.to_str().unwrap(),
        "1M",
    ]);
    // Healthy: opens writable.
    assert!(open_disk(&img, DiskFormat::Qcow2, DiskOptions::default()).is_ok());
    // The refcount table starts at cluster 1 (0x200) for 512-byte clusters: zero entry 0.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[0u8; 8], 0x200).unwrap();
    drop(f);
    let err = open_disk(&img, DiskFormat::Qcow2, DiskOptions::default()).unwrap_err();
    assert!(matches!(err, BlockError::BadHeader { .. }), "{err}");
    assert!(err.to_string().contains("refcount table entry 0"), "{err}");
    let ro = DiskOptions { read_only: true, ..DiskOptions::default() };
    let disk = open_disk(&img, DiskFormat::Qcow2, ro).expect("read-only open still works");
    assert_eq!(disk.size(), MIB as u64);
}

#[test]
fn a_backing_name_with_dot_dot_is_refused_even_when_it_lands_in_an_allowed_place() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let dir = tempfile::tempdir().unwrap();
    let base = raw_file(dir.path(), "base", 65536, 5);
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    // sub/../base is the allowed directory's own file, but the name climbs: refused.
    let top = sub.join("top.qcow2");
    qcow2_overlay(std::path::Path::new("../base"), "raw", &top, Some("64K"));
    let opts = DiskOptions {
        confinement: Confinement::none().allow_dir(dir.path()).unwrap(),
        ..Default::default()
    };
    match open_disk(&top, DiskFormat::Qcow2, opts) {
        Err(BlockError::NotAllowed { what: "backing file", reason, .. }) => {
            assert!(reason.contains(".."), "{reason}")
        }
        other => panic!("expected NotAllowed, got {other:?}"),
    }
    // The same base named plainly from next to it opens.
    let next = dir.path().join("next.qcow2");
    qcow2_overlay(std::path::Path::new("base"), "raw", &next, Some("64K"));
    let opts = DiskOptions {
        confinement: Confinement::none().allow_dir(dir.path()).unwrap(),
        ..Default::default()
    };
    assert_eq!(open_disk(&next, DiskFormat::Qcow2, opts).unwrap().size(), 65536);
    drop(base);
}
