//! Instances on this host for real: test guests as hv-vmm processes under hv-host, in a
//! network namespace the test makes; lifecycle, a VM that ends on its own, restart recovery
//! with a running instance, suspend (the host's managed save) and resume, deletion freeing
//! everything, on SQLite and PostgreSQL.

mod common;

use common::*;
use hv_orchestrator::compute::{InstanceAction, InstanceStatus, NewFlavor, NewInstance};
use hv_orchestrator::network::{NewNetwork, NewSubnet, PortStatus};
use hv_orchestrator::quota::Resource;
use hv_orchestrator::{Error, Role};
use hv_test_support::netns::NetNs;

fn status(
    cloud: &hv_orchestrator::Cloud,
    ctx: &hv_orchestrator::Context,
    id: &str,
) -> InstanceStatus {
    cloud.get_instance(ctx, id).unwrap().status
}

both!(instance_lifecycle_survives_a_restart, |db| {
    hv_test_support::require!(can_run_vms(), "KVM, root, ip and nft are needed");
    let ns = NetNs::new("orch-life");
    let state = hv_test_support::state_dir::StateDir::new();
    ns.run(|| {
        let cloud = db.compute_cloud(state.path());
        let admin = admin(&cloud);
        let t = tenant(&cloud, &admin, "pa", Role::Member);
        let f = cloud.create_flavor(&admin, &NewFlavor::new("tiny", 1, 64, 0)).unwrap();
        let img = guest_image(&cloud, &t, "guest", "test=power-button");
        let inst = cloud.create_instance(&t, &NewInstance::new("vm1", &img, &f.id)).unwrap();
        assert_eq!(inst.status, InstanceStatus::Active, "{:?}", inst.fault);
        let log = wait_for(60, || {
            let l = cloud.console_log(&t, &inst.id, None).unwrap();
            l.contains("waiting for the power button").then_some(l)
        })
        .expect("the guest booted");
        assert!(log.contains("hvtest: cmdline=test=power-button"), "{log}");
        let usage = cloud.quota_usage(&t, t.project_id()).unwrap();
        let used = |r| usage.iter().find(|u| u.resource == r).unwrap().in_use;
        assert_eq!(
            (used(Resource::Instances), used(Resource::Cores), used(Resource::Ram)),
            (1, 1, 64)
        );

        // Pause and unpause.
        let i = cloud.instance_action(&t, &inst.id, InstanceAction::Pause).unwrap();
        assert_eq!(i.status, InstanceStatus::Paused);
        assert!(matches!(
            cloud.instance_action(&t, &inst.id, InstanceAction::Start),
            Err(Error::Conflict { .. })
        ));
        cloud.instance_action(&t, &inst.id, InstanceAction::Unpause).unwrap();

        // The orchestrator goes away and comes back: the VM kept running and is taken back.
        drop(cloud);
        let cloud = db.compute_cloud(state.path());
        let t = login(&cloud, "pa-user", "pw", "pa");
        assert_eq!(status(&cloud, &t, &inst.id), InstanceStatus::Active);
        assert!(cloud
            .console_log(&t, &inst.id, None)
            .unwrap()
            .contains("waiting for the power button"));
        // Stop presses the power button; this guest answers it and powers off.
        let i = cloud.instance_action(&t, &inst.id, InstanceAction::Stop).unwrap();
        assert_eq!(i.status, InstanceStatus::Shutoff);
        assert!(cloud.console_log(&t, &inst.id, None).unwrap().contains("power button pressed"));
        cloud.instance_action(&t, &inst.id, InstanceAction::Start).unwrap();
        assert_eq!(status(&cloud, &t, &inst.id), InstanceStatus::Active);
        let i = cloud.instance_action(&t, &inst.id, InstanceAction::Reboot { hard: true }).unwrap();
        assert_eq!(i.status, InstanceStatus::Active);

        // Delete frees quota and host capacity, and the domain.
        cloud.delete_instance(&t, &inst.id).unwrap();
        assert!(matches!(cloud.get_instance(&t, &inst.id), Err(Error::NotFound { .. })));
        let usage = cloud.quota_usage(&t, t.project_id()).unwrap();
        assert!(usage.iter().all(|u| u.in_use == 0 || u.resource == Resource::SecurityGroups));
        let h = cloud.get_host(&admin, cloud.local_host_id().unwrap()).unwrap();
        assert_eq!((h.used_vcpus, h.used_ram_mb), (0, 0));
        drop(cloud);
    });
});

both!(a_vm_that_ends_on_its_own_is_marked, |db| {
    hv_test_support::require!(can_run_vms(), "KVM, root, ip and nft are needed");
    let ns = NetNs::new("orch-end");
    let state = hv_test_support::state_dir::StateDir::new();
    ns.run(|| {
        let cloud = db.compute_cloud(state.path());
        let admin = admin(&cloud);
        let t = tenant(&cloud, &admin, "pa", Role::Member);
        let f = cloud.create_flavor(&admin, &NewFlavor::new("tiny", 1, 64, 0)).unwrap();
        let off = guest_image(&cloud, &t, "off", "test=poweroff");
        let crash = guest_image(&cloud, &t, "crash", "test=triple");
        let a = cloud.create_instance(&t, &NewInstance::new("a", &off, &f.id)).unwrap();
        let b = cloud.create_instance(&t, &NewInstance::new("b", &crash, &f.id)).unwrap();
        let sa = wait_for(60, || {
            let s = status(&cloud, &t, &a.id);
            (s != InstanceStatus::Active).then_some(s)
        });
        assert_eq!(sa, Some(InstanceStatus::Shutoff));
        let ib = wait_for(60, || {
            let i = cloud.get_instance(&t, &b.id).unwrap();
            (i.status != InstanceStatus::Active).then_some(i)
        })
        .unwrap();
        assert_eq!(ib.status, InstanceStatus::Error, "{ib:?}");
        assert!(ib.fault.unwrap().message.contains("died"));
        cloud.delete_instance(&t, &a.id).unwrap();
        cloud.delete_instance(&t, &b.id).unwrap();
    });
});

