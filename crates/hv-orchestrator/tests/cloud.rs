//! Identity, isolation, quotas, events and restart recovery, on SQLite and on PostgreSQL.

mod common;

use std::sync::Arc;

use common::*;
use hv_orchestrator::compute::{GroupPolicy, HostSpec, NewFlavor};
use hv_orchestrator::identity::PasswordAuth;
use hv_orchestrator::image::{DiskFormat, NewImage};
use hv_orchestrator::quota::Resource;
use hv_orchestrator::store::QuotaMode;
use hv_orchestrator::{Error, Role};

fn is_not_found<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::NotFound { .. }))
}

both!(tokens_expire_revoke_and_follow_roles, |db| {
    let cloud = db.cloud();
    let admin = admin(&cloud);
    let alice = tenant(&cloud, &admin, "pa", Role::Member);
    assert_eq!(alice.roles(), &[Role::Member]);
    // Wrong password, unknown user, wrong project: one answer.
    for auth in [
        PasswordAuth::by_name("pa-user", "nope", "pa"),
        PasswordAuth::by_name("ghost", "pw", "pa"),
        PasswordAuth::by_name("pa-user", "pw", "admin"),
    ] {
        assert!(matches!(cloud.authenticate(&auth), Err(Error::Unauthorized(_))));
    }
    let t = cloud.authenticate(&PasswordAuth::by_name("pa-user", "pw", "pa")).unwrap();
    assert!(cloud.validate(&t.secret).is_ok());
    assert!(matches!(cloud.validate("f00"), Err(Error::Unauthorized(_))));
    cloud.revoke_token(&alice, &t.secret).unwrap();
    assert!(matches!(cloud.validate(&t.secret), Err(Error::Unauthorized(_))));
    // Taking the role away revokes the user's tokens for that project.
    let t2 = cloud.authenticate(&PasswordAuth::by_name("pa-user", "pw", "pa")).unwrap();
    cloud.revoke_role(&admin, alice.project_id(), alice.user_id(), Role::Member).unwrap();
    assert!(matches!(cloud.validate(&t2.secret), Err(Error::Unauthorized(_))));
    // Expiry.
    let mut cfg = cloud.config().clone();
    cfg.token_ttl_secs = 0;
    let short = hv_orchestrator::Cloud::open(db.store(), cfg).unwrap();
    let t3 = short.authenticate(&PasswordAuth::by_name("admin", ADMIN_PW, "admin")).unwrap();
    assert!(
        matches!(short.validate(&t3.secret), Err(Error::Unauthorized(m)) if m.contains("expired"))
    );
    // Readers read, only members write.
    let reader = tenant(&cloud, &admin, "pr", Role::Reader);
    assert!(cloud.list_images(&reader, None).is_ok());
    assert!(matches!(
        cloud.create_image(&reader, &NewImage::new("x", DiskFormat::Raw)),
        Err(Error::Forbidden { .. })
    ));
    assert!(matches!(cloud.create_project(&reader, "x", ""), Err(Error::Forbidden { .. })));
});

