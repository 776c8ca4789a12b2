//! Isolation of every compute, network and block-storage resource between projects (a foreign
//! id answers like a missing one, both ways), and quota races on instances, cores, RAM and
//! volumes (many threads, never over quota), on SQLite and PostgreSQL.

mod common;

use std::sync::Arc;

use common::*;
use hv_orchestrator::compute::{InstanceAction, NewFlavor, NewInstance};
use hv_orchestrator::network::{
    Direction, NewNetwork, NewPort, NewSecurityGroupRule, NewSubnet, PortUpdate,
};
use hv_orchestrator::quota::Resource;
use hv_orchestrator::volume::NewVolume;
use hv_orchestrator::{Cloud, Context, Error, Role};
use hv_test_support::netns::NetNs;

fn nf<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::NotFound { .. }))
}

/// Every resource `owner` has, and what `other` gets when it names them.
struct Made {
    instance: String,
    network: String,
    subnet: String,
    port: String,
    group: String,
    rule: String,
    router: String,
    fip: String,
    volume: String,
    snapshot: String,
}

fn make(
    cloud: &Cloud,
    ctx: &Context,
    flavor: &str,
    image: &str,
    external: &str,
    cidr: &str,
) -> Made {
    let n = cloud.create_network(ctx, &NewNetwork::new("n")).unwrap();
    let s = cloud.create_subnet(ctx, &NewSubnet::new("s", &n.id, cidr)).unwrap();
    let p = cloud.create_port(ctx, &NewPort::new(&n.id)).unwrap();
    let g = cloud.create_security_group(ctx, "web", "").unwrap();
    let mut r = NewSecurityGroupRule::new(
        &g.id,
        Direction::Ingress,
        Some(hv_orchestrator::network::Protocol::Tcp),
    );
    r.port_range = Some((80, 80));
    let rule = cloud.add_security_group_rule(ctx, &r).unwrap();
    let router = cloud.create_router(ctx, "r", Some(external)).unwrap();
    let fip = cloud.create_floating_ip(ctx, external, None).unwrap();
    let v = cloud
        .create_volume(ctx, &NewVolume { name: "v".into(), size_gb: 1, ..Default::default() })
        .unwrap();
    let snap = cloud.create_snapshot(ctx, &v.id, "snap", false).unwrap();
    let i = cloud.create_instance(ctx, &NewInstance::new("i", image, flavor)).unwrap();
    Made {
        instance: i.id,
        network: n.id,
        subnet: s.id,
        port: p.id,
        group: g.id,
        rule: rule.id,
        router: router.id,
        fip: fip.id,
        volume: v.id,
        snapshot: snap.id,
    }
}

/// Every call of `other` on `m`'s ids answers not-found, and its lists do not show them.
fn foreign(cloud: &Cloud, other: &Context, m: &Made) {
    assert!(nf(cloud.get_instance(other, &m.instance)));
    assert!(nf(cloud.instance_action(other, &m.instance, InstanceAction::Stop)));
    assert!(nf(cloud.console_log(other, &m.instance, None)));
    assert!(nf(cloud.delete_instance(other, &m.instance)));
    assert!(nf(cloud.get_network(other, &m.network)));
    assert!(nf(cloud.delete_network(other, &m.network)));
    assert!(nf(cloud.get_subnet(other, &m.subnet)));
    assert!(nf(cloud.create_subnet(other, &NewSubnet::new("x", &m.network, "10.9.0.0/24"))));
    assert!(nf(cloud.delete_subnet(other, &m.subnet)));
    assert!(nf(cloud.get_port(other, &m.port)));
    assert!(nf(cloud.create_port(other, &NewPort::new(&m.network))));
    assert!(nf(cloud.update_port(other, &m.port, &PortUpdate::default())));
    assert!(nf(cloud.delete_port(other, &m.port)));
    assert!(nf(cloud.get_security_group(other, &m.group)));
    assert!(nf(cloud.add_security_group_rule(
        other,
        &NewSecurityGroupRule::new(&m.group, Direction::Egress, None)
    )));
    assert!(nf(cloud.delete_security_group_rule(other, &m.rule)));
    assert!(nf(cloud.delete_security_group(other, &m.group)));
    assert!(nf(cloud.get_router(other, &m.router)));
    assert!(nf(cloud.add_router_interface(other, &m.router, &m.subnet)));
    assert!(nf(cloud.delete_router(other, &m.router)));
    assert!(nf(cloud.get_floating_ip(other, &m.fip)));
    assert!(nf(cloud.associate_floating_ip(other, &m.fip, None)));
    assert!(nf(cloud.delete_floating_ip(other, &m.fip)));
    assert!(nf(cloud.get_volume(other, &m.volume)));
    assert!(nf(cloud.extend_volume(other, &m.volume, 2)));
    assert!(nf(cloud.delete_volume(other, &m.volume)));
    assert!(nf(cloud.create_snapshot(other, &m.volume, "x", false)));
    assert!(nf(cloud.get_snapshot(other, &m.snapshot)));
    assert!(nf(cloud.delete_snapshot(other, &m.snapshot)));
    assert!(nf(cloud.create_volume(
        other,
        &NewVolume {
            name: "x".into(),
            size_gb: 1,
            snapshot_id: Some(m.snapshot.clone()),
            image_id: None
        }
    )));
    assert!(nf(cloud.attach_volume(other, &m.instance, &m.volume)));
    assert!(cloud.list_instances(other).unwrap().iter().all(|i| i.id != m.instance));
    assert!(cloud.list_networks(other).unwrap().iter().all(|n| n.id != m.network));
    assert!(cloud.list_subnets(other).unwrap().iter().all(|s| s.id != m.subnet));
    assert!(cloud.list_ports(other, None).unwrap().iter().all(|p| p.id != m.port));
    assert!(cloud.list_security_groups(other).unwrap().iter().all(|g| g.id != m.group));
    assert!(cloud.list_routers(other).unwrap().iter().all(|r| r.id != m.router));
    assert!(cloud.list_floating_ips(other).unwrap().iter().all(|f| f.id != m.fip));
    assert!(cloud.list_volumes(other).unwrap().iter().all(|v| v.id != m.volume));
    assert!(cloud.list_snapshots(other).unwrap().iter().all(|s| s.id != m.snapshot));
}

