//! A dir pool records each volume's format and uses the record forever: bytes a guest wrote
//! into a raw volume never make the pool (or a VM opened through it) open another file.
//! Also: volume files are 0600, qcow2 capacities round up to whole sectors.

mod pool_common;

use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};

use hv_storage::block::{BlockError, DiskOptions};
use hv_storage::pool::image::create_qcow2;
use hv_storage::pool::{Pool, PoolError, ResizeFlags, VolFormat, VolumeSpec};
use pool_common::{have_qemu_img, p, pattern, qemu_img, read_all, Env};

fn raw(name: &str, cap: u64) -> VolumeSpec {
    VolumeSpec::builder(name).capacity(cap).build().unwrap()
}

/// Writes a qcow2 header naming `backing` (a raw file) into the first bytes of `victim`, as a
/// guest with `victim` as its raw disk could.
fn guest_writes_qcow2_header(env: &Env, victim: &std::path::Path, backing: &std::path::Path) {
    let img = env.path("crafted-header");
    fs::File::create(&img).unwrap();
    create_qcow2(&img, 1 << 20, Some((backing.to_str().unwrap(), "raw"))).unwrap();
    let header = fs::read(&img).unwrap();
    let f = fs::OpenOptions::new().write(true).open(victim).unwrap();
    f.write_all_at(&header[..header.len().min(1 << 16)], 0).unwrap();
}

#[test]
fn a_recorded_raw_volume_stays_raw_whatever_a_guest_writes_into_it() {
    let env = Env::new();
    let mut pool = env.dir_pool("p");
    pool.create_volume(&raw("victim", 1 << 20)).unwrap();
    pool.create_volume(&raw("neighbour", 1 << 20)).unwrap();
    pool.upload_volume("neighbour", &mut &pattern(1 << 20, 9)[..], 1 << 20, &mut |_, _| {})
        .unwrap();
    let victim = pool.volume_path("victim").unwrap();
    let neighbour = pool.volume_path("neighbour").unwrap();
    guest_writes_qcow2_header(&env, &victim, &neighbour);
    let written = fs::read(&victim).unwrap();

    // vol-info, vol-download, vol-clone and the VM disk all treat it as raw.
    let info = pool.volume_info("victim").unwrap();
    assert_eq!((info.format, info.capacity, info.backing), (VolFormat::Raw, 1 << 20, None));
    assert_eq!(read_all(&pool, "victim"), written, "download returns the raw bytes");
    assert_ne!(read_all(&pool, "victim"), pattern(1 << 20, 9), "never the neighbour's bytes");
    pool.clone_volume("victim", "copy").unwrap();
    assert_eq!(pool.volume_info("copy").unwrap().format, VolFormat::Raw);
    assert_eq!(fs::read(pool.volume_path("copy").unwrap()).unwrap(), written);
    let disk = pool.open_disk("victim", DiskOptions::default()).unwrap();
    assert!(format!("{disk:?}").contains("RawSyncDisk"), "{disk:?}");
    assert_eq!(disk.size(), 1 << 20);
    // A refresh does not re-probe it either.
    pool.refresh().unwrap();
    assert_eq!(pool.volume_info("victim").unwrap().format, VolFormat::Raw);
    let listed = pool.list_volumes().unwrap();
    assert!(listed.iter().all(|v| v.format == VolFormat::Raw), "{listed:?}");
}

#[test]
fn a_hand_placed_file_is_recorded_once_then_keeps_its_format() {
    let env = Env::new();
    let mut pool = env.dir_pool("p");
    pool.create_volume(&raw("secret", 4096)).unwrap();
    let dir = env.path("p");
    // Placed by hand: a raw file, recorded by the refresh that first sees it.
    fs::write(dir.join("placed"), vec![0u8; 65536]).unwrap();
    pool.refresh().unwrap();
    assert_eq!(pool.volume_info("placed").unwrap().format, VolFormat::Raw);
    guest_writes_qcow2_header(&env, &dir.join("placed"), &pool.volume_path("secret").unwrap());
    pool.refresh().unwrap();
    assert_eq!(pool.volume_info("placed").unwrap().format, VolFormat::Raw);
    assert_eq!(pool.volume_info("placed").unwrap().capacity, 65536);
    // A qcow2 placed by hand is recorded as qcow2 and opens as one.
    let img = dir.join("image");
    fs::File::create(&img).unwrap();
    create_qcow2(&img, 1 << 20, None).unwrap();
    pool.refresh().unwrap();
    let disk = pool.open_disk("image", DiskOptions::default()).unwrap();
    assert!(format!("{disk:?}").contains("Qcow2Disk"), "{disk:?}");
    // A recorded qcow2 whose header was overwritten is refused, never taken for raw.
    pool.delete_volume("placed").unwrap();
    fs::File::create(&img).unwrap().set_len(512).unwrap();
    let r = pool.open_disk("image", DiskOptions::default());
    assert!(
        matches!(&r, Err(PoolError::Open { source, .. })
            if matches!(**source, BlockError::FormatMismatch { .. })),
        "a recorded qcow2 whose header is gone is refused, not taken for raw: {r:?}"
    );
}