both!(projects_never_see_each_other, |db| {
    let cloud = db.cloud();
    let admin = admin(&cloud);
    cloud.add_host(&admin, &HostSpec::new("h1", 8, 16384, 100)).unwrap();
    let a = tenant(&cloud, &admin, "pa", Role::Member);
    let b = tenant(&cloud, &admin, "pb", Role::Member);
    let mut private = NewFlavor::new("private", 1, 256, 1);
    private.is_public = false;
    let fa = cloud.create_flavor(&admin, &private).unwrap();
    cloud.add_flavor_access(&admin, &fa.id, a.project_id()).unwrap();
    let public = cloud.create_flavor(&admin, &NewFlavor::new("m1.tiny", 1, 256, 1)).unwrap();

    // Each project makes one of everything, then the other may not see any of it.
    let mut made = vec![];
    for (me, flavor) in [(&a, &fa.id), (&b, &public.id)] {
        let img = cloud.create_image(me, &NewImage::new("img", DiskFormat::Raw)).unwrap();
        cloud.upload_image(me, &img.id, &mut &[0u8; 4096][..]).unwrap();
        let group = cloud.create_server_group(me, "g", GroupPolicy::AntiAffinity).unwrap();
        let consumer = format!("vm-{}", me.project_id());
        cloud.schedule(me, &consumer, flavor, Some(&group.id)).unwrap();
        made.push((me, img.id, group.id, consumer));
    }
    for (i, (owner, img, group, consumer)) in made.iter().enumerate() {
        let other = made[1 - i].0;
        assert!(cloud.get_image(owner, img).is_ok());
        assert!(is_not_found(cloud.get_image(other, img)));
        assert!(is_not_found(cloud.download_image(other, img, &mut std::io::sink())));
        assert!(is_not_found(cloud.delete_image(other, img)));
        assert!(is_not_found(cloud.upload_image(other, img, &mut &b""[..])));
        assert!(is_not_found(cloud.add_image_member(other, img, other.project_id())));
        assert!(!cloud.list_images(other, None).unwrap().iter().any(|x| &x.id == img));
        assert!(is_not_found(cloud.get_server_group(other, group)));
        assert!(is_not_found(cloud.delete_server_group(other, group)));
        assert!(!cloud.list_server_groups(other).unwrap().iter().any(|g| &g.id == group));
        assert!(is_not_found(cloud.unschedule(other, consumer, None)));
        assert!(is_not_found(cloud.get_project(other, owner.project_id())));
        assert!(is_not_found(cloud.quota_usage(other, owner.project_id())));
        assert!(is_not_found(cloud.get_user(other, owner.user_id())));
        assert!(is_not_found(cloud.list_assignments(other, owner.project_id())));
        assert_eq!(cloud.list_projects(other, None).unwrap().len(), 1);
        let events = cloud.list_events(other, Some(owner.project_id()), 0, 1000).unwrap();
        assert!(events.iter().all(|e| e.project_id == other.project_id()));
        // The admin sees both.
        assert!(cloud.get_image(&admin, img).is_ok());
        assert!(cloud.get_server_group(&admin, group).is_ok());
    }
    // Private flavor: A has access, B does not; a foreign id is a missing id.
    assert!(cloud.get_flavor(&a, &fa.id).is_ok());
    assert!(is_not_found(cloud.get_flavor(&b, &fa.id)));
    assert!(!cloud.list_flavors(&b, None).unwrap().iter().any(|f| f.id == fa.id));
    assert!(is_not_found(cloud.schedule(&b, "vm-x", &fa.id, None)));
    // Sharing opens exactly one image to exactly one project.
    let (_, img_a, _, _) = &made[0];
    cloud.add_image_member(&a, img_a, b.project_id()).unwrap();
    assert!(cloud.get_image(&b, img_a).is_ok());
    assert!(!cloud.list_images(&b, None).unwrap().iter().any(|x| &x.id == img_a));
    cloud
        .set_image_member_status(&b, img_a, hv_orchestrator::image::MemberStatus::Accepted)
        .unwrap();
    assert!(cloud.list_images(&b, None).unwrap().iter().any(|x| &x.id == img_a));
    assert!(matches!(cloud.delete_image(&b, img_a), Err(Error::Forbidden { .. })));
});

