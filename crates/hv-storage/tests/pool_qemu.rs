//! qcow2 interoperability with the real `qemu-img`: what we write passes `qemu-img check` and
//! `qemu-img convert` reads the same bytes; what `qemu-img` writes (plain, compressed, v2,
//! small clusters, with backing files) we read the same as it does.

mod pool_common;

use std::fs;
use std::path::Path;

use hv_storage::pool::{Pool, ResizeFlags, VolFormat, VolumeSpec};
use pool_common::{have_qemu_img, p, pattern, qemu_img, read_all, Env};

const MIB: u64 = 1 << 20;

/// A 16 MiB disk image: patterned runs at scattered offsets, zeroes elsewhere.
fn disk_image(seed: u64) -> Vec<u8> {
    let mut d = vec![0u8; 16 << 20];
    for (i, off) in
        [0usize, 65536 + 512, 3 << 20, (7 << 20) + 12345, (16 << 20) - 4096].iter().enumerate()
    {
        let chunk = pattern(if i == 4 { 4096 } else { 200_000 }, seed + i as u64);
        d[*off..*off + chunk.len()].copy_from_slice(&chunk);
    }
    d
}

fn convert_to_raw(env: &Env, image: &Path) -> Vec<u8> {
    let out = env.path("converted.raw");
    qemu_img(&["convert", "-O", "raw", p(image), p(&out)]);
    let bytes = fs::read(&out).unwrap();
    fs::remove_file(&out).unwrap();
    bytes
}

#[test]
fn qcow2_we_write_passes_qemu_img_check_and_converts_identically() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let env = Env::new();
    let mut pool = env.dir_pool("p");
    let spec = VolumeSpec::builder("base").format(VolFormat::Qcow2).capacity(16 * MIB);
    pool.create_volume(&spec.build().unwrap()).unwrap();
    let img = disk_image(1);
    pool.upload_volume("base", &mut &img[..], 0, &mut |_, _| {}).unwrap();
    let base_path = pool.volume_path("base").unwrap();
    qemu_img(&["check", p(&base_path)]);
    assert!(convert_to_raw(&env, &base_path) == img, "qemu-img reads what we wrote");

    // A thin overlay with scattered writes, then grown.
    let spec = VolumeSpec::builder("vm").format(VolFormat::Qcow2).backing("base");
    pool.create_volume(&spec.build().unwrap()).unwrap();
    let io = pool.open_volume("vm", true).unwrap();
    let mut expect = img.clone();
    for (off, seed) in [(100u64, 11u64), (5 * MIB - 7, 12), (15 * MIB, 13)] {
        let chunk = pattern(70_000, seed);
        io.write_at(&chunk, off).unwrap();
        expect[off as usize..off as usize + chunk.len()].copy_from_slice(&chunk);
    }
    io.flush().unwrap();
    drop(io);
    pool.resize_volume("vm", 20 * MIB, ResizeFlags::default()).unwrap();
    expect.resize(20 << 20, 0);
    let vm_path = pool.volume_path("vm").unwrap();
    qemu_img(&["check", p(&vm_path)]);
    let info = qemu_img(&["info", p(&vm_path)]);
    assert!(info.contains("backing file format: qcow2"), "{info}");
    assert!(info.contains("virtual size: 20 MiB"), "{info}");
    assert!(convert_to_raw(&env, &vm_path) == expect);
    assert!(read_all(&pool, "vm") == expect);
    // The base is untouched by the overlay's writes.
    assert!(convert_to_raw(&env, &base_path) == img);

    // Clone and wipe keep images valid.
    pool.clone_volume("vm", "vm-copy").unwrap();
    let copy_path = pool.volume_path("vm-copy").unwrap();
    qemu_img(&["check", p(&copy_path)]);
    assert!(convert_to_raw(&env, &copy_path) == expect);
    pool.wipe_volume("vm").unwrap();
    qemu_img(&["check", p(&vm_path)]);
    assert!(convert_to_raw(&env, &vm_path).iter().all(|&b| b == 0));
}

#[test]
fn images_made_by_qemu_img_read_back_identically() {
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let env = Env::new();
    let mut pool = env.dir_pool("p");
    let dir = env.path("p");
    let src = env.path("src.raw");
    let img = disk_image(5);
    fs::write(&src, &img).unwrap();
    // Plain, compressed, version 2, small clusters, an empty image.
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", p(&src), p(&dir.join("plain"))]);
    qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", p(&src), p(&dir.join("compressed"))]);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "compat=0.10",
        p(&src),
        p(&dir.join("v2")),
    ]);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        p(&src),
        p(&dir.join("small")),
    ]);
    qemu_img(&["create", "-q", "-f", "qcow2", p(&dir.join("empty")), "1G"]);
    // Overlays: an empty one, and one holding only the clusters that differ from its base.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        p(&dir.join("compressed")),
        "-F",
        "qcow2",
        p(&dir.join("thin")),
    ]);
    let mut changed = img.clone();
    changed[(9 << 20)..(9 << 20) + 300_000].copy_from_slice(&pattern(300_000, 99));
    changed[..512].fill(0x5A);
    let src2 = env.path("src2.raw");
    fs::write(&src2, &changed).unwrap();
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-B",
        p(&dir.join("plain")),
        "-F",
        "qcow2",
        p(&src2),
        p(&dir.join("delta")),
    ]);
    // A raw-backed overlay, with the backing named relative to the overlay.
    fs::copy(&src, dir.join("rawbase")).unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", "rawbase", "-F", "raw", p(&dir.join("onraw"))]);
    pool.refresh().unwrap();

    let check = |name: &str, format: VolFormat, expect: &[u8]| {
        let v = pool.volume_info(name).unwrap();
        assert_eq!(v.format, format, "{name}");
        assert_eq!(v.capacity, expect.len() as u64, "{name}");
        assert!(read_all(&pool, name) == expect, "{name}: content differs");
    };
    for name in ["plain", "compressed", "v2", "small", "thin", "onraw", "rawbase"] {
        let format = if name == "rawbase" { VolFormat::Raw } else { VolFormat::Qcow2 };
        check(name, format, &img);
    }
    check("delta", VolFormat::Qcow2, &changed);
    let empty = pool.volume_info("empty").unwrap();
    assert_eq!(empty.capacity, 1 << 30);
    let io = pool.open_volume("empty", false).unwrap();
    let mut buf = vec![1u8; 65536];
    io.read_at(&mut buf, (1 << 30) - 65536).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert_eq!(
        pool.volume_info("thin").unwrap().backing.as_deref(),
        Some(p(&dir.join("compressed")))
    );
    assert_eq!(pool.volume_info("onraw").unwrap().backing.as_deref(), Some("rawbase"));

    // Writing into a qemu-made compressed image through us keeps it valid for qemu-img.
    let io = pool.open_volume("compressed", true).unwrap();
    io.write_at(&[0xEE; 10000], 3 * MIB + 1).unwrap();
    io.flush().unwrap();
    drop(io);
    qemu_img(&["check", p(&dir.join("compressed"))]);
    let mut expect = img.clone();
    expect[3 << 20 | 1..(3 << 20) + 10001].fill(0xEE);
    assert!(convert_to_raw(&env, &dir.join("compressed")) == expect);
}
