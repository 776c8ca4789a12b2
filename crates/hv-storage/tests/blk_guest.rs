//! The test guest drives our virtio-blk with its own polling driver (`guests/test-guest`,
//! `test=blk`): it writes a pattern to chosen sectors, flushes, reads back and reports over
//! serial; the host then checks the same bytes through the pool API. On a raw volume of a dir
//! pool, a qcow2 overlay over a base image (the base stays byte-identical, `qemu-img check`
//! passes), a logical volume (a `SegmentDisk` over its extent map), and a read-only disk (the
//! write gets IOERR). Needs KVM; the qcow2 test also needs `qemu-img`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hv_core::console::Capture;
use hv_core::{ExitReason, VmBuilder};
use hv_storage::block::{open_disk, BlockBackend, DiskFormat, DiskOptions, SegmentDisk};
use hv_storage::pool::{
    BuildFlags, ManagedPool, Pool, PoolDef, PoolManager, VolFormat, VolumeSpec,
};
use hv_storage::virtio_blk::{BlockConfig, VirtioBlock};
use hv_test_support::{have_kvm, hvtest_lines, require, test_guest};

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(120);

/// The guest's pattern: the 64-bit little-endian word at disk byte `offset` for `seed`
/// (`pattern_word` in `guests/test-guest/src/virtio/blk.rs`).
fn pattern_word(seed: u64, offset: u64) -> u64 {
    let mut x = seed ^ offset.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 32)
}

/// The bytes the guest writes to `count` sectors at `sector`.
fn pattern(seed: u64, sector: u64, count: u64) -> Vec<u8> {
    (0..count * 64).flat_map(|i| pattern_word(seed, sector * 512 + 8 * i).to_le_bytes()).collect()
}

/// Boots the test guest with `disks` and `cmdline`; returns how it ended and its lines.
fn run_guest(disks: Vec<VirtioBlock>, cmdline: &str) -> (ExitReason, Vec<String>) {
    let console = Capture::new();
    let mut b = VmBuilder::new()
        .kernel(test_guest())
        .memory_mib(64)
        .cmdline(cmdline.to_string())
        .serial_output(console.clone());
    for d in disks {
        b = b.virtio_device(Box::new(d));
    }
    let vm = b.build().expect("build the VM");
    vm.start().expect("start the VM");
    let reason = vm.wait_timeout(TIMEOUT).unwrap_or_else(|| {
        let _ = vm.kill();
        let _ = vm.wait();
        panic!("the guest did not finish in {TIMEOUT:?}:\n{}", console.text())
    });
    let text = console.text();
    let lines = hvtest_lines(&text).into_iter().map(str::to_string).collect();
    (reason, lines)
}

/// Asserts the guest's `test=blk` lines for a clean write-flush-read-verify.
fn assert_verified(lines: &[String], capacity_sectors: u64, serial: &str, sector: u64, count: u64) {
    let want = [
        format!("blk capacity={capacity_sectors}"),
        format!("blk id={serial}"),
        format!("blk wrote {count} sectors at {sector}"),
        "blk verify ok".to_string(),
        "done".to_string(),
    ];
    for w in &want {
        assert!(lines.contains(w), "missing {w:?} in {lines:#?}");
    }
}

fn dev(disk: Box<dyn BlockBackend>, serial: &str) -> VirtioBlock {
    VirtioBlock::new(disk, BlockConfig::default().with_serial(serial))
}

fn read_volume(pool: &ManagedPool, name: &str, offset: u64, len: u64) -> Vec<u8> {
    let io = pool.open_volume(name, false).expect("open the volume");
    let mut buf = vec![0u8; len as usize];
    io.read_at(&mut buf, offset).expect("read the volume");
    buf
}

struct Env {
    dir: tempfile::TempDir,
    mgr: PoolManager,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let mgr = PoolManager::new(dir.path().join("state")).expect("pool manager");
        Env { dir, mgr }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn started(&self, def: PoolDef) -> ManagedPool {
        let name = def.name.clone();
        self.mgr.define(def).expect("define the pool");
        let mut p = self.mgr.open(&name).expect("open the pool");
        p.build(BuildFlags::default()).expect("build the pool");
        p.start().expect("start the pool");
        p
    }

    fn dir_pool(&self, name: &str) -> ManagedPool {
        self.started(PoolDef::dir(name, self.path(name)).build().unwrap())
    }
}