both!(every_new_resource_is_invisible_to_other_projects, |db| {
    hv_test_support::require!(can_run_vms(), "KVM, root, ip and nft are needed");
    let ns = NetNs::new("orch-iso");
    let state = hv_test_support::state_dir::StateDir::new();
    ns.run(|| {
        let cloud = db.compute_cloud(state.path());
        let admin = admin(&cloud);
        let a = tenant(&cloud, &admin, "pa", Role::Member);
        let b = tenant(&cloud, &admin, "pb", Role::Member);
        let f = cloud.create_flavor(&admin, &NewFlavor::new("tiny", 1, 64, 0)).unwrap();
        let ext = cloud
            .create_network(
                &admin,
                &NewNetwork { name: "public".into(), shared: false, external: true },
            )
            .unwrap();
        cloud.create_subnet(&admin, &NewSubnet::new("public", &ext.id, "203.0.113.0/24")).unwrap();
        let ia = guest_image(&cloud, &a, "hlt", "test=hlt");
        let ib = guest_image(&cloud, &b, "hlt", "test=hlt");
        let ma = make(&cloud, &a, &f.id, &ia, &ext.id, "10.0.0.0/24");
        let mb = make(&cloud, &b, &f.id, &ib, &ext.id, "10.0.0.0/24");
        foreign(&cloud, &b, &ma);
        foreign(&cloud, &a, &mb);
        // The admin sees both; the owners still have theirs.
        assert!(cloud.get_instance(&admin, &ma.instance).is_ok());
        assert!(cloud.get_volume(&a, &ma.volume).is_ok());
        assert!(cloud.get_network(&b, &ext.id).is_ok(), "an external network is visible to all");
        for (ctx, m) in [(&a, &ma), (&b, &mb)] {
            cloud.delete_instance(ctx, &m.instance).unwrap();
        }
    });
});

/// Runs `n` threads doing `f(i)`; returns how many succeeded, checking failures are quota ones.
fn race(n: usize, f: impl Fn(usize) -> Result<(), Error> + Sync) -> usize {
    let ok = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..n {
            let (f, ok) = (&f, &ok);
            s.spawn(move || match f(i) {
                Ok(()) => {
                    ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(Error::QuotaExceeded { .. }) => {}
                Err(e) => panic!("unexpected error: {e}"),
            });
        }
    });
    ok.into_inner()
}

both!(instance_and_volume_quotas_hold_under_races, |db| {
    // A control plane without a compute host: instances are placed nowhere and end in ERROR,
    // but their quota is claimed (as Nova counts ERROR instances) with their record.
    let cloud = Arc::new(db.cloud());
    let admin = admin(&cloud);
    let t = tenant(&cloud, &admin, "pq", Role::Member);
    let f = cloud.create_flavor(&admin, &NewFlavor::new("two", 2, 256, 0)).unwrap();
    let img = guest_image(&cloud, &t, "k", "test=hlt");
    for (res, limit) in [(Resource::Instances, 3), (Resource::Cores, 4), (Resource::Ram, 1024)] {
        // One limit at a time; the others unlimited.
        for r in [Resource::Instances, Resource::Cores, Resource::Ram] {
            cloud.set_quota(&admin, t.project_id(), r, if r == res { limit } else { -1 }).unwrap();
        }
        let made = race(12, |i| {
            cloud.create_instance(&t, &NewInstance::new(&format!("i{i}"), &img, &f.id)).map(drop)
        });
        let expect = match res {
            Resource::Instances => 3,
            Resource::Cores => 2,
            _ => 4,
        };
        assert_eq!(made, expect, "{res:?}");
        let usage = cloud.quota_usage(&t, t.project_id()).unwrap();
        let u = usage.iter().find(|u| u.resource == res).unwrap();
        assert!(u.in_use <= limit, "{u:?}");
        for i in cloud.list_instances(&t).unwrap() {
            cloud.delete_instance(&t, &i.id).unwrap();
        }
    }
    let usage = cloud.quota_usage(&t, t.project_id()).unwrap();
    assert!(usage.iter().all(|u| u.in_use == 0), "{usage:?}");
});

