//! Linux drives our virtio-blk: the minimal kernel (`mini_kernel()` + `initramfs()`) boots once
//! with three disks and, during its boot, finds each with the right number of blocks and reads
//! its partition table:
//!
//! - a raw volume of a dir pool with an MBR of two partitions,
//! - a qcow2 overlay whose base image holds a GPT of two partitions (the kernel reads the
//!   table through the overlay from the base),
//! - a logical volume spanning two PVs (a `SegmentDisk` over its extent map) with an MBR of
//!   three partitions.
//!
//! On a hardware-KVM host the initramfs's `/init` also writes and reads back a sector of
//! `/dev/vda` with `dd` (`HV-DISK-OK`); on PVM hosts guest user space cannot run, so the test
//! stops at the kernel's own log. Slow where the guest kernel is emulated (one boot, a minute
//! or two); needs KVM and the guest kit (`guests/kit.sh`).

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hv_core::console::Capture;
use hv_core::VmBuilder;
use hv_storage::block::{DiskOptions, Segment as BlockSegment, SegmentDisk};
use hv_storage::pool::{
    BuildFlags, ManagedPool, Pool, PoolDef, PoolManager, VolFormat, VolumeSpec,
};
use hv_storage::virtio_blk::{BlockConfig, VirtioBlock};
use hv_test_support::{have_kvm, require};

const MIB: u64 = 1 << 20;
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// The sector `/init` writes on a hardware-KVM host (outside both partitions of `vda`).
const DD_SECTOR: u64 = 16_000;