fn qemu_img_check(path: &Path) {
    let out = Command::new("qemu-img").arg("check").arg(path).output().expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img check {} failed:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have_qemu_img() -> bool {
    Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn guest_writes_a_raw_volume_of_a_dir_pool() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let env = Env::new();
    let mut pool = env.dir_pool("images");
    let spec = VolumeSpec::builder("disk0").format(VolFormat::Raw).capacity(8 * MIB).build();
    pool.create_volume(&spec.unwrap()).unwrap();
    // Opened as a VM disk through the pool: in its recorded format (raw).
    let disk = pool.open_disk("disk0", DiskOptions::default()).unwrap();

    let (sector, count, seed) = (2047, 64, 11);
    let (r, lines) = run_guest(
        vec![dev(disk, "hv-raw-0")],
        &format!("test=blk sector={sector} count={count} seed={seed}"),
    );
    assert!(matches!(r, ExitReason::PoweredOff), "{r}: {lines:#?}");
    assert_verified(&lines, 16384, "hv-raw-0", sector, count);

    // The pool sees the guest's bytes, and nothing around them changed.
    let got = read_volume(&pool, "disk0", (sector - 1) * 512, (count + 2) * 512);
    assert!(got[..512].iter().all(|&b| b == 0), "the sector before was written");
    assert!(got[512..(count as usize + 1) * 512] == pattern(seed, sector, count)[..]);
    assert!(
        got[(count as usize + 1) * 512..].iter().all(|&b| b == 0),
        "the sector after was written"
    );
}

#[test]
fn guest_writes_a_qcow2_overlay_and_the_base_stays_untouched() {
    require!(have_kvm(), "/dev/kvm is not usable");
    require!(have_qemu_img(), "qemu-img is not installed");
    let env = Env::new();
    let mut pool = env.dir_pool("images");
    let base = VolumeSpec::builder("base").format(VolFormat::Qcow2).capacity(16 * MIB).build();
    pool.create_volume(&base.unwrap()).unwrap();
    // The base holds a known pattern in its first 2 MiB (seed 99).
    let base_data = pattern(99, 0, 4096);
    pool.open_volume("base", true).unwrap().write_at(&base_data, 0).unwrap();
    let overlay = VolumeSpec::builder("vm1").format(VolFormat::Qcow2).backing("base").build();
    pool.create_volume(&overlay.unwrap()).unwrap();
    let base_path = pool.volume_path("base").unwrap();
    let overlay_path = pool.volume_path("vm1").unwrap();
    assert!(overlay_path.exists());
    let base_before = std::fs::read(&base_path).unwrap();

    // The guest writes across the end of the base's data: part over it, part past it.
    let (sector, count, seed) = (4000, 160, 5);
    let disk = pool.open_disk("vm1", DiskOptions::default()).unwrap();
    assert_eq!(disk.size(), 16 * MIB);
    let (r, lines) = run_guest(
        vec![dev(disk, "vm1-root")],
        &format!("test=blk sector={sector} count={count} seed={seed}"),
    );
    assert!(matches!(r, ExitReason::PoweredOff), "{r}: {lines:#?}");
    assert_verified(&lines, 32768, "vm1-root", sector, count);

    // Through the pool: the guest's bytes in the written range, the base's elsewhere.
    let got = read_volume(&pool, "vm1", 0, 6000 * 512);
    let mut want = base_data.clone();
    want.resize(6000 * 512, 0);
    want[sector as usize * 512..(sector + count) as usize * 512]
        .copy_from_slice(&pattern(seed, sector, count));
    assert!(got == want, "the overlay does not read as base + the guest's writes");
    assert!(std::fs::read(&base_path).unwrap() == base_before, "the base image changed");
    assert!(read_volume(&pool, "base", 0, base_data.len() as u64) == base_data);
    qemu_img_check(&overlay_path);
    qemu_img_check(&base_path);

    // qemu-img reads the same guest-visible bytes.
    let raw = env.path("vm1.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&overlay_path)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&raw).unwrap()[..want.len()] == want[..]);
}

#[test]
fn guest_writes_a_logical_volume_through_its_extent_map() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let env = Env::new();
    let pvs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = env.path(&format!("pv{i}"));
            File::create(&p).unwrap().set_len(12 * MIB).unwrap();
            p
        })
        .collect();
    let mut pool = env.started(PoolDef::logical("vg", pvs).extent_size(MIB).build().unwrap());
    // 11 extents per PV: "lv" (12) cannot fit on one, so it spans both.
    let spec = |name: &str, cap| VolumeSpec::builder(name).capacity(cap).build().unwrap();
    pool.create_volume(&spec("filler", 8 * MIB)).unwrap();
    pool.create_volume(&spec("lv", 12 * MIB)).unwrap();
    let segs = pool.as_logical().unwrap().lv_segments("lv").unwrap();
    assert!(segs.len() >= 2, "the volume should span both PVs: {segs:?}");

    // A SegmentDisk over the extent map, each PV file opened once.
    let mut files: Vec<(PathBuf, Arc<File>)> = Vec::new();
    let mut block_segs = Vec::new();
    for s in &segs {
        let file = match files.iter().find(|(p, _)| *p == s.pv_path) {
            Some((_, f)) => f.clone(),
            None => {
                let f = Arc::new(
                    std::fs::OpenOptions::new().read(true).write(true).open(&s.pv_path).unwrap(),
                );
                files.push((s.pv_path.clone(), f.clone()));
                f
            }
        };
        block_segs.push(hv_storage::block::Segment {
            disk_offset: s.lv_offset,
            len: s.len,
            file,
            file_offset: s.pv_offset,
        });
    }
    let disk = SegmentDisk::new(block_segs, false).unwrap();

    // Write across the boundary between the first two segments.
    let boundary = segs[0].len / 512;
    let (sector, count, seed) = (boundary - 40, 96, 23);
    let (r, lines) = run_guest(
        vec![dev(Box::new(disk), "lv-disk")],
        &format!("test=blk sector={sector} count={count} seed={seed}"),
    );
    assert!(matches!(r, ExitReason::PoweredOff), "{r}: {lines:#?}");
    assert_verified(&lines, 24576, "lv-disk", sector, count);
    let got = read_volume(&pool, "lv", sector * 512, count * 512);
    assert!(got == pattern(seed, sector, count), "the LV does not hold the guest's bytes");
    let filler = read_volume(&pool, "filler", 0, 8 * MIB);
    assert!(filler.iter().all(|&b| b == 0), "the neighbouring volume was written");
}

