//! Property tests: random bytes as qcow2 headers (through our probe and imago) and as logical
//! pool labels and metadata give typed errors, never a panic; random allocation sequences
//! keep the extent maps consistent.

mod pool_common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use hv_storage::block::open::open_qcow2;
use hv_storage::block::DiskOptions;
use hv_storage::pool::format::{probe_path, FormatError, Probed};
use hv_storage::pool::image::{create_qcow2, VolumeIo};
use hv_storage::pool::logical::alloc;
use hv_storage::pool::logical::label::Label;
use hv_storage::pool::logical::metadata::{LvMeta, PvMeta, VgMetadata};
use hv_storage::pool::{Pool, PoolError};
use pool_common::Env;
use proptest::prelude::*;

/// Probes `bytes` as a file; if the probe accepts it as qcow2, opens it with imago and reads.
fn probe_and_open(dir: &Path, bytes: &[u8]) {
    let path = dir.join("img");
    fs::write(&path, bytes).unwrap();
    match probe_path(&path) {
        Ok(Probed::Qcow2(h)) => {
            // The confined opener refuses any backing or data file (none is allowed here).
            let opts = DiskOptions { read_only: true, ..Default::default() };
            let opened = open_qcow2(&path, &opts);
            if h.backing_file.is_some() || h.data_file.is_some() {
                assert!(opened.is_err(), "a backing or data file was followed");
            }
            if let Ok(img) = opened {
                let mut buf = vec![0u8; 4096];
                for off in [0, img.size() / 2, img.size().saturating_sub(4096)] {
                    let n = (img.size() - off).min(4096) as usize;
                    let _ = img.read_at(&mut buf[..n], off);
                }
            }
        }
        Ok(Probed::Raw { size }) => assert_eq!(size, bytes.len() as u64),
        Err(
            FormatError::BadQcow2 { .. } | FormatError::Unsupported { .. } | FormatError::Io { .. },
        ) => {}
    }
}