both!(quota_races_never_overshoot, |db| {
    let cloud = Arc::new(db.cloud());
    let admin = admin(&cloud);
    let a = tenant(&cloud, &admin, "pa", Role::Member);
    cloud.set_quota(&admin, a.project_id(), Resource::Instances, 7).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (cloud, a) = (cloud.clone(), a.clone());
            std::thread::spawn(move || {
                let mut won = 0;
                for _ in 0..10 {
                    match cloud.claim_quota(
                        &a,
                        &[(Resource::Instances, 1), (Resource::Cores, 1)],
                        QuotaMode::Reserve,
                    ) {
                        Ok(()) => won += 1,
                        Err(Error::QuotaExceeded { resource, .. }) => {
                            assert_eq!(resource, "instances")
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                won
            })
        })
        .collect();
    let won: i32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(won, 7);
    let usage = cloud.quota_usage(&a, a.project_id()).unwrap();
    let inst = usage.iter().find(|u| u.resource == Resource::Instances).unwrap();
    assert_eq!((inst.limit, inst.in_use, inst.reserved), (7, 0, 7));
    let cores = usage.iter().find(|u| u.resource == Resource::Cores).unwrap();
    assert_eq!(cores.reserved, 7, "the failed claims took no cores either");
    cloud.claim_quota(&a, &[(Resource::Instances, 7)], QuotaMode::Commit).unwrap();
    let inst = cloud.quota_usage(&a, a.project_id()).unwrap()[0];
    assert_eq!((inst.in_use, inst.reserved), (7, 0));
});

both!(a_restart_brings_every_record_back, |db| {
    let (img, flavor, host, group, project, token);
    {
        let cloud = db.cloud();
        let admin = admin(&cloud);
        let a = tenant(&cloud, &admin, "pa", Role::Member);
        host = cloud.add_host(&admin, &HostSpec::new("h1", 4, 8192, 50)).unwrap();
        flavor = cloud.create_flavor(&admin, &NewFlavor::new("m1", 2, 1024, 5)).unwrap();
        let i = cloud.create_image(&a, &NewImage::new("img", DiskFormat::Raw)).unwrap();
        img = cloud.upload_image(&a, &i.id, &mut &[1u8; 8192][..]).unwrap();
        group = cloud.create_server_group(&a, "g", GroupPolicy::Affinity).unwrap();
        cloud.schedule(&a, "vm1", &flavor.id, Some(&group.id)).unwrap();
        cloud.set_quota(&admin, a.project_id(), Resource::Ram, 4096).unwrap();
        token = cloud.authenticate(&PasswordAuth::by_name("pa-user", "pw", "pa")).unwrap().secret;
        project = a.project_id().to_string();
    }
    let cloud = db.cloud();
    let a = cloud.validate(&token).unwrap();
    assert_eq!(a.project_id(), project);
    assert_eq!(cloud.get_image(&a, &img.id).unwrap(), img);
    let mut data = vec![];
    cloud.download_image(&a, &img.id, &mut data).unwrap();
    assert_eq!(data, vec![1u8; 8192]);
    assert_eq!(cloud.get_flavor(&a, &flavor.id).unwrap(), flavor);
    let g = cloud.get_server_group(&a, &group.id).unwrap();
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.members[0].host_id, host.id);
    let admin = login(&cloud, "admin", ADMIN_PW, "admin");
    let h = cloud.get_host(&admin, &host.id).unwrap();
    assert_eq!((h.used_vcpus, h.used_ram_mb, h.used_disk_gb), (2, 1024, 5));
    let ram = cloud
        .quota_usage(&a, &project)
        .unwrap()
        .into_iter()
        .find(|u| u.resource == Resource::Ram)
        .unwrap();
    assert_eq!(ram.limit, 4096);
    let events = cloud.list_events(&a, None, 0, 100).unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    for want in
        ["image.create", "image.upload", "server_group.create", "placement.claim", "quota.set"]
    {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    // The scheduler's view came back too: the host has 4*16-2 vCPUs left, not 4*16.
    cloud.schedule(&a, "vm2", &flavor.id, Some(&group.id)).unwrap();
    assert_eq!(cloud.get_host(&admin, &host.id).unwrap().used_vcpus, 4);
    assert_eq!(cloud.store().schema_version().unwrap(), hv_orchestrator::store::schema::LATEST);
});

both!(bad_input_is_a_typed_error, |db| {
    let cloud = db.cloud();
    let admin = admin(&cloud);
    let invalid = |r: Result<(), Error>| matches!(r, Err(Error::Invalid { .. }));
    assert!(invalid(cloud.create_project(&admin, "", "").map(drop)));
    assert!(invalid(cloud.create_project(&admin, "a\nb", "").map(drop)));
    assert!(invalid(cloud.create_flavor(&admin, &NewFlavor::new("f", 0, 256, 1)).map(drop)));
    assert!(invalid(cloud.create_flavor(&admin, &NewFlavor::new("f", 1, 0, 1)).map(drop)));
    assert!(invalid(
        cloud
            .add_host(&admin, &HostSpec { cpu_ratio: f64::NAN, ..HostSpec::new("h", 1, 1, 1) })
            .map(drop)
    ));
    assert!(invalid("vhd".parse::<DiskFormat>().map(drop)));
    let mut img = NewImage::new("i", DiskFormat::Raw);
    img.properties.insert("status".into(), "active".into());
    assert!(invalid(cloud.create_image(&admin, &img).map(drop)));
    assert!(matches!(cloud.create_project(&admin, "admin", ""), Err(Error::Conflict { .. })));
    cloud.create_flavor(&admin, &NewFlavor::new("dup", 1, 1, 1)).unwrap();
    assert!(matches!(
        cloud.create_flavor(&admin, &NewFlavor::new("dup", 1, 1, 1)),
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        cloud.schedule(&admin, "vm", "no-such-flavor", None),
        Err(Error::NotFound { .. })
    ));
    let f = cloud.create_flavor(&admin, &NewFlavor::new("big", 64, 1 << 20, 1)).unwrap();
    assert!(matches!(cloud.schedule(&admin, "vm", &f.id, None), Err(Error::NoValidHost(_))));
});
