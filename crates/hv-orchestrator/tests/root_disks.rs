//! Instance root disks are qcow2 overlays over one base copy of the image per host: two
//! instances of one image share the base, each overlay holds only its guest's writes, the
//! flavor's root size is the disk's size, and deleting one instance leaves the other (and the
//! base) whole until the last overlay goes; an instance on an overlay suspends and resumes.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;
use hv_orchestrator::compute::{InstanceAction, InstanceStatus, NewFlavor, NewInstance};
use hv_orchestrator::image::{DiskFormat, NewImage};
use hv_orchestrator::{Cloud, Context, Role};
use hv_test_support::netns::NetNs;

const MIB: usize = 1 << 20;

fn have_qemu_img() -> bool {
    Command::new("qemu-img").arg("--version").output().is_ok()
}

/// The header of `path` as `qemu-img info --output=json` reads it.
fn qemu_img_info(path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img info");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("qemu-img json")
}

/// The first `len` guest-visible bytes of qcow2 `path`, as qemu-img reads them through the chain.
fn guest_bytes(path: &Path, len: usize) -> Vec<u8> {
    let raw = path.with_file_name("check.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(path)
        .arg(&raw)
        .output()
        .expect("qemu-img convert");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut b = std::fs::read(&raw).expect("converted");
    std::fs::remove_file(&raw).expect("remove");
    b.truncate(len);
    b
}

/// A raw root image (16 MiB, seed-99 pattern in its first 2 MiB) booting the test guest as
/// its kernel with `cmdline`; returns the image id and its bytes.
fn root_image(cloud: &Cloud, t: &Context, cmdline: &str) -> (String, Vec<u8>) {
    let kernel = guest_image(cloud, t, "kernel", "unused");
    let mut n = NewImage::new("root", DiskFormat::Raw);
    n.properties.insert("kernel_id".into(), kernel);
    n.properties.insert("os_command_line".into(), cmdline.into());
    let img = cloud.create_image(t, &n).unwrap();
    let mut bytes = hv_test_support::blk_pattern(99, 0, 4096);
    bytes.resize(16 * MIB, 0);
    cloud.upload_image(t, &img.id, &mut &bytes[..]).unwrap();
    (img.id, bytes)
}

fn wait_status(cloud: &Cloud, t: &Context, id: &str, want: InstanceStatus) {
    let got = wait_for(60, || {
        let i = cloud.get_instance(t, id).unwrap();
        (i.status == want).then_some(())
    });
    assert!(got.is_some(), "{id} never became {want:?}: {:?}", cloud.get_instance(t, id));
}

both!(instances_of_one_image_share_one_base_under_small_overlays, |db| {
    hv_test_support::require!(can_run_vms(), "KVM, root, ip and nft are needed");
    hv_test_support::require!(have_qemu_img(), "qemu-img is not installed");
    let ns = NetNs::new("orch-root");
    let state = hv_test_support::state_dir::StateDir::new();
    ns.run(|| {
        let cloud = db.compute_cloud(state.path());
        let admin = admin(&cloud);
        let t = tenant(&cloud, &admin, "pa", Role::Member);
        // A 1 GiB root disk over a 16 MiB image: the overlay is the flavor's size.
        let f = cloud.create_flavor(&admin, &NewFlavor::new("small", 1, 64, 1)).unwrap();
        let (img, image_bytes) = root_image(&cloud, &t, "test=blk sector=4000 count=160 seed=5");
        let a = cloud.create_instance(&t, &NewInstance::new("a", &img, &f.id)).unwrap();
        let b = cloud.create_instance(&t, &NewInstance::new("b", &img, &f.id)).unwrap();
        assert_eq!(a.status, InstanceStatus::Active, "{:?}", a.fault);
        assert_eq!(b.status, InstanceStatus::Active, "{:?}", b.fault);
        // Each guest writes across the end of the image's data, verifies and powers off.
        for i in [&a, &b] {
            wait_status(&cloud, &t, &i.id, InstanceStatus::Shutoff);
            let log = cloud.console_log(&t, &i.id, None).unwrap();
            assert!(log.contains("hvtest: blk capacity=2097152"), "{log}");
            assert!(log.contains("hvtest: blk verify ok"), "{log}");
        }

        // One base for both, the image's bytes unchanged; two small overlays over it.
        let pool = state.path().join("instances");
        let base = pool.join(format!("base-{img}"));
        let bases: Vec<_> = std::fs::read_dir(&pool)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("base-"))
            .collect();
        assert_eq!(bases, vec![format!("base-{img}")]);
        assert!(std::fs::read(&base).unwrap() == image_bytes, "the base changed");
        let mut want = image_bytes[..6000 * 512].to_vec();
        want[4000 * 512..4160 * 512].copy_from_slice(&hv_test_support::blk_pattern(5, 4000, 160));
        for i in [&a, &b] {
            let overlay = pool.join(&i.id);
            let info = qemu_img_info(&overlay);
            assert_eq!(info["format"], "qcow2", "{info}");
            assert_eq!(info["virtual-size"], 1u64 << 30, "{info}");
            let backing = info["full-backing-filename"].as_str().unwrap_or_default();
            assert_eq!(Path::new(backing), base, "{info}");
            assert_eq!(info["backing-filename-format"], "raw", "{info}");
            let allocated = std::fs::metadata(&overlay).unwrap().blocks() * 512;
            assert!(allocated < 2 * MIB as u64, "overlay of {} holds {allocated} bytes", i.id);
            assert!(guest_bytes(&overlay, want.len()) == want, "{} is not base + writes", i.id);
        }

        // Deleting a: its overlay goes, the base stays, b boots again on its own overlay.
        cloud.delete_instance(&t, &a.id).unwrap();
        assert!(!pool.join(&a.id).exists());
        assert!(base.exists(), "the base went with an overlay still on it");
        let started = cloud.instance_action(&t, &b.id, InstanceAction::Start).unwrap();
        assert_eq!(started.status, InstanceStatus::Active, "{:?}", started.fault);
        wait_status(&cloud, &t, &b.id, InstanceStatus::Shutoff);
        // The console log is this boot's: the guest wrote and verified again.
        let log = cloud.console_log(&t, &b.id, None).unwrap();
        assert_eq!(log.matches("hvtest: boot").count(), 1, "{log}");
        assert!(log.contains("hvtest: blk verify ok"), "{log}");
        assert!(guest_bytes(&pool.join(&b.id), want.len()) == want);

        // The last instance goes: so do its overlay and the base.
        cloud.delete_instance(&t, &b.id).unwrap();
        assert!(!pool.join(&b.id).exists());
        assert!(!base.exists(), "the base outlived its last overlay");
        assert!(!state.path().join("base-ready").join(&img).exists());
        // The image (no longer in use) can go, and a new instance of another image still works.
        cloud.delete_image(&t, &img).unwrap();
    });
});

