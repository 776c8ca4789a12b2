//! Logical pools over PV files: extent maps, byte access through them, snapshots, resize,
//! refusals (foreign PVs, data on a device, no space) and metadata damage.

mod pool_common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use hv_storage::pool::logical::metadata::MetadataError;
use hv_storage::pool::{
    BuildFlags, Pool, PoolDef, PoolError, PoolState, ResizeFlags, VolFormat, VolumeIo, VolumeSpec,
};
use pool_common::{pattern, read_all, Env};

const MIB: u64 = 1 << 20;

fn lv(name: &str, cap: u64) -> VolumeSpec {
    VolumeSpec::builder(name).capacity(cap).build().unwrap()
}

#[test]
fn volumes_span_pvs_and_segments_translate_to_pv_bytes() {
    let env = Env::new();
    let mut pool = env.logical_pool("vg", &[12, 12]);
    let info = pool.info().unwrap();
    // 12 MiB minus the 1 MiB label and metadata area: 11 extents per PV.
    assert_eq!((info.capacity, info.allocation, info.available), (22 * MIB, 0, 22 * MIB));
    pool.create_volume(&lv("a", 3 * MIB)).unwrap();
    // 15.5 MiB cannot fit on one PV any more: it spans both.
    let big = pool.create_volume(&lv("big", 15 * MIB + MIB / 2)).unwrap();
    assert_eq!(
        (big.format, big.capacity, big.allocation),
        (VolFormat::Raw, 15 * MIB + MIB / 2, 16 * MIB)
    );
    assert!(big.path.is_none());
    assert_eq!(big.key, "vg/big");
    assert!(matches!(pool.volume_path("big"), Err(PoolError::NoHostPath { .. })));
    let lp = pool.as_logical().unwrap();
    let segs = lp.lv_segments("big").unwrap();
    assert!(segs.len() >= 2, "{segs:?}");
    let mut next = 0;
    for s in &segs {
        assert_eq!(s.lv_offset, next);
        assert!(s.pv_offset >= MIB && s.pv_offset % MIB == 0);
        next += s.len;
    }
    assert_eq!(next, 15 * MIB + MIB / 2);

    // Write through the device; read the PV files directly at the translated offsets.
    let data = pattern(next as usize, 42);
    let dev = lp.open_lv("big", true).unwrap();
    dev.write_at(&data, 0).unwrap();
    dev.flush().unwrap();
    for s in &segs {
        let f = fs::File::open(&s.pv_path).unwrap();
        let mut buf = vec![0u8; s.len as usize];
        f.read_exact_at(&mut buf, s.pv_offset).unwrap();
        assert!(buf[..] == data[s.lv_offset as usize..(s.lv_offset + s.len) as usize]);
    }
    assert!(dev.write_at(&[0], next).is_err(), "writes past the end are refused");
    let ro = lp.open_lv("big", false).unwrap();
    assert!(ro.write_at(&[0], 0).is_err());
    assert!(read_all(&pool, "big") == data);
    // The block layer's extent-list disk takes the same map.
    let disk = hv_storage::block::SegmentDisk::new(dev.block_segments(), true).unwrap();
    assert_eq!(hv_storage::block::BlockBackend::size(&disk), next);

    assert_eq!(pool.info().unwrap().available, 3 * MIB);
    assert!(matches!(pool.create_volume(&lv("c", 4 * MIB)), Err(PoolError::NoSpace { .. })));
    assert!(matches!(pool.create_volume(&lv("a", MIB)), Err(PoolError::VolumeExists { .. })));
    let q = VolumeSpec::builder("q").format(VolFormat::Qcow2).capacity(MIB).build().unwrap();
    assert!(matches!(pool.create_volume(&q), Err(PoolError::Unsupported { .. })));
}

#[test]
fn new_extents_read_as_zeroes_and_snapshots_are_independent_copies() {
    let env = Env::new();
    let mut pool = env.logical_pool("vg", &[10]);
    pool.create_volume(&lv("a", 4 * MIB)).unwrap();
    let data = pattern(4 << 20, 1);
    pool.upload_volume("a", &mut &data[..], 0, &mut |_, _| {}).unwrap();
    let snap = VolumeSpec::builder("snap").backing("a").build().unwrap();
    let s = pool.create_volume(&snap).unwrap();
    assert_eq!((s.capacity, s.backing.as_deref()), (4 * MIB, Some("a")));
    assert!(read_all(&pool, "snap") == data);
    pool.open_volume("a", true).unwrap().write_at(&[9; 100], 0).unwrap();
    assert!(read_all(&pool, "snap") == data, "the snapshot keeps the data at creation");
    // Deleting frees extents; a new volume on them reads zeroes, not the old data.
    pool.delete_volume("snap").unwrap();
    pool.delete_volume("a").unwrap();
    assert!(matches!(pool.delete_volume("a"), Err(PoolError::VolumeNotFound { .. })));
    pool.create_volume(&lv("fresh", 9 * MIB)).unwrap();
    assert!(read_all(&pool, "fresh").iter().all(|&b| b == 0));
}

