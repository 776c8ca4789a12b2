//! `hv-vmm --disk path=NAME,segments=PV:OFFSET:LENGTH;...` (hv's extension for a logical
//! volume, there being no device-mapper to make `/dev/VG/LV`): the test guest writes across
//! the boundary of a volume spanning two physical-volume files and its bytes land in exactly
//! the extents the map names, nothing elsewhere; a read-only volume refuses the write; a
//! snapshot restored in a new process reopens the volume through its extents, and so does the
//! destination of a migration.

mod vmm_process;

use std::path::Path;

use vmm_process::{can_run_guests, dirty_config, migrate, put, vm_state, VmmProcess};

const MIB: u64 = 1 << 20;

/// Two 8 MiB physical volumes; the volume is 2 MiB of `b` at 1 MiB, then 2 MiB of `a` at
/// 3 MiB. Answers the PV paths and the `segments=` value.
fn two_pvs(dir: &Path) -> ([std::path::PathBuf; 2], String) {
    let a = dir.join("pv-a");
    let b = dir.join("pv-b");
    for pv in [&a, &b] {
        std::fs::File::create(pv).and_then(|f| f.set_len(8 * MIB)).expect("PV file");
    }
    let segs =
        format!("{}:{}:{};{}:{}:{}", b.display(), MIB, 2 * MIB, a.display(), 3 * MIB, 2 * MIB);
    ([a, b], segs)
}

#[test]
fn a_guest_writes_across_a_logical_volume_into_the_extents_of_its_two_pvs() {
    if !can_run_guests() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ([a, b], segs) = two_pvs(dir.path());
    // 1 MiB from 1.75 MiB of the volume: 0.25 MiB at the end of the first extent (pv-b),
    // 0.75 MiB at the start of the second (pv-a).
    let (sector, count, seed) = (3584u64, 2048u64, 7u64);
    let flag = format!("path=/dev/vg0/lv0,segments={segs}");
    let cmdline = format!("test=blk sector={sector} count={count} seed={seed}");
    let (vmm, status) = VmmProcess::run_with_disk(&flag, &cmdline);
    assert_eq!(status.code(), Some(0), "log:\n{}", vmm.log_text());
    let l = vmm.hvtest_lines();
    assert!(l.contains(&"blk capacity=8192".to_string()), "{l:?}");
    assert!(l.contains(&"blk verify ok".to_string()), "{l:?}");
    assert!(vmm.log_text().contains("a logical volume of 2 extent(s)"), "{}", vmm.log_text());

    let pattern = hv_test_support::blk_pattern(seed, sector, count);
    let split = (MIB / 4) as usize;
    let (pa, pb) = (std::fs::read(&a).expect("pv-a"), std::fs::read(&b).expect("pv-b"));
    // pv-b: the volume's [1.75, 2) MiB is pv-b's [2.75, 3) MiB; nothing else written.
    let b_at = (MIB + 7 * MIB / 4) as usize;
    assert_eq!(&pb[b_at..b_at + split], &pattern[..split], "pv-b's extent");
    assert!(pb[..b_at].iter().chain(&pb[b_at + split..]).all(|&x| x == 0), "pv-b elsewhere");
    // pv-a: the volume's [2, 2.75) MiB is pv-a's [3, 3.75) MiB.
    let a_at = (3 * MIB) as usize;
    let rest = pattern.len() - split;
    assert_eq!(&pa[a_at..a_at + rest], &pattern[split..], "pv-a's extent");
    assert!(pa[..a_at].iter().chain(&pa[a_at + rest..]).all(|&x| x == 0), "pv-a elsewhere");

    // Read-only: the write is refused, the read goes through, the PVs are unchanged.
    let (vmm, status) =
        VmmProcess::run_with_disk(&format!("{flag},readonly=on"), "test=blk count=4 seed=9");
    assert_eq!(status.code(), Some(0), "log:\n{}", vmm.log_text());
    let l = vmm.hvtest_lines();
    assert!(l.contains(&"blk read-only".to_string()), "{l:?}");
    assert!(l.contains(&"blk read ok".to_string()), "{l:?}");
    assert_eq!(std::fs::read(&a).expect("pv-a"), pa);
    assert_eq!(std::fs::read(&b).expect("pv-b"), pb);
}