#[test]
fn a_pool_overlay_opens_only_backing_volumes_of_its_pool_in_their_recorded_format() {
    let env = Env::new();
    let mut pool = env.dir_pool("p");
    pool.create_volume(&raw("base", 1 << 20)).unwrap();
    let spec = VolumeSpec::builder("ov").format(VolFormat::Qcow2).backing("base").build().unwrap();
    pool.create_volume(&spec).unwrap();
    pool.upload_volume("base", &mut &pattern(1 << 20, 4)[..], 1 << 20, &mut |_, _| {}).unwrap();
    assert_eq!(read_all(&pool, "ov"), pattern(1 << 20, 4));
    let disk = pool.open_disk("ov", DiskOptions { read_only: true, ..Default::default() });
    assert_eq!(disk.unwrap().size(), 1 << 20);
    // An overlay naming a file outside the pool (placed by hand) is refused, typed.
    let outside = env.path("outside");
    fs::write(&outside, vec![1u8; 4096]).unwrap();
    let img = env.path("p").join("escape");
    fs::File::create(&img).unwrap();
    create_qcow2(&img, 4096, Some((outside.to_str().unwrap(), "raw"))).unwrap();
    match pool.open_disk("escape", DiskOptions::default()) {
        Err(PoolError::Open { source, .. }) => {
            assert!(matches!(*source, BlockError::NotAllowed { .. }), "{source}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // An overlay claiming a raw volume of the pool is qcow2 contradicts the record: refused.
    pool.create_volume(&raw("rawvol", 4096)).unwrap();
    let liar = env.path("p").join("liar");
    fs::File::create(&liar).unwrap();
    let rawvol = pool.volume_path("rawvol").unwrap();
    create_qcow2(&liar, 4096, Some((rawvol.to_str().unwrap(), "qcow2"))).unwrap();
    match pool.open_disk("liar", DiskOptions::default()) {
        Err(PoolError::Open { source, .. }) => {
            assert!(matches!(*source, BlockError::BackingFormatMismatch { .. }), "{source}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn volume_files_are_created_owner_only() {
    let env = Env::new();
    let mut pool = env.dir_pool("p");
    pool.create_volume(&raw("r", 4096)).unwrap();
    let q = VolumeSpec::builder("q").format(VolFormat::Qcow2).capacity(1 << 20).build().unwrap();
    pool.create_volume(&q).unwrap();
    pool.clone_volume("r", "c").unwrap();
    for v in ["r", "q", "c"] {
        let mode = fs::metadata(pool.volume_path(v).unwrap()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{v}: {mode:o}");
    }
}

#[test]
fn qcow2_capacity_rounds_up_to_a_sector_as_libvirt_does() {
    let env = Env::new();
    let mut pool = env.dir_pool("p");
    let q = VolumeSpec::builder("q").format(VolFormat::Qcow2).capacity(1000).build().unwrap();
    assert_eq!(pool.create_volume(&q).unwrap().capacity, 1024);
    pool.resize_volume("q", 5000, ResizeFlags::default()).unwrap();
    assert_eq!(pool.volume_info("q").unwrap().capacity, 5120);
    // Raw volumes keep the exact byte count (a file length).
    assert_eq!(pool.create_volume(&raw("r", 1000)).unwrap().capacity, 1000);
    if have_qemu_img() {
        let info = qemu_img(&["info", "--output=json", p(&pool.volume_path("q").unwrap())]);
        assert!(info.contains("\"virtual-size\": 5120"), "{info}");
    }
}