#[test]
fn resize_grows_in_place_and_shrinks_only_with_the_flag() {
    let env = Env::new();
    let mut pool = env.logical_pool("vg", &[20]);
    pool.create_volume(&lv("a", 2 * MIB + 5)).unwrap();
    let data = pattern((2 * MIB + 5) as usize, 3);
    pool.upload_volume("a", &mut &data[..], 0, &mut |_, _| {}).unwrap();
    pool.resize_volume("a", 6 * MIB, ResizeFlags::default()).unwrap();
    let lp = pool.as_logical().unwrap();
    assert_eq!(lp.lv_segments("a").unwrap().len(), 1, "grown in place");
    let back = read_all(&pool, "a");
    assert!(back[..data.len()] == data[..]);
    assert!(back[data.len()..].iter().all(|&b| b == 0));
    assert!(matches!(
        pool.resize_volume("a", MIB, ResizeFlags::default()),
        Err(PoolError::ShrinkRefused { .. })
    ));
    pool.resize_volume("a", MIB + 10, ResizeFlags { allow_shrink: true }).unwrap();
    assert_eq!(pool.volume_info("a").unwrap().allocation, 2 * MIB);
    // Growing again exposes zeroes, not the bytes cut off before.
    pool.resize_volume("a", 2 * MIB, ResizeFlags::default()).unwrap();
    let back = read_all(&pool, "a");
    assert!(back[..(MIB + 10) as usize] == data[..(MIB + 10) as usize]);
    assert!(back[(MIB + 10) as usize..].iter().all(|&b| b == 0));
    let c = pool.clone_volume("a", "b").unwrap();
    assert_eq!(c.backing, None);
    assert!(read_all(&pool, "b") == read_all(&pool, "a"));
    assert!(matches!(
        pool.resize_volume("b", 100 * MIB, ResizeFlags::default()),
        Err(PoolError::NoSpace { .. })
    ));
}

#[test]
fn metadata_survives_reopen_and_delete_requires_an_empty_group() {
    let env = Env::new();
    let mut pool = env.logical_pool("vg", &[8, 8]);
    pool.create_volume(&lv("a", 3 * MIB)).unwrap();
    pool.create_volume(&lv("b", 5 * MIB)).unwrap();
    let before = pool.as_logical().unwrap().metadata().unwrap().clone();
    drop(pool);
    let mut pool = env.mgr.open("vg").unwrap();
    assert_eq!(pool.state(), PoolState::Running);
    assert_eq!(pool.as_logical().unwrap().metadata().unwrap(), &before);
    pool.stop().unwrap();
    assert!(matches!(pool.delete(), Err(PoolError::Invalid { .. })), "volumes remain");
    pool.start().unwrap();
    pool.delete_volume("a").unwrap();
    pool.delete_volume("b").unwrap();
    pool.stop().unwrap();
    pool.delete().unwrap();
    // The labels are gone: starting fails, building again needs no --overwrite.
    assert!(pool.start().is_err());
    pool.build(BuildFlags::default()).unwrap();
    pool.start().unwrap();
    assert!(pool.list_volumes().unwrap().is_empty());
}

#[test]
fn foreign_or_used_devices_are_refused() {
    let env = Env::new();
    let pool = env.logical_pool("vg1", &[8]);
    drop(pool);
    let pv = env.path("vg1-pv0");
    // The same device for another pool: refused at define.
    let def = PoolDef::logical("vg2", [&pv]).build().unwrap();
    assert!(matches!(env.mgr.define(def), Err(PoolError::Invalid { .. })));
    // A copy of a PV of vg1 (another path): refused at build, even with --overwrite.
    let copy = env.path("copy");
    fs::copy(&pv, &copy).unwrap();
    env.mgr.define(PoolDef::logical("vg2", [&copy]).build().unwrap()).unwrap();
    let mut p2 = env.mgr.open("vg2").unwrap();
    for overwrite in [false, true] {
        let r = p2.build(BuildFlags { overwrite });
        assert!(matches!(r, Err(PoolError::PvInUse { ref vg, .. }) if vg == "vg1"), "{r:?}");
    }
    assert!(matches!(p2.start(), Err(PoolError::PvInUse { .. })));
    // A device holding other data: refused unless --overwrite.
    let data = env.path("data");
    fs::write(&data, pattern(8 << 20, 5)).unwrap();
    env.mgr.define(PoolDef::logical("vg3", [&data]).build().unwrap()).unwrap();
    let mut p3 = env.mgr.open("vg3").unwrap();
    assert!(matches!(p3.build(BuildFlags::default()), Err(PoolError::Invalid { .. })));
    p3.build(BuildFlags { overwrite: true }).unwrap();
    // Building vg3 again without --overwrite is refused: it would lose its volumes.
    assert!(matches!(p3.build(BuildFlags::default()), Err(PoolError::Invalid { .. })));
    // Too small for one extent.
    let tiny = env.path("tiny");
    fs::write(&tiny, [0u8; 4096]).unwrap();
    env.mgr.define(PoolDef::logical("vg4", [&tiny]).build().unwrap()).unwrap();
    assert!(env.mgr.open("vg4").unwrap().build(BuildFlags::default()).is_err());
}