#[test]
fn an_extent_past_its_pv_or_a_missing_pv_fails_the_boot() {
    if !can_run_guests() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ([a, _], _) = two_pvs(dir.path());
    let vmm = VmmProcess::spawn(&[], true);
    let c = vmm.client();
    for (segments, want) in [
        (serde_json::json!([{"path": a, "offset": 7 * MIB, "length": 2 * MIB}]), "past the end"),
        (
            serde_json::json!([{"path": dir.path().join("gone"), "offset": 0, "length": MIB}]),
            "gone",
        ),
    ] {
        let mut config: serde_json::Value =
            serde_json::from_str(&vmm_process::guest_config("test=hlt", &vmm.serial))
                .expect("json");
        config["disks"] = serde_json::json!([{"path": "/dev/vg0/lv0", "segments": segments}]);
        assert_eq!(put(&c, "vm.create", Some(&config.to_string())).status, 204);
        let r = put(&c, "vm.boot", None);
        assert_eq!(r.status, 500);
        assert!(r.body.contains(want), "{}", r.body);
        assert_eq!(put(&c, "vm.delete", None).status, 204);
    }
    // Refused at the edge: a relative PV path.
    let mut config: serde_json::Value =
        serde_json::from_str(&vmm_process::guest_config("test=hlt", &vmm.serial)).expect("json");
    config["disks"] = serde_json::json!([{"path": "/dev/vg0/lv0",
        "segments": [{"path": "pv-a", "offset": 0, "length": MIB}]}]);
    let r = put(&c, "vm.create", Some(&config.to_string()));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("disks[0].segments[0].path"), "{}", r.body);
}

#[test]
fn a_logical_volume_is_reopened_by_its_extents_after_a_restore_and_a_migration() {
    if !can_run_guests() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ([a, b], _) = two_pvs(dir.path());
    let segments = serde_json::json!([
        {"path": b, "offset": MIB, "length": 2 * MIB},
        {"path": a, "offset": 3 * MIB, "length": 2 * MIB},
    ]);
    let mut src = VmmProcess::spawn(&[], true);
    let c = src.client();
    let mut config: serde_json::Value =
        serde_json::from_str(&dirty_config(16, 64, &src.serial)).expect("json");
    config["disks"] = serde_json::json!([{"path": "/dev/vg0/lv0", "segments": segments}]);
    assert_eq!(put(&c, "vm.create", Some(&config.to_string())).status, 204);
    assert_eq!(put(&c, "vm.boot", None).status, 204);
    vmm_process::wait_dirty_round(&src.serial, 0);
    assert_eq!(put(&c, "vm.pause", None).status, 204);
    let snap = dir.path().join("snap");
    let body = serde_json::json!({"destination_url": format!("file://{}", snap.display())});
    assert_eq!(put(&c, "vm.snapshot", Some(&body.to_string())).status, 204);
    assert_eq!(put(&c, "vmm.shutdown", None).status, 204);
    assert!(src.wait_exit().success());

    let restore = format!("source_url=file://{}", snap.display());
    let dst = VmmProcess::spawn(&["--restore", &restore], true);
    let c = dst.client();
    assert_eq!(vm_state(&c), "Paused");
    let shown_segments = |c: &hv::vmm::client::Client| {
        let info = c.info().expect("info");
        let disk = &info.config.disks.expect("disks")[0];
        serde_json::to_value(disk.segments.as_ref().expect("segments")).expect("json")
    };
    assert_eq!(shown_segments(&c), segments);
    dst.wait_for_log("a logical volume of 2 extent(s)");
    assert_eq!(put(&c, "vm.resume", None).status, 204);
    assert_eq!(vm_state(&c), "Running");

    // Migrated on: the destination opens the same extents from the source's configuration.
    let mut dst = dst;
    let url = format!("unix:{}", dir.path().join("migrate.sock").display());
    let moved = migrate(&mut dst, &url);
    assert_eq!(shown_segments(&moved.client()), segments);
    moved.wait_for_log("a logical volume of 2 extent(s)");
    let round = vmm_process::wait_dirty_round(&src.serial, 0);
    vmm_process::wait_dirty_round(&src.serial, round);
}