/// An MBR with `parts` (start sector, sectors), type 0x83.
fn mbr(parts: &[(u32, u32)]) -> Vec<u8> {
    let mut s = vec![0u8; 512];
    s[440..444].copy_from_slice(&0x4856_0001u32.to_le_bytes()); // disk signature
    for (i, &(start, len)) in parts.iter().enumerate() {
        let e = 446 + 16 * i;
        s[e + 4] = 0x83;
        s[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        s[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
    }
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

/// CRC-32 (IEEE, reflected), as GPT uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A GPT disk image of `sectors` sectors (protective MBR, primary and backup headers and
/// entry arrays) with `parts` (first LBA, last LBA inclusive), "Linux filesystem" type. Only
/// the metadata sectors are returned, as (LBA, bytes) pieces.
fn gpt(sectors: u64, parts: &[(u64, u64)]) -> Vec<(u64, Vec<u8>)> {
    // 0FC63DAF-8483-4772-8E79-3D69D8477DE4, mixed-endian as stored.
    const LINUX_FS: [u8; 16] = [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ];
    let mut entries = vec![0u8; 128 * 128];
    for (i, &(first, last)) in parts.iter().enumerate() {
        let e = &mut entries[128 * i..128 * (i + 1)];
        e[..16].copy_from_slice(&LINUX_FS);
        e[16..32].copy_from_slice(&[
            0x48,
            0x56,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            i as u8 + 1,
        ]);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (k, c) in format!("part{}", i + 1).encode_utf16().enumerate() {
            e[56 + 2 * k..58 + 2 * k].copy_from_slice(&c.to_le_bytes());
        }
    }
    let entries_crc = crc32(&entries);
    let last = sectors - 1;
    let header = |my: u64, alt: u64, entries_lba: u64| {
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
        h[56..72].copy_from_slice(b"hv-blk-linux-gpt");
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let mut pmbr = mbr(&[(1, u32::try_from(sectors - 1).unwrap_or(u32::MAX))]);
    pmbr[446 + 4] = 0xee;
    pmbr[440..444].fill(0);
    vec![
        (0, pmbr),
        (1, header(1, last, 2)),
        (2, entries.clone()),
        (last - 32, entries),
        (last, header(last, 1, last - 32)),
    ]
}

fn started(mgr: &PoolManager, def: PoolDef) -> ManagedPool {
    let name = def.name.clone();
    mgr.define(def).unwrap();
    let mut p = mgr.open(&name).unwrap();
    p.build(BuildFlags::default()).unwrap();
    p.start().unwrap();
    p
}

fn write(pool: &ManagedPool, vol: &str, pieces: &[(u64, Vec<u8>)]) {
    let io = pool.open_volume(vol, true).unwrap();
    for (lba, bytes) in pieces {
        io.write_at(bytes, lba * 512).unwrap();
    }
    io.flush().unwrap();
}

/// The disk name the kernel gave the disk of `blocks` sectors, from its
/// `virtio_blk virtioN: [vdX] <blocks> 512-byte logical blocks` line.
fn disk_named(log: &str, blocks: u64) -> Option<String> {
    let needle = format!("] {blocks} 512-byte logical blocks");
    let line = log.lines().find(|l| l.contains("virtio_blk virtio") && l.contains(&needle))?;
    let start = line.find("[vd")? + 1;
    let end = start + line[start..].find(']')?;
    Some(line[start..end].to_string())
}

#[test]
fn linux_finds_three_disks_and_their_partitions() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (Some(kernel), Some(initrd)) =
        (hv_test_support::mini_kernel(), hv_test_support::initramfs())
    else {
        require!(false, hv_test_support::KIT_MISSING);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mgr = PoolManager::new(dir.path().join("state")).unwrap();

    // vda-to-be: a raw volume, MBR with two partitions (8 MiB = 16384 sectors).
    let mut images =
        started(&mgr, PoolDef::dir("images", dir.path().join("images")).build().unwrap());
    let raw = VolumeSpec::builder("raw").format(VolFormat::Raw).capacity(8 * MIB).build().unwrap();
    images.create_volume(&raw).unwrap();
    write(&images, "raw", &[(0, mbr(&[(2048, 4096), (6144, 8192)]))]);

    // A qcow2 overlay over a base holding a GPT with two partitions (12 MiB = 24576 sectors).
    let base = VolumeSpec::builder("base").format(VolFormat::Qcow2).capacity(12 * MIB).build();
    images.create_volume(&base.unwrap()).unwrap();
    write(&images, "base", &gpt(24576, &[(2048, 10239), (10240, 22527)]));
    let overlay = VolumeSpec::builder("vm1").format(VolFormat::Qcow2).backing("base").build();
    images.create_volume(&overlay.unwrap()).unwrap();

    // A logical volume over two PVs (6 MiB = 12288 sectors), MBR with three partitions.
    let pvs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = dir.path().join(format!("pv{i}"));
            File::create(&p).unwrap().set_len(6 * MIB).unwrap();
            p
        })
        .collect();
    let mut vg = started(&mgr, PoolDef::logical("vg", pvs).extent_size(MIB).build().unwrap());
    vg.create_volume(&VolumeSpec::builder("lv").capacity(6 * MIB).build().unwrap()).unwrap();
    write(&vg, "lv", &[(0, mbr(&[(64, 2048), (2112, 4096), (6208, 6080)]))]);
    let segs = vg.as_logical().unwrap().lv_segments("lv").unwrap();
    assert!(segs.len() >= 2, "the LV should span both PVs: {segs:?}");
    let mut block_segs = Vec::new();
    for s in &segs {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&s.pv_path).unwrap();
        block_segs.push(BlockSegment {
            disk_offset: s.lv_offset,
            len: s.len,
            file: Arc::new(f),
            file_offset: s.pv_offset,
        });
    }

    let disks = [
        images.open_disk("raw", DiskOptions::default()).unwrap(),
        images.open_disk("vm1", DiskOptions::default()).unwrap(),
        Box::new(SegmentDisk::new(block_segs, false).unwrap()),
    ];
    let console = Capture::new();
    let mut b = VmBuilder::new()
        .kernel(&kernel)
        .initrd(&initrd)
        .memory_mib(128)
        .vcpus(2)
        .cmdline(format!("console=ttyS0 reboot=k panic=-1 hv.disk_sector={DD_SECTOR}"))
        .serial_output(console.clone());
    for (i, d) in disks.into_iter().enumerate() {
        let config = BlockConfig::default().with_serial(&format!("linux-disk{i}"));
        b = b.virtio_device(Box::new(VirtioBlock::new(d, config)));
    }
    let vm = b.build().unwrap();
    let hardware = vm.host().is_hardware_virt();
    let start = Instant::now();
    vm.start().unwrap();

    // The partition lines come from each disk's probe; wait for the last one, then (on a
    // hardware-KVM host) for /init's dd round trip.
    let wanted = [(16384u64, 2usize), (24576, 2), (12288, 3)];
    let mut seen = true;
    for (blocks, parts) in wanted {
        let deadline = BOOT_TIMEOUT.saturating_sub(start.elapsed());
        let found = console.wait_for(&format!("] {blocks} 512-byte logical blocks"), deadline);
        let name = found.then(|| disk_named(&console.text(), blocks)).flatten();
        let Some(name) = name else {
            seen = false;
            break;
        };
        let list: Vec<String> = (1..=parts).map(|p| format!("{name}{p}")).collect();
        // The whole line: the serial console ends lines with CRLF.
        let line = format!(" {name}: {}\r\n", list.join(" "));
        if !console.wait_for(&line, BOOT_TIMEOUT.saturating_sub(start.elapsed())) {
            seen = false;
            break;
        }
    }
    if seen && hardware {
        // /init's verdict: HV-DISK-OK or HV-DISK-FAIL (asserted below).
        while start.elapsed() < BOOT_TIMEOUT
            && !console.wait_for("HV-DISK-OK", Duration::from_secs(1))
            && !console.text().contains("HV-DISK-FAIL")
        {}
    }
    let elapsed = start.elapsed();
    let _ = vm.kill();
    let _ = vm.wait();
    let log = console.text();
    assert!(seen, "not every disk and partition table showed up after {elapsed:?}:\n{log}");
    eprintln!("disks and partitions seen after {elapsed:?} (hardware virt: {hardware})");

    for (blocks, parts) in wanted {
        let name = disk_named(&log, blocks).expect("disk line");
        let list: Vec<String> = (1..=parts).map(|p| format!("{name}{p}")).collect();
        let line = format!(" {name}: {}\r\n", list.join(" "));
        assert!(log.contains(&line), "{name} should have exactly {parts} partitions:\n{log}");
    }
    // The raw disk is the first virtio device, so the first disk the kernel names.
    assert_eq!(disk_named(&log, 16384).as_deref(), Some("vda"), "{log}");
    assert!(!log.contains("GPT:"), "the kernel complained about the GPT:\n{log}");
    if hardware {
        assert!(log.contains("HV-DISK-OK"), "/init's dd round trip did not succeed:\n{log}");
        assert!(log.contains(&format!("HV-DISK-SECTOR {DD_SECTOR}")), "{log}");
        let io = images.open_volume("raw", false).unwrap();
        let mut sector = vec![0u8; 512];
        io.read_at(&mut sector, DD_SECTOR * 512).unwrap();
        assert!(sector.iter().any(|&b| b != 0), "/init's sector did not reach the volume");
    }
}