fn damage(path: &std::path::Path, offset: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[0xFF; 16], offset).unwrap();
}

#[test]
fn one_bad_copy_is_survived_two_are_reported_never_reinitialised() {
    let env = Env::new();
    let mut pool = env.logical_pool("vg", &[8, 8]);
    pool.create_volume(&lv("a", MIB)).unwrap();
    pool.create_volume(&lv("b", MIB)).unwrap();
    let seq = pool.as_logical().unwrap().metadata().unwrap().seq;
    pool.stop().unwrap();
    let pv0 = env.path("vg-pv0");
    let slot = |s: u64| 4096 + (s % 2) * 510 * 1024;
    // Break the newest copy on pv0: the older one there and the newest on pv1 remain.
    damage(&pv0, slot(seq) + 100);
    pool.start().unwrap();
    assert_eq!(pool.as_logical().unwrap().metadata().unwrap().seq, seq + 1, "repaired");
    assert_eq!(pool.list_volumes().unwrap().len(), 2);
    pool.stop().unwrap();
    // Break both copies on pv0: a typed error, and nothing is rewritten.
    let seq = seq + 1;
    damage(&pv0, slot(seq) + 30);
    damage(&pv0, slot(seq + 1) + 70);
    let before = fs::read(&pv0).unwrap();
    let err = pool.start().unwrap_err();
    assert!(
        matches!(&err, PoolError::Metadata { source: MetadataError::Corrupt { pv, .. }, .. } if *pv == pv0),
        "{err}"
    );
    assert_eq!(pool.state(), PoolState::Inactive);
    assert!(fs::read(&pv0).unwrap() == before, "a corrupt metadata area is left as it is");
    // A damaged label is reported too.
    damage(&env.path("vg-pv1"), 20);
    assert!(matches!(
        pool.start(),
        Err(PoolError::Metadata { source: MetadataError::BadLabel { .. }, .. })
    ));
}

#[test]
fn a_pv_that_missed_a_commit_is_brought_up_to_date() {
    let env = Env::new();
    let mut pool = env.logical_pool("vg", &[8, 8]);
    pool.create_volume(&lv("a", MIB)).unwrap();
    let pv1 = env.path("vg-pv1");
    let old = fs::read(&pv1).unwrap();
    pool.create_volume(&lv("b", MIB)).unwrap();
    let seq = pool.as_logical().unwrap().metadata().unwrap().seq;
    pool.stop().unwrap();
    // pv1 goes back to before the last commit (as if the crash hit before its write).
    fs::write(&pv1, &old).unwrap();
    pool.start().unwrap();
    let names: Vec<String> = pool.list_volumes().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(pool.as_logical().unwrap().metadata().unwrap().seq, seq + 1);
    // Both copies of pv0 broken: reported even though pv1 is fine.
    pool.stop().unwrap();
    let pv0 = env.path("vg-pv0");
    damage(&pv0, 4096 + 20);
    damage(&pv0, 4096 + 510 * 1024 + 20);
    assert!(pool.start().is_err());
}

/// A loop device, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &std::path::Path) -> Option<Loop> {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .ok()?;
        out.status.success().then(|| Loop(String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn block_devices_serve_as_physical_volumes() {
    hv_test_support::require!(hv_test_support::is_root(), "loop devices need root");
    let env = Env::new();
    let backing = env.pv_files("loop", &[24, 24]);
    let loops: Vec<Loop> = backing.iter().filter_map(|f| Loop::attach(f)).collect();
    hv_test_support::require!(loops.len() == 2, "losetup could not attach loop devices");
    let devs: Vec<&str> = loops.iter().map(|l| l.0.as_str()).collect();
    env.mgr
        .define(PoolDef::logical("vgloop", devs.clone()).extent_size(1 << 20).build().unwrap())
        .unwrap();
    let mut pool = env.mgr.open("vgloop").unwrap();
    pool.build(BuildFlags::default()).unwrap();
    pool.start().unwrap();
    assert_eq!(pool.info().unwrap().capacity, 46 * MIB);
    pool.create_volume(&lv("a", 30 * MIB)).unwrap();
    let data = pattern(30 << 20, 8);
    pool.upload_volume("a", &mut &data[..], 0, &mut |_, _| {}).unwrap();
    assert!(read_all(&pool, "a") == data);
    let segs = pool.as_logical().unwrap().lv_segments("a").unwrap();
    assert!(segs.iter().all(|s| devs.contains(&s.pv_path.to_str().unwrap())));
    pool.stop().unwrap();
    drop(pool);
    // The data lives on the devices' backing files, at the translated offsets.
    for s in &segs {
        let i = devs.iter().position(|d| *d == s.pv_path.to_str().unwrap()).unwrap();
        let f = fs::File::open(&backing[i]).unwrap();
        let mut buf = vec![0u8; s.len as usize];
        f.read_exact_at(&mut buf, s.pv_offset).unwrap();
        assert!(buf[..] == data[s.lv_offset as usize..(s.lv_offset + s.len) as usize]);
    }
}