/// The memory-checking guest reports a round every this many rounds.
const DIRTY_EVERY: u64 = 4;

/// The last round of a `test=dirty` console log once it passed `after` (every page right).
fn dirty_round_after(
    cloud: &hv_orchestrator::Cloud,
    ctx: &hv_orchestrator::Context,
    id: &str,
    after: u64,
) -> u64 {
    wait_for(90, || {
        let log = cloud.console_log(ctx, id, None).unwrap();
        match hv_test_support::check_dirty_transcript(&log, DIRTY_EVERY) {
            Ok(r) if r > after => Some(r),
            Err(e) if e.contains("bad page") || e.contains("follows") => panic!("{e}:\n{log}"),
            _ => None,
        }
    })
    .unwrap_or_else(|| {
        panic!("no round after {after}: {}", cloud.console_log(ctx, id, None).unwrap())
    })
}

both!(suspend_saves_the_vm_and_resume_runs_it_on, |db| {
    hv_test_support::require!(can_run_vms(), "KVM, root, ip and nft are needed");
    let ns = NetNs::new("orch-susp");
    let state = hv_test_support::state_dir::StateDir::new();
    ns.run(|| {
        let cloud = db.compute_cloud(state.path());
        let admin = admin(&cloud);
        let t = tenant(&cloud, &admin, "pa", Role::Member);
        let f = cloud.create_flavor(&admin, &NewFlavor::new("tiny", 1, 64, 0)).unwrap();
        let net = cloud.create_network(&t, &NewNetwork::new("n")).unwrap();
        cloud.create_subnet(&t, &NewSubnet::new("n", &net.id, "10.0.0.0/24")).unwrap();
        let cmdline = format!("test=dirty pages=256 every={DIRTY_EVERY}");
        let img = guest_image(&cloud, &t, "dirty", &cmdline);
        let inst = cloud
            .create_instance(&t, &NewInstance::new("vm", &img, &f.id).network(&net.id))
            .unwrap();
        assert_eq!(inst.status, InstanceStatus::Active, "{:?}", inst.fault);
        let first = dirty_round_after(&cloud, &t, &inst.id, 0);
        let saved_dir = state.path().join("saved").join(&inst.id);

        // Suspend: the state is saved on the host, the VM stops, its port goes down.
        let i = cloud.instance_action(&t, &inst.id, InstanceAction::Suspend).unwrap();
        assert_eq!(i.status, InstanceStatus::Suspended);
        assert!(saved_dir.join("hv-save.json").exists(), "the host saved the VM's state");
        let port = cloud.list_ports(&t, Some(&inst.id)).unwrap().remove(0);
        assert_eq!((port.status, port.binding_tap), (PortStatus::Down, None));
        let log = cloud.console_log(&t, &inst.id, None).unwrap();
        let at = hv_test_support::check_dirty_transcript(&log, DIRTY_EVERY).unwrap();
        assert!(at >= first);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        assert_eq!(cloud.console_log(&t, &inst.id, None).unwrap(), log, "a saved VM runs no more");
        assert_eq!(status(&cloud, &t, &inst.id), InstanceStatus::Suspended);
        for a in [
            InstanceAction::Start,
            InstanceAction::Pause,
            InstanceAction::Suspend,
            InstanceAction::Reboot { hard: false },
        ] {
            assert!(
                matches!(cloud.instance_action(&t, &inst.id, a), Err(Error::Conflict { .. })),
                "{a:?} on a suspended instance"
            );
        }

        // The orchestrator restarts: the instance is still suspended, its state still saved.
        drop(cloud);
        let cloud = db.compute_cloud(state.path());
        let t = login(&cloud, "pa-user", "pw", "pa");
        assert_eq!(status(&cloud, &t, &inst.id), InstanceStatus::Suspended);

        // Resume: the guest runs on from the round it was in, every page right, without a
        // new boot; its port is bound again; the saved state is spent.
        let i = cloud.instance_action(&t, &inst.id, InstanceAction::Resume).unwrap();
        assert_eq!(i.status, InstanceStatus::Active);
        dirty_round_after(&cloud, &t, &inst.id, at + 2 * DIRTY_EVERY);
        let log = cloud.console_log(&t, &inst.id, None).unwrap();
        assert_eq!(log.matches("hvtest: cmdline=").count(), 1, "no second boot: {log}");
        let port = cloud.list_ports(&t, Some(&inst.id)).unwrap().remove(0);
        assert_eq!(port.status, PortStatus::Active);
        assert!(port.binding_tap.is_some());
        assert!(!saved_dir.exists());
        assert!(matches!(
            cloud.instance_action(&t, &inst.id, InstanceAction::Resume),
            Err(Error::Conflict { .. })
        ));

        // A suspended instance can be deleted: its saved state goes with it.
        cloud.instance_action(&t, &inst.id, InstanceAction::Suspend).unwrap();
        assert!(saved_dir.exists());
        cloud.delete_instance(&t, &inst.id).unwrap();
        assert!(!saved_dir.exists());
        let usage = cloud.quota_usage(&t, t.project_id()).unwrap();
        let used = |r| usage.iter().find(|u| u.resource == r).unwrap().in_use;
        assert_eq!((used(Resource::Instances), used(Resource::Cores)), (0, 0));
        cloud.delete_network(&t, &net.id).unwrap();
    });
});
