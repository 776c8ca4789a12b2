//! Tenant networks for real, in a network namespace the test makes: bridges per network, DHCP
//! from the subnet's pool with a reservation per port, port security with the default
//! security group (members reach each other, a non-member does not), and isolation between
//! projects, with test guests pinging each other.

mod common;

use common::*;
use hv_orchestrator::compute::{InstanceStatus, NewFlavor, NewInstance};
use hv_orchestrator::network::{
    Direction, FixedIpRequest, NewNetwork, NewPort, NewSecurityGroupRule, NewSubnet, PortUpdate,
    Protocol,
};
use hv_orchestrator::{Cloud, Context, Role};
use hv_test_support::netns::NetNs;
use std::time::{Duration, Instant};

/// A network with one subnet `cidr` in the caller's project; returns the network id.
fn network(cloud: &Cloud, ctx: &Context, name: &str, cidr: &str) -> String {
    let n = cloud.create_network(ctx, &NewNetwork::new(name)).unwrap();
    cloud.create_subnet(ctx, &NewSubnet::new(name, &n.id, cidr)).unwrap();
    n.id
}

/// The guest's `net ping` line, once it printed all of it (the console may be read while the
/// guest is half-way through a line).
fn ping_line(cloud: &Cloud, ctx: &Context, id: &str) -> String {
    wait_for(90, || {
        let log = cloud.console_log(ctx, id, None).unwrap();
        let whole = hv_test_support::whole_lines(&log);
        whole.lines().find(|l| l.contains("hvtest: net ping ")).map(|l| l.trim_end().to_string())
    })
    .unwrap_or_else(|| panic!("no ping result: {}", cloud.console_log(ctx, id, None).unwrap()))
}

both!(instances_reach_their_network_and_not_anothers, |db| {
    hv_test_support::require!(can_run_vms(), "KVM, root, ip and nft are needed");
    let ns = NetNs::new("orch-net");
    let state = hv_test_support::state_dir::StateDir::new();
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
        // Where no answer may come, each echo waits 3 s rather than 10.
        let refused = "test=net ip=dhcp ping=10.0.0.10 count=3 wait=3";
        let ping_a_refused = guest_image(&cloud, &a, "ping-refused", refused);
        let ping_b = guest_image(&cloud, &b, "ping", refused);
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

        // Same project and network, but not a member of the default group (a group whose
        // only rule is egress to anywhere): the server's default group keeps it out, though
        // its own replies would pass (the rules are stateful, not mirrored). Nor does the
        // host, from the gateway address, get in.
        let outsider = cloud.create_security_group(&a, "outsider", "").unwrap();
        assert!(outsider.rules.iter().all(|r| r.direction == Direction::Egress), "{outsider:?}");
        let mut np = NewPort::new(&net_a);
        np.security_groups = Some(vec![outsider.id.clone()]);
        let outsider_port = cloud.create_port(&a, &np).unwrap();
        let c3 = cloud
            .create_instance(
                &a,
                &NewInstance::new("c3", &ping_a_refused, &f.id).port(&outsider_port.id),
            )
            .unwrap();
        let line = ping_line(&cloud, &a, &c3.id);
        let log = cloud.console_log(&a, &c3.id, None).unwrap();
        assert!(log.contains("net lease 10.0.0."), "DHCP passes the outsider's port: {log}");
        assert!(line.contains("lost"), "a non-member reaches the server: {line}");
        assert!(!ns.ping("10.0.0.10", 1), "the host is no member either");

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
        for (ctx, id) in [(&a, &server.id), (&a, &c1.id), (&a, &c3.id), (&b, &c2.id)] {
            cloud.delete_instance(ctx, id).unwrap();
        }
        cloud.delete_port(&a, &server_port.id).unwrap();
        cloud.delete_port(&a, &outsider_port.id).unwrap();
        cloud.delete_network(&a, &net_a).unwrap();
        cloud.delete_network(&b, &net_b).unwrap();
    });
});

