//! Block storage for real: a volume (a logical volume of the host's volume pool, on a sparse
//! file) attached to a shut-off instance is the test guest's disk at its next boot, keeps what
//! the guest wrote across stop/start, cannot be deleted while attached; snapshots and volumes
//! from snapshots and images carry the bytes.

mod common;

use common::*;
use hv_orchestrator::compute::{InstanceAction, InstanceStatus, NewFlavor, NewInstance};
use hv_orchestrator::volume::{NewVolume, VolumeStatus};
use hv_orchestrator::{Context, Error, Role};
use hv_test_support::netns::NetNs;

/// The first `n` bytes of volume `id`, read through the volume pool.
fn first_bytes(cloud: &hv_orchestrator::Cloud, t: &Context, id: &str, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    cloud.open_volume(t, id).unwrap().read_at(&mut b, 0).unwrap();
    b
}

fn volume_size(cloud: &hv_orchestrator::Cloud, t: &Context, id: &str) -> u64 {
    cloud.open_volume(t, id).unwrap().size()
}

both!(a_volume_keeps_guest_data_across_stop_and_start, |db| {
    hv_test_support::require!(can_run_vms(), "KVM, root, ip and nft are needed");
    let ns = NetNs::new("orch-vol");
    let state = hv_test_support::state_dir::StateDir::new();
    ns.run(|| {
        let cloud = db.compute_cloud(state.path());
        let admin = admin(&cloud);
        let t = tenant(&cloud, &admin, "pa", Role::Member);
        let f = cloud.create_flavor(&admin, &NewFlavor::new("small", 1, 128, 0)).unwrap();
        let img = guest_image(&cloud, &t, "blk", "test=blk sector=0 count=8 seed=7");
        let vol = cloud
            .create_volume(&t, &NewVolume { name: "data".into(), size_gb: 1, ..Default::default() })
            .unwrap();
        assert_eq!(vol.status, VolumeStatus::Available);
        // A logical volume of the pool on the state directory's sparse PV file: no host file.
        assert!(cloud.volume_path(&t, &vol.id).is_err());
        assert!(state.path().join(hv_orchestrator::driver::VOLUME_PV_FILE).is_file());
        assert!(first_bytes(&cloud, &t, &vol.id, 4096).iter().all(|b| *b == 0));

        // Attached at boot: the guest writes its pattern on it and powers off.
        let i = cloud
            .create_instance(&t, &NewInstance::new("vm", &img, &f.id).volume(&vol.id))
            .unwrap();
        assert_eq!(i.status, InstanceStatus::Active, "{:?}", i.fault);
        assert_eq!(i.volumes[0].device, "/dev/vda");
        assert_eq!(cloud.get_volume(&t, &vol.id).unwrap().status, VolumeStatus::InUse);
        assert!(matches!(cloud.delete_volume(&t, &vol.id), Err(Error::Conflict { .. })));
        let st = wait_for(60, || {
            let s = cloud.get_instance(&t, &i.id).unwrap().status;
            (s != InstanceStatus::Active).then_some(s)
        });
        assert_eq!(st, Some(InstanceStatus::Shutoff));
        let log = cloud.console_log(&t, &i.id, None).unwrap();
        assert!(log.contains("hvtest: blk capacity=2097152"), "{log}");
        assert!(log.contains("hvtest: blk verify ok"), "{log}");
        let written = first_bytes(&cloud, &t, &vol.id, 4096);
        assert!(written.iter().any(|b| *b != 0), "the guest's pattern is on the volume");

        // Start again: same disk, same bytes (the guest verifies its pattern once more).
        cloud.instance_action(&t, &i.id, InstanceAction::Start).unwrap();
        wait_for(60, || {
            (cloud.get_instance(&t, &i.id).unwrap().status == InstanceStatus::Shutoff).then_some(())
        })
        .expect("second run ends");
        assert_eq!(first_bytes(&cloud, &t, &vol.id, 4096), written);

        // An attached volume is snapshotted only when forced (Cinder's 400 otherwise).
        let e = cloud.create_snapshot(&t, &vol.id, "s0", false).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { .. })
                && e.to_string().contains("must be available, but current status is: in-use"),
            "{e}"
        );
        let forced = cloud.create_snapshot(&t, &vol.id, "s0", true).unwrap();
        let from_forced = NewVolume {
            name: "forced".into(),
            size_gb: 2,
            snapshot_id: Some(forced.id.clone()),
            image_id: None,
        };
        let from_forced = cloud.create_volume(&t, &from_forced).unwrap();
        assert_eq!(first_bytes(&cloud, &t, &from_forced.id, 4096), written);
        cloud.delete_volume(&t, &from_forced.id).unwrap();
        cloud.delete_snapshot(&t, &forced.id).unwrap();
        // Detached (the instance is shut off), it is available.
        cloud.detach_volume(&t, &i.id, &vol.id).unwrap();
        let snap = cloud.create_snapshot(&t, &vol.id, "s1", false).unwrap();
        let copy = cloud
            .create_volume(
                &t,
                &NewVolume {
                    name: "copy".into(),
                    size_gb: 2,
                    snapshot_id: Some(snap.id.clone()),
                    image_id: None,
                },
            )
            .unwrap();
        assert_eq!(first_bytes(&cloud, &t, &copy.id, 4096), written);
        assert_eq!(volume_size(&cloud, &t, &copy.id), 2 << 30);
        let grown = cloud.extend_volume(&t, &vol.id, 3).unwrap();
        assert_eq!(grown.size_gb, 3);
        assert_eq!(volume_size(&cloud, &t, &vol.id), 3 << 30);
        assert!(
            matches!(cloud.delete_volume(&t, &vol.id), Err(Error::Conflict { .. })),
            "it has a snapshot"
        );
        cloud.delete_snapshot(&t, &snap.id).unwrap();
        cloud.delete_volume(&t, &vol.id).unwrap();
        cloud.delete_volume(&t, &copy.id).unwrap();
        assert!(cloud.open_volume(&t, &vol.id).is_err());
        // A volume from an image holds the image's bytes.
        let from_img = cloud
            .create_volume(
                &t,
                &NewVolume {
                    name: "img".into(),
                    size_gb: 1,
                    image_id: Some(img.clone()),
                    snapshot_id: None,
                },
            )
            .unwrap();
        let guest = std::fs::read(hv_test_support::test_guest()).unwrap();
        assert_eq!(first_bytes(&cloud, &t, &from_img.id, guest.len()), guest);
        assert!(from_img.bootable);
        // An image whose guest-visible size does not fit the volume is refused before
        // anything is claimed (a qcow2 of 2 GiB virtual size into 1 GiB).
        let big = state.path().join("big.qcow2");
        let mk = std::process::Command::new("qemu-img")
            .args(["create", "-f", "qcow2"])
            .arg(&big)
            .arg("2G")
            .output()
            .expect("qemu-img runs");
        assert!(mk.status.success(), "{mk:?}");
        let big_img = {
            use hv_orchestrator::image::{DiskFormat, NewImage};
            let im = cloud.create_image(&t, &NewImage::new("big", DiskFormat::Qcow2)).unwrap();
            cloud.upload_image(&t, &im.id, &mut std::fs::File::open(&big).unwrap()).unwrap();
            im.id
        };
        let before = cloud.quota_usage(&t, t.project_id()).unwrap();
        let e = cloud
            .create_volume(
                &t,
                &NewVolume {
                    name: "small".into(),
                    size_gb: 1,
                    image_id: Some(big_img.clone()),
                    snapshot_id: None,
                },
            )
            .unwrap_err();
        assert!(matches!(e, hv_orchestrator::Error::Invalid { field: "size", .. }), "{e}");
        assert!(e.to_string().contains("doesn't fit"), "{e}");
        assert_eq!(cloud.quota_usage(&t, t.project_id()).unwrap(), before);
        assert_eq!(cloud.list_volumes(&t).unwrap().len(), 1);
        cloud.delete_instance(&t, &i.id).unwrap();
        cloud.delete_volume(&t, &from_img.id).unwrap();
        let usage = cloud.quota_usage(&t, t.project_id()).unwrap();
        assert!(
            usage
                .iter()
                .all(|u| u.in_use == 0
                    || u.resource == hv_orchestrator::quota::Resource::SecurityGroups),
            "{usage:?}"
        );
    });
});