#[test]
fn read_only_disk_refuses_the_guest_write_with_ioerr() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let env = Env::new();
    let path = env.path("ro.raw");
    let content = pattern(3, 0, 2048);
    std::fs::write(&path, &content).unwrap();
    let opts = DiskOptions { read_only: true, ..Default::default() };
    let disk = open_disk(&path, DiskFormat::Raw, opts).unwrap();
    let (r, lines) = run_guest(vec![dev(disk, "ro")], "test=blk sector=10 count=4 seed=8");
    assert!(matches!(r, ExitReason::PoweredOff), "{r}: {lines:#?}");
    for w in [
        "blk capacity=2048",
        "blk read-only",
        "blk write failed at sector 10: status 1 (IOERR)",
        "blk read ok",
    ] {
        assert!(lines.iter().any(|l| l == w), "missing {w:?} in {lines:#?}");
    }
    assert!(!lines.iter().any(|l| l.starts_with("blk wrote")), "{lines:#?}");
    assert!(std::fs::read(&path).unwrap() == content, "the read-only disk changed");
}

#[test]
fn second_disk_is_picked_with_dev_and_the_bench_loop_completes() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let env = Env::new();
    let mk = |name: &str| {
        let p = env.path(name);
        File::create(&p).unwrap().set_len(4 * MIB).unwrap();
        dev(open_disk(&p, DiskFormat::Raw, DiskOptions::default()).unwrap(), name)
    };
    // The request loop runs at CPL3 by default (native on PVM hosts), at CPL0 with cpl3=0.
    for (mode, bs, cpl) in [("randread", 4096, 3), ("seqwrite", 65536, 3), ("seqread", 1 << 20, 0)]
    {
        let (r, lines) = run_guest(
            vec![mk("first"), mk("second")],
            &format!("test=blk-bench dev=1 mode={mode} bs={bs} count=100 cpl3={}", cpl / 3),
        );
        assert!(matches!(r, ExitReason::PoweredOff), "{r}: {lines:#?}");
        let start = format!("blk-bench start mode={mode} bs={bs}");
        assert!(lines.iter().any(|l| l.starts_with(&start)), "{lines:#?}");
        assert!(lines.contains(&"blk-bench done 100".to_string()), "{lines:#?}");
        let errors =
            lines.iter().find(|l| l.starts_with("blk-bench errors=")).expect("errors line");
        assert!(errors.starts_with("blk-bench errors=0 "), "{lines:#?}");
        assert!(errors.ends_with(&format!(" cpl={cpl}")), "{lines:#?}");
    }
    let (_, lines) = run_guest(vec![mk("only")], "test=blk dev=1");
    assert!(lines.contains(&"blk: no virtio-blk device 1".to_string()), "{lines:#?}");
}
