//! Directory pools through the public API: lifecycle, raw and qcow2 volumes, overlays,
//! resize, clone, upload/download, wipe, and the refusals that protect data.

mod pool_common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use hv_storage::pool::{
    BuildFlags, Pool, PoolDef, PoolError, PoolOp, PoolState, ResizeFlags, VolFormat, VolumeSpec,
};
use pool_common::{pattern, read_all, Env};

fn raw(name: &str, cap: u64) -> VolumeSpec {
    VolumeSpec::builder(name).capacity(cap).build().unwrap()
}

fn qcow2(name: &str, cap: u64) -> VolumeSpec {
    VolumeSpec::builder(name).format(VolFormat::Qcow2).capacity(cap).build().unwrap()
}

#[test]
fn lifecycle_follows_the_state_machine_and_persists() {
    let env = Env::new();
    let target = env.path("images");
    env.mgr.define(PoolDef::dir("images", &target).build().unwrap()).unwrap();
    assert!(matches!(
        env.mgr.define(PoolDef::dir("images", env.path("x")).build().unwrap()),
        Err(PoolError::PoolExists(_))
    ));
    assert!(matches!(
        env.mgr.define(PoolDef::dir("other", &target).build().unwrap()),
        Err(PoolError::Invalid { .. })
    ));
    {
        let mut p = env.mgr.open("images").unwrap();
        assert_eq!(p.state(), PoolState::Inactive);
        assert!(matches!(p.list_volumes(), Err(PoolError::BadState { op: PoolOp::Volumes, .. })));
        assert!(p.start().is_err(), "no directory yet");
        assert_eq!(p.state(), PoolState::Inactive);
        p.build(BuildFlags::default()).unwrap();
        assert!(target.is_dir());
        p.start().unwrap();
        assert_eq!(p.state(), PoolState::Running);
        assert!(matches!(p.start(), Err(PoolError::BadState { op: PoolOp::Start, .. })));
        assert!(matches!(p.delete(), Err(PoolError::BadState { .. })));
        let info = p.info().unwrap();
        assert!(info.capacity > 0 && info.available <= info.capacity);
    }
    // A second manager over the same state directory sees the definition and the state.
    let mgr2 = hv_storage::pool::PoolManager::new(env.path("state")).unwrap();
    let list = mgr2.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].1, PoolState::Running);
    assert!(matches!(mgr2.undefine("images"), Err(PoolError::BadState { .. })));
    let mut p = mgr2.open("images").unwrap();
    p.create_volume(&raw("v", 1 << 20)).unwrap();
    p.stop().unwrap();
    p.start().unwrap();
    p.stop().unwrap();
    // Deleting a directory with volumes is refused and loses nothing.
    assert!(matches!(p.delete(), Err(PoolError::NotEmpty { .. })));
    assert!(target.join("v").exists());
    fs::remove_file(target.join("v")).unwrap();
    p.delete().unwrap();
    assert!(!target.exists());
    drop(p);
    mgr2.undefine("images").unwrap();
    assert!(mgr2.list().unwrap().is_empty());
    assert!(matches!(mgr2.open("images"), Err(PoolError::PoolNotFound(_))));
}

#[test]
fn raw_volumes_are_sparse_and_never_overwritten() {
    let env = Env::new();
    let mut p = env.dir_pool("p");
    let v = p.create_volume(&raw("disk", 64 << 20)).unwrap();
    assert_eq!((v.format, v.capacity), (VolFormat::Raw, 64 << 20));
    assert!(v.allocation < 1 << 20, "sparse: {} bytes allocated", v.allocation);
    let data = pattern(3 << 20, 1);
    p.upload_volume("disk", &mut &data[..], data.len() as u64, &mut |_, _| {}).unwrap();
    // Creating it again is an error and the data stays.
    assert!(matches!(p.create_volume(&raw("disk", 1 << 20)), Err(PoolError::VolumeExists { .. })));
    assert!(matches!(
        p.create_volume(&qcow2("disk", 1 << 20)),
        Err(PoolError::VolumeExists { .. })
    ));
    let back = read_all(&p, "disk");
    assert_eq!(&back[..data.len()], &data[..]);
    assert!(back[data.len()..].iter().all(|&b| b == 0));
    let info = p.volume_info("disk").unwrap();
    let path = info.path.clone().unwrap();
    assert_eq!(info.allocation, fs::metadata(&path).unwrap().blocks() * 512);
    assert!(info.allocation >= 3 << 20);
    assert_eq!(p.volume_path("disk").unwrap(), path);
    // Bad names never reach the file system.
    for bad in ["", ".hidden", "a/b", "../x", "-rf"] {
        assert!(matches!(
            VolumeSpec::builder(bad).capacity(1).build(),
            Err(PoolError::InvalidName { .. })
        ));
        assert!(p.volume_info(bad).is_err());
    }
    assert!(matches!(p.volume_info("nope"), Err(PoolError::VolumeNotFound { .. })));
}