both!(volume_quotas_hold_under_races, |db| {
    let state = hv_test_support::state_dir::StateDir::new();
    let mut cfg = hv_orchestrator::Config::new(db.dir().join("images"));
    let mut c = hv_orchestrator::ComputeConfig::new(state.path(), "/nonexistent/hv-vmm");
    c.host_name = "quota-host".into();
    cfg.compute = Some(c);
    let cloud = Cloud::open(db.store(), cfg).unwrap();
    let admin = admin(&cloud);
    let t = tenant(&cloud, &admin, "pv", Role::Member);
    cloud.set_quota(&admin, t.project_id(), Resource::Volumes, 4).unwrap();
    cloud.set_quota(&admin, t.project_id(), Resource::Gigabytes, 6).unwrap();
    // 12 threads of 1 GiB volumes: 4 fit the volume count.
    let made = race(12, |i| {
        cloud
            .create_volume(
                &t,
                &NewVolume { name: format!("v{i}"), size_gb: 1, ..Default::default() },
            )
            .map(drop)
    });
    assert_eq!(made, 4);
    for v in cloud.list_volumes(&t).unwrap() {
        cloud.delete_volume(&t, &v.id).unwrap();
    }
    // 12 threads of 2 GiB volumes: 3 fit the gigabytes.
    let made = race(12, |i| {
        cloud
            .create_volume(
                &t,
                &NewVolume { name: format!("w{i}"), size_gb: 2, ..Default::default() },
            )
            .map(drop)
    });
    assert_eq!(made, 3);
    let usage = cloud.quota_usage(&t, t.project_id()).unwrap();
    let g = usage.iter().find(|u| u.resource == Resource::Gigabytes).unwrap();
    assert_eq!(g.in_use, 6);
});

both!(a_server_without_networks_gets_nova_s_default, |db| {
    use hv_orchestrator::compute::NetworkRequest;
    let cloud = db.cloud();
    let admin = admin(&cloud);
    let a = tenant(&cloud, &admin, "pa", Role::Member);
    let b = tenant(&cloud, &admin, "pb", Role::Member);
    let on = |n: &str| vec![NetworkRequest::Network { network_id: n.into(), fixed_ip: None }];
    // None usable: no NIC. The admin's external network and another project's network are
    // not the project's to use.
    let ext = NewNetwork { name: "public".into(), shared: false, external: true };
    cloud.create_network(&admin, &ext).unwrap();
    let theirs = cloud.create_network(&b, &NewNetwork::new("theirs")).unwrap();
    assert_eq!(cloud.default_networks(&a).unwrap(), vec![]);
    assert_eq!(cloud.default_networks(&b).unwrap(), on(&theirs.id));
    // Exactly one: that one.
    let mine = cloud.create_network(&a, &NewNetwork::new("mine")).unwrap();
    assert_eq!(cloud.default_networks(&a).unwrap(), on(&mine.id));
    // A shared network counts for every project: now two, ambiguous.
    let shared = NewNetwork { name: "shared".into(), shared: true, external: false };
    let shared = cloud.create_network(&admin, &shared).unwrap();
    let e = cloud.default_networks(&a).unwrap_err();
    assert!(matches!(e, Error::NetworkAmbiguous), "{e}");
    assert_eq!(
        e.to_string(),
        "Multiple possible networks found, use a Network ID to be more specific."
    );
    cloud.delete_network(&a, &mine.id).unwrap();
    assert_eq!(cloud.default_networks(&a).unwrap(), on(&shared.id));
});

both!(a_server_s_security_groups_resolve_in_its_project_only, |db| {
    let cloud = db.cloud();
    let admin = admin(&cloud);
    let a = tenant(&cloud, &admin, "pa", Role::Member);
    let b = tenant(&cloud, &admin, "pb", Role::Member);
    let web = cloud.create_security_group(&a, "web", "").unwrap();
    let theirs = cloud.create_security_group(&b, "db", "").unwrap();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // By name or id, `default` made on demand, repeats once.
    let ids = cloud.resolve_security_groups(&a, &names(&["web", "default", &web.id])).unwrap();
    let default = cloud.list_security_groups(&a).unwrap();
    let default = default.iter().find(|g| g.name == "default").unwrap();
    assert_eq!(ids, vec![web.id.clone(), default.id.clone()]);
    // Another project's group is unknown by name and by id, as Nova's 400 says.
    for w in ["db", theirs.id.as_str(), "nope"] {
        let e = cloud.resolve_security_groups(&a, &names(&[w])).unwrap_err();
        assert!(matches!(e, Error::Invalid { field: "security_groups", .. }), "{w}: {e}");
        assert!(e.to_string().contains(&format!("name or id '{w}'")), "{e}");
    }
    // Two groups of one name: ambiguous.
    cloud.create_security_group(&a, "web", "").unwrap();
    let e = cloud.resolve_security_groups(&a, &names(&["web"])).unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");
});
