//! Image uploads: checksums, the format check against the bytes, and a malicious qcow2 (one
//! with a backing file) refused; images in use cannot be deleted.

mod common;

use std::process::Command;

use common::*;
use hv_orchestrator::image::{DiskFormat, ImageStatus, ImageUpdate, NewImage, Visibility};
use hv_orchestrator::{Error, Role};
use md5::{Digest, Md5};
use sha2::Sha512;

fn qemu_img(args: &[&str]) -> bool {
    Command::new("qemu-img").args(args).output().is_ok_and(|o| o.status.success())
}

#[test]
fn uploads_are_checksummed_and_checked_against_their_format() {
    hv_test_support::require!(qemu_img(&["--version"]), "qemu-img is not installed");
    let db = Db::sqlite();
    let cloud = db.cloud();
    let admin = admin(&cloud);
    let a = tenant(&cloud, &admin, "pa", Role::Member);
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n).display().to_string();

    // A good qcow2, streamed from a file, with Glance's two checksums.
    assert!(qemu_img(&["create", "-q", "-f", "qcow2", &p("good.qcow2"), "64M"]));
    let bytes = std::fs::read(p("good.qcow2")).unwrap();
    let img = cloud.create_image(&a, &NewImage::new("good", DiskFormat::Qcow2)).unwrap();
    let mut f = std::fs::File::open(p("good.qcow2")).unwrap();
    let up = cloud.upload_image(&a, &img.id, &mut f).unwrap();
    assert_eq!(up.status, ImageStatus::Active);
    assert_eq!(up.size, Some(bytes.len() as u64));
    assert_eq!(up.virtual_size, Some(64 << 20));
    assert_eq!(up.checksum.as_deref(), Some(hex::encode(Md5::digest(&bytes)).as_str()));
    assert_eq!(up.os_hash_value.as_deref(), Some(hex::encode(Sha512::digest(&bytes)).as_str()));
    assert!(matches!(
        cloud.upload_image(&a, &img.id, &mut &bytes[..]),
        Err(Error::Conflict { .. })
    ));

    // The malicious one: a qcow2 whose header names a host file as its backing file.
    assert!(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "/etc/shadow",
        "-F",
        "raw",
        &p("evil.qcow2"),
        "64M"
    ]));
    let evil = cloud.create_image(&a, &NewImage::new("evil", DiskFormat::Qcow2)).unwrap();
    let mut f = std::fs::File::open(p("evil.qcow2")).unwrap();
    match cloud.upload_image(&a, &evil.id, &mut f) {
        Err(Error::ImageRefused { reason, .. }) => {
            assert!(reason.contains("backing file"), "{reason}")
        }
        other => panic!("a qcow2 with a backing file was accepted: {other:?}"),
    }
    let killed = cloud.get_image(&a, &evil.id).unwrap();
    assert_eq!(killed.status, ImageStatus::Killed);
    assert!(killed.fault.unwrap().contains("/etc/shadow"));
    assert!(!cloud
        .list_images(&a, None)
        .unwrap()
        .iter()
        .any(|i| i.status == ImageStatus::Active && i.id == evil.id));
    let pool_dir = db.dir().join("images");
    assert!(!pool_dir.join(&evil.id).exists(), "a refused image left data in the pool");
    assert!(std::fs::read_dir(&pool_dir).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".part.")));

    // Declared format must match the bytes, both ways.
    let lie = cloud.create_image(&a, &NewImage::new("lie", DiskFormat::Raw)).unwrap();
    assert!(matches!(
        cloud.upload_image(&a, &lie.id, &mut &bytes[..]),
        Err(Error::ImageRefused { .. })
    ));
    let lie2 = cloud.create_image(&a, &NewImage::new("lie2", DiskFormat::Qcow2)).unwrap();
    assert!(matches!(
        cloud.upload_image(&a, &lie2.id, &mut &[0u8; 1024][..]),
        Err(Error::ImageRefused { .. })
    ));

    // Properties and visibility: members edit their own, only the admin publishes.
    let mut change = ImageUpdate::default();
    change.set.insert("os_command_line".into(), "console=ttyS0".into());
    change.visibility = Some(Visibility::Private);
    let upd = cloud.update_image(&a, &img.id, &change).unwrap();
    assert_eq!(upd.properties["os_command_line"], "console=ttyS0");
    assert_eq!(upd.visibility, Visibility::Private);
    let publish = ImageUpdate { visibility: Some(Visibility::Public), ..Default::default() };
    assert!(matches!(cloud.update_image(&a, &img.id, &publish), Err(Error::Forbidden { .. })));
    assert_eq!(
        cloud.update_image(&admin, &img.id, &publish).unwrap().visibility,
        Visibility::Public
    );

    // In use: cannot vanish; released: deleted with its data.
    cloud.use_image(&a, &img.id, "vm1").unwrap();
    assert!(matches!(cloud.delete_image(&a, &img.id), Err(Error::Conflict { .. })));
    cloud.release_image(&a, "vm1").unwrap();
    cloud.delete_image(&a, &img.id).unwrap();
    assert!(!pool_dir.join(&img.id).exists());
    assert!(matches!(cloud.get_image(&a, &img.id), Err(Error::NotFound { .. })));
}