/// Two projects on the same subnet, their servers and clients on the same addresses: every
/// ping is answered in its own network, and the two networks' connections, with the same
/// addresses, are tracked apart, each in its network's conntrack zone (one table here is
/// enough: this is about the host, not the store).
#[test]
fn overlapping_subnets_are_tracked_in_zones_of_their_own() {
    hv_test_support::require!(can_run_vms(), "KVM, root, ip and nft are needed");
    let ns = NetNs::new("orch-zone");
    let state = hv_test_support::state_dir::StateDir::new();
    let db = Db::sqlite();
    ns.run(|| {
        let cloud = db.compute_cloud(state.path());
        let admin = admin(&cloud);
        let f = cloud.create_flavor(&admin, &NewFlavor::new("tiny", 1, 64, 0)).unwrap();
        let mut runs = vec![];
        for project in ["pa", "pb"] {
            let t = tenant(&cloud, &admin, project, Role::Member);
            let net = network(&cloud, &t, project, "10.0.0.0/24");
            let port = |ip: &str| {
                let mut np = NewPort::new(&net);
                np.fixed_ips =
                    vec![FixedIpRequest { subnet_id: None, ip_address: Some(ip.parse().unwrap()) }];
                cloud.create_port(&t, &np).unwrap().id
            };
            let (server_port, client_port) = (port("10.0.0.10"), port("10.0.0.20"));
            let serve = guest_image(&cloud, &t, "serve", "test=net ip=dhcp serve=0");
            let ping = guest_image(&cloud, &t, "ping", "test=net ip=dhcp ping=10.0.0.10 count=3");
            let server = cloud
                .create_instance(&t, &NewInstance::new("s", &serve, &f.id).port(&server_port))
                .unwrap();
            wait_for(90, || {
                cloud
                    .console_log(&t, &server.id, None)
                    .unwrap()
                    .contains("net serving")
                    .then_some(())
            })
            .unwrap_or_else(|| panic!("{}", cloud.console_log(&t, &server.id, None).unwrap()));
            let client = cloud
                .create_instance(&t, &NewInstance::new("c", &ping, &f.id).port(&client_port))
                .unwrap();
            runs.push((t, server.id, client.id));
        }
        for (t, _, client) in &runs {
            let line = ping_line(&cloud, t, client);
            assert!(line.contains("net ping 10.0.0.10 ok"), "{line}");
        }
        // Each network's ping is a connection 10.0.0.20 -> 10.0.0.10 of its own, in its zone.
        let pings: Vec<_> = hv_net::netlink::Conntrack::new()
            .unwrap()
            .list()
            .unwrap()
            .into_iter()
            .filter(|c| {
                c.protocol == 1
                    && c.orig.src.to_string() == "10.0.0.20"
                    && c.orig.dst.to_string() == "10.0.0.10"
            })
            .collect();
        let mut zones: Vec<u16> = pings.iter().map(|c| c.zone).collect();
        zones.sort();
        zones.dedup();
        assert!(
            zones.len() == 2 && !zones.contains(&0),
            "one zone per network: {pings:?}\n{}",
            ns.exec_ok(&["nft", "list", "ruleset"])
        );
        for (t, server, client) in &runs {
            cloud.delete_instance(t, server).unwrap();
            cloud.delete_instance(t, client).unwrap();
        }
    });
}