fn valid_qcow2() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    fs::File::create(&path).unwrap();
    create_qcow2(&path, 8 << 20, None).unwrap();
    let img = open_qcow2(&path, &DiskOptions::default()).unwrap();
    img.write_at(&[7u8; 70000], 12345).unwrap();
    img.flush().unwrap();
    drop(img);
    fs::read(&path).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_qcow2_headers_are_typed_errors(version in 0u32..5, rest in proptest::collection::vec(any::<u8>(), 0..600)) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"QFI\xfb".to_vec();
        bytes.extend_from_slice(&version.to_be_bytes());
        bytes.extend_from_slice(&rest);
        probe_and_open(dir.path(), &bytes);
    }

    #[test]
    fn mutated_qcow2_images_are_typed_errors(
        flips in proptest::collection::vec((0usize..0x3_0000, any::<u8>()), 1..12),
    ) {
        static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let mut bytes = IMAGE.get_or_init(valid_qcow2).clone();
        for (off, val) in flips {
            // Mostly the header cluster, sometimes the tables behind it.
            let off = if off % 3 == 0 { off % 512 } else { off % bytes.len() };
            bytes[off] = val;
        }
        let dir = tempfile::tempdir().unwrap();
        probe_and_open(dir.path(), &bytes);
    }

    #[test]
    fn random_labels_and_metadata_slots_are_typed_errors(bytes in proptest::collection::vec(any::<u8>(), 0..5000), magic in any::<bool>()) {
        let mut b = bytes;
        if magic && b.len() >= 8 {
            b[..8].copy_from_slice(b"HVVGMDA1");
        }
        prop_assert!(VgMetadata::decode_slot(&b, &[0u8; 16]).is_err() || b.len() >= 64);
        if magic && b.len() >= 8 {
            b[..8].copy_from_slice(b"HVPVLBL1");
        }
        let _ = Label::decode(&b, Path::new("/dev/x"));
    }

    /// Metadata with a valid checksum but arbitrary content: validation catches it.
    #[test]
    fn checksummed_nonsense_metadata_is_rejected(
        extent_pow in 10u32..32,
        pe_counts in proptest::collection::vec(0u64..50, 0..3),
        lvs in proptest::collection::vec((0usize..4, 0u64..60, 0u64..60, 0u64..200 << 20, 0u64..3), 0..6),
    ) {
        let uuid = [3u8; 16];
        let meta = VgMetadata {
            vg_name: "vg".into(),
            vg_uuid: hv_storage::pool::logical::label::hex(&uuid),
            seq: 5,
            extent_size: 1 << extent_pow,
            pvs: pe_counts.iter().enumerate().map(|(i, &n)| PvMeta { uuid: format!("{i}"), pe_count: n, device: "/x".into() }).collect(),
            lvs: lvs.iter().enumerate().map(|(i, &(pv, start, count, size, nsegs))| LvMeta {
                name: format!("lv{}", i % 4),
                size,
                origin: None,
                segments: (0..nsegs).map(|k| hv_storage::pool::logical::metadata::SegMeta {
                    lv_start: k * count, count, pv, pv_start: start + k * count,
                }).collect(),
            }).collect(),
        };
        if let Ok(slot) = meta.encode_slot(&uuid) {
            let decoded = VgMetadata::decode_slot(&slot, &uuid);
            prop_assert_eq!(decoded.is_ok(), meta.validate().is_ok());
        }
    }

    /// Random create/grow/shrink/delete sequences keep every extent used at most once.
    #[test]
    fn allocation_keeps_extent_maps_consistent(ops in proptest::collection::vec((0u8..4, 0usize..6, 1u64..40), 1..60)) {
        let mut meta = VgMetadata {
            vg_name: "vg".into(), vg_uuid: "00".into(), seq: 1, extent_size: 1 << 20,
            pvs: vec![PvMeta { uuid: "a".into(), pe_count: 64, device: "/a".into() },
                      PvMeta { uuid: "b".into(), pe_count: 30, device: "/b".into() }],
            lvs: vec![],
        };
        for (op, which, n) in ops {
            let name = format!("lv{which}");
            let pos = meta.lvs.iter().position(|l| l.name == name);
            match (op, pos) {
                (0, None) => {
                    if let Some(segs) = alloc::allocate(&meta, 0, n, None) {
                        meta.lvs.push(LvMeta { name, size: n << 20, segments: segs, origin: None });
                    }
                }
                (1, Some(i)) => {
                    let lv = meta.lvs[i].clone();
                    let have = lv.extents();
                    let prefer = lv.segments.last().map(|s| (s.pv, s.pv_start + s.count));
                    if let Some(new) = alloc::allocate(&meta, have, n, prefer) {
                        let lv = &mut meta.lvs[i];
                        alloc::append(&mut lv.segments, new);
                        lv.size = (have + n) << 20;
                    }
                }
                (2, Some(i)) => {
                    let lv = &mut meta.lvs[i];
                    let keep = n.min(lv.extents()).max(1);
                    alloc::truncate(&mut lv.segments, keep);
                    lv.size = keep << 20;
                }
                (3, Some(i)) => { meta.lvs.remove(i); }
                _ => {}
            }
            prop_assert!(meta.validate().is_ok(), "{:?}", meta.validate());
            let used: u64 = meta.lvs.iter().map(|l| l.extents()).sum();
            prop_assert_eq!(used + alloc::free_extents(&meta), 94);
        }
    }
}

/// Random bytes over a PV's metadata area: starting the pool reports an error, no panic.
#[test]
fn garbage_metadata_areas_fail_start_with_a_typed_error() {
    let env = Env::new();
    let mut pool = env.logical_pool("vg", &[4]);
    pool.stop().unwrap();
    let pv = env.path("vg-pv0");
    for round in 0..40u64 {
        let f = fs::OpenOptions::new().write(true).open(&pv).unwrap();
        let len = if round % 2 == 0 { 1 << 20 } else { 4096 + (round as usize * 977) % 8192 };
        let start = if round % 4 < 2 { 4096 } else { 0 };
        let junk = pool_common::pattern(len - start.min(len), round + 1);
        f.write_all_at(&junk, start as u64).unwrap();
        drop(f);
        match pool.start() {
            Err(PoolError::Metadata { .. }) => {}
            other => panic!("round {round}: {other:?}"),
        }
    }
}