#[test]
fn format_is_probed_not_taken_from_the_name() {
    let env = Env::new();
    let mut p = env.dir_pool("p");
    p.create_volume(&qcow2("disk.raw", 8 << 20)).unwrap();
    p.create_volume(&raw("disk.qcow2", 8 << 20)).unwrap();
    assert_eq!(p.volume_info("disk.raw").unwrap().format, VolFormat::Qcow2);
    assert_eq!(p.volume_info("disk.qcow2").unwrap().format, VolFormat::Raw);
    // A file dropped in the directory is probed too.
    fs::write(env.path("p").join("vmdk"), b"KDMV\x01\0\0\0 a vmdk header").unwrap();
    assert!(matches!(p.volume_info("vmdk"), Err(PoolError::Format(_))));
    let names: Vec<String> = p.list_volumes().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["disk.qcow2", "disk.raw"]);
}

#[test]
fn qcow2_overlay_reads_base_and_leaves_it_untouched() {
    let env = Env::new();
    let mut p = env.dir_pool("p");
    p.create_volume(&qcow2("base", 16 << 20)).unwrap();
    let base = pattern(2 << 20, 7);
    p.upload_volume("base", &mut &base[..], 0, &mut |_, _| {}).unwrap();
    let base_bytes = fs::read(p.volume_path("base").unwrap()).unwrap();
    let spec = VolumeSpec::builder("vm1")
        .format(VolFormat::Qcow2)
        .backing("base")
        .backing_format(VolFormat::Qcow2)
        .build()
        .unwrap();
    let ov = p.create_volume(&spec).unwrap();
    assert_eq!(ov.capacity, 16 << 20, "capacity defaults to the backing volume's");
    assert!(ov.backing.unwrap().ends_with("/base"));
    assert_eq!(read_all(&p, "vm1")[..base.len()], base[..]);
    // Writes go to the overlay only.
    let io = p.open_volume("vm1", true).unwrap();
    io.write_at(&[0xAB; 4096], 4096).unwrap();
    io.flush().unwrap();
    drop(io);
    let vm1 = read_all(&p, "vm1");
    assert_eq!(&vm1[4096..8192], &[0xAB; 4096][..]);
    assert_eq!(&vm1[..4096], &base[..4096]);
    assert_eq!(fs::read(p.volume_path("base").unwrap()).unwrap(), base_bytes);
    // The base cannot be deleted while it backs vm1; a wrong backing format is refused.
    assert!(matches!(p.delete_volume("base"), Err(PoolError::VolumeInUse { .. })));
    let wrong = VolumeSpec::builder("vm2")
        .format(VolFormat::Qcow2)
        .backing("base")
        .backing_format(VolFormat::Raw);
    assert!(matches!(p.create_volume(&wrong.build().unwrap()), Err(PoolError::Invalid { .. })));
    let raw_overlay = VolumeSpec::builder("vm3").backing("base").build().unwrap();
    assert!(matches!(p.create_volume(&raw_overlay), Err(PoolError::Unsupported { .. })));
    p.delete_volume("vm1").unwrap();
    p.delete_volume("base").unwrap();
}