both!(routers_nat_out_and_floating_ips_reach_in, |db| {
    hv_test_support::require!(can_run_vms(), "KVM, root, ip and nft are needed");
    let ns = NetNs::new("orch-fip");
    let outside = NetNs::new("orch-out");
    let state = hv_test_support::state_dir::StateDir::new();
    ns.run(|| {
        let cloud = db.compute_cloud(state.path());
        let admin = admin(&cloud);
        let a = tenant(&cloud, &admin, "pa", Role::Member);
        let f = cloud.create_flavor(&admin, &NewFlavor::new("tiny", 1, 64, 0)).unwrap();
        let ext = cloud
            .create_network(
                &admin,
                &NewNetwork { name: "public".into(), shared: false, external: true },
            )
            .unwrap();
        cloud.create_subnet(&admin, &NewSubnet::new("public", &ext.id, "203.0.113.0/24")).unwrap();
        // The outside: a namespace on the external bridge through a veth pair.
        let bridge = format!("hv{}", ext.host_name);
        ns.exec_ok(&["ip", "link", "add", "vin", "type", "veth", "peer", "name", "vout"]);
        ns.exec_ok(&["ip", "link", "set", "vout", "netns", outside.name()]);
        ns.exec_ok(&["ip", "link", "set", "vin", "master", &bridge, "up"]);
        outside.exec_ok(&["ip", "addr", "add", "203.0.113.100/24", "dev", "vout"]);
        outside.exec_ok(&["ip", "link", "set", "vout", "up"]);

        let net = network(&cloud, &a, "na", "10.0.0.0/24");
        let subnet = cloud.get_network(&a, &net).unwrap().subnets[0].clone();
        let router = cloud.create_router(&a, "r", Some(&ext.id)).unwrap();
        cloud.add_router_interface(&a, &router.id, &subnet).unwrap();
        // Out through the router's NAT: the guest pings the outside host.
        let out =
            guest_image(&cloud, &a, "out", "test=net ip=dhcp ping=203.0.113.100 count=3 serve=0");
        let vm =
            cloud.create_instance(&a, &NewInstance::new("vm", &out, &f.id).network(&net)).unwrap();
        let line = ping_line(&cloud, &a, &vm.id);
        if !line.contains("net ping 203.0.113.100 ok") {
            let rules = ns.exec_ok(&["nft", "list", "ruleset"]);
            let addrs = ns.exec_ok(&["ip", "-br", "addr"]);
            let fwd = ns.exec_ok(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
            panic!(
                "{line}\n{}\n{rules}\n{addrs}\nfwd={fwd}",
                cloud.console_log(&a, &vm.id, None).unwrap()
            );
        }

        // In through a floating IP. A group without rules keeps everything out; a rule added
        // while the instance runs lets the outside in, and its removal shuts it out again.
        let port = cloud.list_ports(&a, Some(&vm.id)).unwrap().remove(0);
        let fip = cloud.create_floating_ip(&a, &ext.id, Some(&port.id)).unwrap();
        let addr = fip.floating_ip_address.to_string();
        let locked = cloud.create_security_group(&a, "locked", "").unwrap();
        for r in &locked.rules {
            cloud.delete_security_group_rule(&a, &r.id).unwrap();
        }
        let change =
            PortUpdate { security_groups: Some(vec![locked.id.clone()]), ..Default::default() };
        cloud.update_port(&a, &port.id, &change).unwrap();
        assert!(!outside.ping(&addr, 2), "no rule, no way in");
        let mut rule =
            NewSecurityGroupRule::new(&locked.id, Direction::Ingress, Some(Protocol::Icmp));
        rule.remote_ip_prefix = Some("0.0.0.0/0".into());
        let r = cloud.add_security_group_rule(&a, &rule).unwrap();
        assert!(outside.ping(&addr, 3), "the floating IP reaches the instance");
        // A ping running when the rule goes (one connection, through the floating IP's DNAT)
        // is cut too, not only new ones.
        let session = outside.ping_session(&addr);
        assert!(session.wait_for_replies(2, Duration::from_secs(10)), "the session is answered");
        cloud.delete_security_group_rule(&a, &r.id).unwrap();
        let settled = Instant::now() + Duration::from_millis(500);
        std::thread::sleep(Duration::from_secs(3));
        let late = session.replies_after(settled);
        assert!(late.is_empty(), "the running ping still answered after the rule went: {late:?}");
        drop(session);
        assert!(!outside.ping(&addr, 2), "the rule's removal takes effect at once");
        cloud.associate_floating_ip(&a, &fip.id, None).unwrap();
        cloud.delete_floating_ip(&a, &fip.id).unwrap();
        cloud.delete_instance(&a, &vm.id).unwrap();
        cloud.remove_router_interface(&a, &router.id, &subnet).unwrap();
        cloud.delete_router(&a, &router.id).unwrap();
    });
});
