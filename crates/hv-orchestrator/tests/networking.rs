//! Tenant networks for real, in a network namespace the test makes: bridges per network, DHCP
//! from the subnet's pool with a reservation per port, port security with the default
//! security group, and isolation between projects, with test guests pinging each other.

mod common;

use common::*;
use hv_orchestrator::compute::{InstanceStatus, NewFlavor, NewInstance};
use hv_orchestrator::network::{FixedIpRequest, NewNetwork, NewPort, NewSubnet};
use hv_orchestrator::{Cloud, Context, Role};
use hv_test_support::netns::NetNs;

/// A network with one subnet `cidr` in the caller's project; returns the network id.
fn network(cloud: &Cloud, ctx: &Context, name: &str, cidr: &str) -> String {
    let n = cloud.create_network(ctx, &NewNetwork::new(name)).unwrap();
    cloud.create_subnet(ctx, &NewSubnet::new(name, &n.id, cidr)).unwrap();
    n.id
}

/// The guest's `net ping` line, once it printed one.
fn ping_line(cloud: &Cloud, ctx: &Context, id: &str) -> String {
    wait_for(90, || {
        let log = cloud.console_log(ctx, id, None).unwrap();
        log.lines().find(|l| l.contains("hvtest: net ping ")).map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no ping result: {}", cloud.console_log(ctx, id, None).unwrap()))
}

both!(instances_reach_their_network_and_not_anothers, |db| {
    hv_test_support::require!(can_run_vms(), "KVM, root, ip and nft are needed");
    let ns = NetNs::new("orch-net");
    let state = tempfile::tempdir().unwrap();
    ns.run(|| {
        let cloud = db.compute_cloud(state.path());
        let admin = admin(&cloud);
        let a = tenant(&cloud, &admin, "pa", Role::Member);
        let b = tenant(&cloud, &admin, "pb", Role::Member);
        let f = cloud.create_flavor(&admin, &NewFlavor::new("tiny", 1, 64, 0)).unwrap();
        let net_a = network(&cloud, &a, "na", "10.0.0.0/24");
        let net_b = network(&cloud, &b, "nb", "10.0.1.0/24");
        // The server gets a fixed address through a port made first.
        let mut np = NewPort::new(&net_a);
        np.fixed_ips = vec![FixedIpRequest {
            subnet_id: None,
            ip_address: Some("10.0.0.10".parse().unwrap()),
        }];
        let server_port = cloud.create_port(&a, &np).unwrap();
        let serve = guest_image(&cloud, &a, "serve", "test=net ip=dhcp serve=0");
        let ping_a = guest_image(&cloud, &a, "ping", "test=net ip=dhcp ping=10.0.0.10 count=3");
        let ping_b = guest_image(&cloud, &b, "ping", "test=net ip=dhcp ping=10.0.0.10 count=3");
        let server = cloud
            .create_instance(&a, &NewInstance::new("server", &serve, &f.id).port(&server_port.id))
            .unwrap();
        assert_eq!(server.status, InstanceStatus::Active, "{:?}", server.fault);
        wait_for(90, || {
            cloud.console_log(&a, &server.id, None).unwrap().contains("net serving").then_some(())
        })
        .unwrap_or_else(|| panic!("server: {}", cloud.console_log(&a, &server.id, None).unwrap()));
        let log = cloud.console_log(&a, &server.id, None).unwrap();
        assert!(log.contains("net lease 10.0.0.10/24"), "DHCP gave the port's address: {log}");

        // Same project, same network, default group (ingress from members): reached.
        let c1 = cloud
            .create_instance(&a, &NewInstance::new("c1", &ping_a, &f.id).network(&net_a))
            .unwrap();
        let line = ping_line(&cloud, &a, &c1.id);
        assert!(line.contains("net ping 10.0.0.10 ok"), "{line}");

        // Another project's instance on its own network: not reached.
        let c2 = cloud
            .create_instance(&b, &NewInstance::new("c2", &ping_b, &f.id).network(&net_b))
            .unwrap();
        let line = ping_line(&cloud, &b, &c2.id);
        assert!(line.contains("lost"), "{line}");
        // And project b cannot put an instance on project a's network: not found.
        assert!(matches!(
            cloud.create_instance(&b, &NewInstance::new("x", &ping_b, &f.id).network(&net_a)),
            Err(hv_orchestrator::Error::NotFound { .. })
        ));
        for (ctx, id) in [(&a, &server.id), (&a, &c1.id), (&b, &c2.id)] {
            cloud.delete_instance(ctx, id).unwrap();
        }
        cloud.delete_port(&a, &server_port.id).unwrap();
        cloud.delete_network(&a, &net_a).unwrap();
        cloud.delete_network(&b, &net_b).unwrap();
    });
});
