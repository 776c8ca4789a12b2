//! The scheduler under concurrency and random workloads: hosts are never over-allocated and
//! server-group policies always hold.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use hv_orchestrator::compute::{GroupPolicy, HostSpec, NewFlavor};
use hv_orchestrator::{Cloud, Error, Role};
use proptest::prelude::*;

/// Every host's usage within capacity x ratio, and equal to the sum of its allocations.
fn check_hosts(cloud: &Cloud, admin: &hv_orchestrator::Context) {
    for h in cloud.list_hosts(admin).unwrap() {
        assert!(h.used_vcpus as f64 <= h.vcpus as f64 * h.cpu_ratio, "{h:?}");
        assert!(h.used_ram_mb as f64 <= h.ram_mb as f64 * h.ram_ratio, "{h:?}");
        assert!(h.used_disk_gb as f64 <= h.disk_gb as f64 * h.disk_ratio, "{h:?}");
        let allocs = cloud.store().allocations(&h.id).unwrap();
        assert_eq!(allocs.iter().map(|a| a.vcpus).sum::<i64>(), h.used_vcpus);
        assert_eq!(allocs.iter().map(|a| a.ram_mb).sum::<i64>(), h.used_ram_mb);
    }
}

both!(concurrent_placements_never_over_allocate, |db| {
    let cloud = Arc::new(db.cloud());
    let admin = admin(&cloud);
    let a = tenant(&cloud, &admin, "pa", Role::Member);
    cloud
        .set_quota(&admin, a.project_id(), hv_orchestrator::quota::Resource::Instances, -1)
        .unwrap();
    // 3 hosts of 2048 MiB x 1.5 = 3072 MiB: three 1024 MiB instances each, nine in all.
    for i in 0..3 {
        cloud.add_host(&admin, &HostSpec::new(&format!("h{i}"), 4, 2048, 100)).unwrap();
    }
    let f = cloud.create_flavor(&admin, &NewFlavor::new("m1", 1, 1024, 1)).unwrap();
    let anti = cloud.create_server_group(&a, "anti", GroupPolicy::AntiAffinity).unwrap();
    // A second cloud over the same database: two "processes" racing.
    let other = Arc::new(db.cloud());
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let c = if t % 2 == 0 { cloud.clone() } else { other.clone() };
            let (a, f, anti) = (a.clone(), f.id.clone(), anti.id.clone());
            std::thread::spawn(move || {
                let mut placed = vec![];
                for i in 0..4 {
                    let group = (i == 0).then_some(anti.as_str());
                    match c.schedule(&a, &format!("vm-{t}-{i}"), &f, group) {
                        Ok(p) => placed.push((p, group.is_some())),
                        Err(Error::NoValidHost(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                placed
            })
        })
        .collect();
    let placed: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(placed.len(), 9, "exactly the room there is");
    check_hosts(&cloud, &admin);
    let g = cloud.get_server_group(&a, &anti.id).unwrap();
    let hosts: HashSet<_> = g.members.iter().map(|m| &m.host_id).collect();
    assert_eq!(hosts.len(), g.members.len(), "anti-affinity broken: {g:?}");
    assert!(g.members.len() <= 3);
    // Freeing one makes room for exactly one more.
    let (p, in_group) = &placed[0];
    cloud.unschedule(&a, &p.consumer_id, in_group.then_some(anti.id.as_str())).unwrap();
    cloud.refresh_hosts().unwrap();
    cloud.schedule(&a, "late", &f.id, None).unwrap();
    assert!(matches!(cloud.schedule(&a, "later", &f.id, None), Err(Error::NoValidHost(_))));
    check_hosts(&cloud, &admin);
});

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn random_workloads_keep_capacity_and_group_policies(
        hosts in prop::collection::vec((1i64..4, 512i64..4096, 1i64..20), 1..5),
        ops in prop::collection::vec((0usize..3, 0usize..3, any::<bool>()), 1..25),
    ) {
        let db = Db::sqlite();
        let cloud = db.cloud();
        let admin = admin(&cloud);
        let a = tenant(&cloud, &admin, "pa", Role::Member);
        cloud.set_quota(&admin, a.project_id(), hv_orchestrator::quota::Resource::Instances, -1).unwrap();
        for (i, (v, r, d)) in hosts.iter().enumerate() {
            cloud.add_host(&admin, &HostSpec::new(&format!("h{i}"), *v, *r, *d)).unwrap();
        }
        let flavors: Vec<_> = [(1, 256, 1), (2, 1024, 5), (8, 2048, 10)]
            .iter()
            .enumerate()
            .map(|(i, (v, r, d))| cloud.create_flavor(&admin, &NewFlavor::new(&format!("f{i}"), *v, *r, *d)).unwrap())
            .collect();
        let groups = [
            None,
            Some(cloud.create_server_group(&a, "aff", GroupPolicy::Affinity).unwrap()),
            Some(cloud.create_server_group(&a, "anti", GroupPolicy::AntiAffinity).unwrap()),
        ];
        let mut live: Vec<(String, Option<String>)> = vec![];
        for (n, (flavor, group, free_one)) in ops.into_iter().enumerate() {
            if free_one && !live.is_empty() {
                let (c, g) = live.remove(n % live.len());
                cloud.unschedule(&a, &c, g.as_deref()).unwrap();
                continue;
            }
            let g = groups[group].as_ref().map(|g| g.id.clone());
            let consumer = format!("vm{n}");
            match cloud.schedule(&a, &consumer, &flavors[flavor].id, g.as_deref()) {
                Ok(_) => live.push((consumer, g)),
                Err(Error::NoValidHost(_)) => {}
                Err(e) => panic!("{e}"),
            }
            check_hosts(&cloud, &admin);
        }
        for g in groups.iter().flatten() {
            let g = cloud.get_server_group(&a, &g.id).unwrap();
            let hosts: HashSet<_> = g.members.iter().map(|m| m.host_id.clone()).collect();
            match g.policy {
                GroupPolicy::Affinity => prop_assert!(hosts.len() <= 1, "affinity broken: {:?}", g),
                GroupPolicy::AntiAffinity => prop_assert_eq!(hosts.len(), g.members.len()),
            }
        }
    }
}