both!(an_instance_on_an_overlay_suspends_and_resumes, |db| {
    hv_test_support::require!(can_run_vms(), "KVM, root, ip and nft are needed");
    let ns = NetNs::new("orch-rootsus");
    let state = hv_test_support::state_dir::StateDir::new();
    ns.run(|| {
        let cloud = db.compute_cloud(state.path());
        let admin = admin(&cloud);
        let t = tenant(&cloud, &admin, "pa", Role::Member);
        let f = cloud.create_flavor(&admin, &NewFlavor::new("small", 1, 64, 1)).unwrap();
        let (img, _) = root_image(&cloud, &t, "test=power-button");
        let i = cloud.create_instance(&t, &NewInstance::new("vm", &img, &f.id)).unwrap();
        assert_eq!(i.status, InstanceStatus::Active, "{:?}", i.fault);
        wait_for(60, || {
            let l = cloud.console_log(&t, &i.id, None).unwrap();
            l.contains("waiting for the power button").then_some(())
        })
        .expect("the guest booted");
        // Saved and restored: the VMM reopens the overlay with its chain.
        let s = cloud.instance_action(&t, &i.id, InstanceAction::Suspend).unwrap();
        assert_eq!(s.status, InstanceStatus::Suspended, "{:?}", s.fault);
        let r = cloud.instance_action(&t, &i.id, InstanceAction::Resume).unwrap();
        assert_eq!(r.status, InstanceStatus::Active, "{:?}", r.fault);
        // The restored guest is the same one, still waiting: the power button reaches it.
        let s = cloud.instance_action(&t, &i.id, InstanceAction::Stop).unwrap();
        assert_eq!(s.status, InstanceStatus::Shutoff);
        let log = cloud.console_log(&t, &i.id, None).unwrap();
        assert!(log.contains("power button pressed"), "{log}");
        cloud.delete_instance(&t, &i.id).unwrap();
        assert!(!state.path().join("instances").join(format!("base-{img}")).exists());
    });
});