#[test]
fn resize_clone_wipe_and_progress() {
    let env = Env::new();
    let mut p = env.dir_pool("p");
    p.create_volume(&raw("r", 4 << 20)).unwrap();
    p.create_volume(&qcow2("q", 4 << 20)).unwrap();
    let data = pattern(1 << 20, 3);
    let mut calls = vec![];
    p.upload_volume("q", &mut &data[..], data.len() as u64, &mut |done, total| {
        calls.push((done, total))
    })
    .unwrap();
    assert_eq!(calls.last(), Some(&(1 << 20, 1 << 20)));
    p.upload_volume("r", &mut &data[..], 0, &mut |_, _| {}).unwrap();
    // Too much data is refused before anything is written.
    let big = vec![1u8; 5 << 20];
    assert!(matches!(
        p.upload_volume("r", &mut &big[..], big.len() as u64, &mut |_, _| {}),
        Err(PoolError::TooMuchData { .. })
    ));
    // Grow both, shrink raw only with the flag, never qcow2.
    p.resize_volume("r", 8 << 20, ResizeFlags::default()).unwrap();
    p.resize_volume("q", 8 << 20, ResizeFlags::default()).unwrap();
    assert_eq!(p.volume_info("q").unwrap().capacity, 8 << 20);
    assert_eq!(read_all(&p, "q")[..data.len()], data[..]);
    assert!(read_all(&p, "q")[4 << 20..].iter().all(|&b| b == 0));
    assert!(matches!(
        p.resize_volume("r", 1 << 20, ResizeFlags::default()),
        Err(PoolError::ShrinkRefused { .. })
    ));
    p.resize_volume("r", 2 << 20, ResizeFlags { allow_shrink: true }).unwrap();
    assert_eq!(p.volume_info("r").unwrap().capacity, 2 << 20);
    assert!(matches!(
        p.resize_volume("q", 1 << 20, ResizeFlags { allow_shrink: true }),
        Err(PoolError::Unsupported { .. })
    ));
    // Clones are full, independent copies of the same format.
    let c = p.clone_volume("q", "q2").unwrap();
    assert_eq!((c.format, c.capacity), (VolFormat::Qcow2, 8 << 20));
    assert_eq!(read_all(&p, "q2"), read_all(&p, "q"));
    assert!(matches!(p.clone_volume("q", "r"), Err(PoolError::VolumeExists { .. })));
    p.clone_volume("r", "r2").unwrap();
    assert_eq!(read_all(&p, "r2"), read_all(&p, "r"));
    // Wipe.
    p.wipe_volume("q").unwrap();
    p.wipe_volume("r").unwrap();
    assert!(read_all(&p, "q").iter().all(|&b| b == 0));
    assert!(read_all(&p, "r").iter().all(|&b| b == 0));
    assert_eq!(read_all(&p, "q2")[..data.len()], data[..], "the clone kept its data");
}

#[test]
fn temporary_files_of_a_crashed_create_are_ignored_and_cleaned() {
    let env = Env::new();
    let mut p = env.dir_pool("p");
    let dir = env.path("p");
    fs::write(dir.join(".half.part.12345"), b"partial").unwrap();
    assert!(p.list_volumes().unwrap().is_empty());
    p.refresh().unwrap();
    assert!(!dir.join(".half.part.12345").exists());
}

#[test]
fn refresh_of_a_vanished_directory_marks_the_pool_inaccessible() {
    let env = Env::new();
    let mut p = env.dir_pool("p");
    fs::remove_dir(env.path("p")).unwrap();
    assert!(p.refresh().is_err());
    assert_eq!(p.state(), PoolState::Inaccessible);
    assert!(p.list_volumes().is_err());
    fs::create_dir(env.path("p")).unwrap();
    p.refresh().unwrap();
    assert_eq!(p.state(), PoolState::Running);
}

#[test]
fn backing_files_outside_the_pool_are_never_opened() {
    let env = Env::new();
    let mut p = env.dir_pool("p");
    // A secret outside the pool, and a qcow2 header (as a guest could write into its raw
    // disk) naming it as backing file.
    let secret = env.path("secret");
    fs::write(&secret, b"root:password-hash").unwrap();
    let other = env.path("elsewhere");
    fs::create_dir(&other).unwrap();
    let img = other.join("crafted");
    fs::File::create(&img).unwrap();
    hv_storage::pool::image::create_qcow2(&img, 1 << 20, Some((secret.to_str().unwrap(), "raw")))
        .unwrap();
    fs::copy(&img, env.path("p").join("crafted")).unwrap();
    // A symlink in the pool pointing out is not followed either.
    std::os::unix::fs::symlink(&secret, env.path("p").join("link")).unwrap();
    let info = p.volume_info("crafted").unwrap();
    assert_eq!(info.backing.as_deref(), secret.to_str());
    let err = p.open_volume("crafted", false).err().expect("refused");
    assert!(err.to_string().contains("is not a file the caller allowed"), "{err}");
    let mut sink = vec![];
    assert!(p.download_volume("crafted", &mut sink, &mut |_, _| {}).is_err());
    assert!(sink.is_empty());
    assert!(matches!(p.volume_info("link"), Err(PoolError::VolumeNotFound { .. })));
    // Inside the pool, overlays work as usual.
    p.create_volume(&raw("base", 1 << 20)).unwrap();
    let spec = VolumeSpec::builder("ov").format(VolFormat::Qcow2).backing("base").build().unwrap();
    p.create_volume(&spec).unwrap();
    p.open_volume("ov", false).unwrap();
}

#[test]
fn a_pool_open_elsewhere_is_waited_for_then_reported_busy() {
    let env = Env::new();
    let held = env.dir_pool("p");
    let mgr = hv_storage::pool::PoolManager::new(env.path("state"))
        .unwrap()
        .with_lock_timeout(std::time::Duration::from_millis(100));
    let err = mgr.open("p").unwrap_err();
    assert!(
        matches!(err, PoolError::Busy { ref pool, holder: Some(pid) } if pool == "p" && pid == std::process::id()),
        "{err}"
    );
    drop(held);
    mgr.open("p").unwrap();
}
