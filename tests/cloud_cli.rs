//! The real `openstack` client (python-openstackclient from PyPI) against a real
//! `hv-cloud serve`, reading the client's own `-f json` output: two tenants, identity, flavors,
//! images (the test guest as an `aki` kernel, a disk as an `ami` booted with it), isolation,
//! quotas, server groups, clouds.yaml, and a restart of `serve`, on SQLite and on PostgreSQL.
//!
//! Each client run costs ~1.7 s of start-up, so the sessions are few and long.

mod cloud_support;

use std::path::Path;

use cloud_support::{
    can_run_vms, names, openstack_bin, s, Os, Serve, ADMIN_PASSWORD, OPENSTACK_MISSING,
};
use hv_test_support::postgres::{PgServer, PG_MISSING};
use hv_test_support::{require, test_guest};

/// Admin makes project `project` and user `user` (password `pw`) with the member role.
fn tenant(admin: &Os, project: &str, user: &str, pw: &str) {
    admin.json(&["project", "create", project]);
    let u = admin.json(&["user", "create", "--password", pw, "--project", project, user]);
    assert_eq!(s(&u, "name"), user);
    admin.ok(&["role", "add", "--project", project, "--user", user, "member"]);
}

fn assert_not_found(stderr: &str, what: &str) {
    let low = stderr.to_lowercase();
    assert!(
        low.contains(&format!("no {what} found"))
            || low.contains("could not be found")
            || low.contains("not found"),
        "expected a not-found answer for {what}, got: {stderr}"
    );
}

#[test]
fn openstack_client_session_on_sqlite() {
    require!(openstack_bin().is_some(), OPENSTACK_MISSING);
    let bin = openstack_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut serve = Serve::start(&state, None);
    let admin = Os::new(&bin, &serve, "admin", ADMIN_PASSWORD, "admin");

    // Identity.
    let tok = admin.json(&["token", "issue"]);
    assert_eq!(s(&tok, "id").len(), 64);
    tenant(&admin, "ta", "alice", "pw-alice");
    tenant(&admin, "tb", "bob", "pw-bob");
    let projects = admin.json(&["project", "list"]);
    assert_eq!(names(&projects), ["admin", "ta", "tb"]);
    let assignments = admin.json(&["role", "assignment", "list", "--project", "ta", "--names"]);
    assert_eq!(assignments[0]["Role"], "member");
    assert_eq!(assignments[0]["User"], "alice@Default");

    // Flavors: the admin makes one, a tenant lists and shows it.
    let f =
        admin.json(&["flavor", "create", "--vcpus", "1", "--ram", "256", "--disk", "1", "m1.tiny"]);
    assert_eq!((f["vcpus"].as_u64(), f["ram"].as_u64()), (Some(1), Some(256)));
    let alice = Os::new(&bin, &serve, "alice", "pw-alice", "ta");
    let bob = Os::new(&bin, &serve, "bob", "pw-bob", "tb");
    assert_eq!(names(&alice.json(&["flavor", "list"])), ["m1.tiny"]);
    assert_eq!(s(&alice.json(&["flavor", "show", "m1.tiny"]), "id"), s(&f, "id"));
    let err =
        alice.fails(&["flavor", "create", "--vcpus", "1", "--ram", "1", "--disk", "0", "mine"]);
    assert!(err.contains("403") || err.to_lowercase().contains("policy"), "{err}");

    // Images as OpenStack boots them by direct kernel boot: the test guest as an AKI, a disk
    // as an AMI naming it.
    let kernel = test_guest();
    let k = alice.create_aki("guest-kernel", &kernel, &[]);
    assert_eq!(s(&k, "status"), "active");
    assert_eq!(k["size"].as_u64(), Some(std::fs::metadata(&kernel).unwrap().len()));
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, (0..1u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
    let kid = s(&k, "id").to_string();
    let d = alice.json(&[
        "image",
        "create",
        "--disk-format",
        "ami",
        "--container-format",
        "ami",
        "--file",
        disk.to_str().unwrap(),
        "--property",
        &format!("kernel_id={kid}"),
        "--property",
        "os_command_line=console=ttyS0 panic=-1",
        "--tag",
        "boot",
        "guest-disk",
    ]);
    assert_eq!(s(&d, "status"), "active");
    assert_eq!(s(&d, "checksum"), format!("{:x}", md5_of(&disk)));
    assert_eq!(names(&alice.json(&["image", "list"])), ["guest-disk", "guest-kernel"]);
    let shown = alice.json(&["image", "show", "guest-disk"]);
    assert_eq!(shown["properties"]["kernel_id"], kid.as_str());
    assert_eq!(shown["properties"]["os_command_line"], "console=ttyS0 panic=-1");
    let back = dir.path().join("kernel.back");
    alice.ok(&["image", "save", "--file", back.to_str().unwrap(), "guest-kernel"]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&kernel).unwrap());
    // A kernel image that is not a kernel is refused.
    let err = alice.fails(&[
        "image",
        "create",
        "--disk-format",
        "aki",
        "--file",
        disk.to_str().unwrap(),
        "not-a-kernel",
    ]);
    assert!(err.contains("not a kernel"), "{err}");

    // Tags, a set as in Glance: `image create --tag` (in the body), `image set --tag` (a JSON
    // patch of the list), `image unset --tag` (DELETE .../tags/T), `image list --tag`.
    assert_eq!(alice.json(&["image", "show", "guest-disk"])["tags"], serde_json::json!(["boot"]));
    alice.ok(&["image", "set", "--tag", "gold", "--tag", "fast", "guest-kernel"]);
    alice.ok(&["image", "set", "--tag", "gold", "guest-kernel"]);
    let tags = |img: &str| alice.json(&["image", "show", img])["tags"].clone();
    assert_eq!(tags("guest-kernel"), serde_json::json!(["fast", "gold"]));
    assert_eq!(names(&alice.json(&["image", "list", "--tag", "gold"])), ["guest-kernel"]);
    assert_eq!(names(&alice.json(&["image", "list", "--tag", "boot"])), ["guest-disk"]);
    assert!(names(&alice.json(&["image", "list", "--tag", "gold", "--tag", "boot"])).is_empty());
    alice.ok(&["image", "unset", "--tag", "fast", "guest-kernel"]);
    assert_eq!(tags("guest-kernel"), serde_json::json!(["gold"]));
    let err = alice.fails(&["image", "unset", "--tag", "nope", "guest-kernel"]);
    assert!(err.contains("Failed to unset 1 of 1 tags"), "{err}");
    assert_eq!(tags("guest-kernel"), serde_json::json!(["gold"]));

    // Isolation: the other tenant sees none of it, by name or by id.
    assert_not_found(&bob.fails(&["image", "show", "guest-kernel"]), "image");
    assert_not_found(&bob.fails(&["image", "show", &kid]), "image");
    // (The client words a not-found delete as "Multi Backend support not enabled"; the image
    // staying is what matters, checked below.)
    bob.fails(&["image", "delete", &kid]);
    assert_eq!(bob.json(&["image", "list"]).as_array().unwrap().len(), 0);
    assert!(bob.json(&["image", "list", "--tag", "gold"]).as_array().unwrap().is_empty());
    assert_not_found(&bob.fails(&["image", "set", "--tag", "x", &kid]), "image");
    let g = alice.json(&["server", "group", "create", "--policy", "anti-affinity", "spread"]);
    assert_eq!(g["policies"][0], "anti-affinity");
    assert_not_found(&bob.fails(&["server", "group", "show", s(&g, "id")]), "servergroup");

    // Quotas: the admin sets them, the tenant sees them with usage.
    admin.ok(&[
        "quota",
        "set",
        "--cores",
        "4",
        "--instances",
        "2",
        "--ram",
        "2048",
        "--volumes",
        "3",
        "--networks",
        "7",
        "ta",
    ]);
    let q = alice.json(&["quota", "show", "--usage", "ta"]);
    let limit = |r: &str| {
        q.as_array().unwrap().iter().find(|x| x["Resource"] == r).map(|x| x["Limit"].clone())
    };
    assert_eq!(limit("cores"), Some(4.into()));
    assert_eq!(limit("instances"), Some(2.into()));
    assert_eq!(limit("volumes"), Some(3.into()));
    assert_eq!(limit("networks"), Some(7.into()));
    assert!(!bob.fails(&["quota", "set", "--cores", "99", "tb"]).is_empty());

    // clouds.yaml and --os-cloud.
    std::fs::write(dir.path().join("clouds.yaml"), format!(
        "clouds:\n  hv:\n    auth:\n      auth_url: {}\n      username: alice\n      password: pw-alice\n      \
         project_name: ta\n      user_domain_name: Default\n      project_domain_name: Default\n    \
         region_name: RegionOne\n    interface: public\n    identity_api_version: 3\n", serve.auth_url())).unwrap();
    let by_cloud = Os::cloud(&bin, dir.path(), "hv");
    // (The refused image is gone: the client deletes what it could not upload.)
    assert_eq!(names(&by_cloud.json(&["image", "list"])), ["guest-disk", "guest-kernel"]);

    // A restart keeps everything; the old token is still good on the new server.
    serve.restart();
    let back2 = dir.path().join("kernel.back2");
    alice.ok(&["image", "save", "--file", back2.to_str().unwrap(), &kid]);
    assert_eq!(std::fs::read(&back2).unwrap(), std::fs::read(&kernel).unwrap());
    alice.ok(&["image", "delete", "guest-disk"]);
    assert_eq!(names(&alice.json(&["image", "list"])), ["guest-kernel"]);
    serve.stop();
}

#[test]
fn openstack_client_session_on_postgres() {
    require!(openstack_bin().is_some(), OPENSTACK_MISSING);
    let Some(pg) = PgServer::start() else {
        require!(false, PG_MISSING);
        return;
    };
    let bin = openstack_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = pg_url(pg.dir());
    let mut serve = Serve::start(&dir.path().join("state"), Some(&url));
    let admin = Os::new(&bin, &serve, "admin", ADMIN_PASSWORD, "admin");
    tenant(&admin, "tp", "carol", "pw-carol");
    admin.json(&["flavor", "create", "--vcpus", "2", "--ram", "512", "--disk", "1", "m1.small"]);
    admin.ok(&["quota", "set", "--cores", "6", "tp"]);
    let carol = Os::new(&bin, &serve, "carol", "pw-carol", "tp");
    let f = dir.path().join("raw.img");
    std::fs::write(&f, vec![42u8; 65536]).unwrap();
    let img = carol.json(&[
        "image",
        "create",
        "--disk-format",
        "raw",
        "--file",
        f.to_str().unwrap(),
        "pg-image",
    ]);
    assert_eq!(s(&img, "status"), "active");

    serve.restart();
    assert_eq!(names(&carol.json(&["image", "list"])), ["pg-image"]);
    assert_eq!(names(&carol.json(&["flavor", "list"])), ["m1.small"]);
    let q = carol.json(&["quota", "show", "tp"]);
    let cores = q.as_array().unwrap().iter().find(|x| x["Resource"] == "cores").unwrap();
    assert_eq!(cores["Limit"], 6);
    // The admin's view lists both projects' users from the shared database.
    let users = admin.json(&["user", "list"]);
    assert_eq!(names(&users), ["admin", "carol"]);
    serve.stop();
}

/// A `postgresql://` URL for the server's Unix socket directory.
fn pg_url(dir: &Path) -> String {
    let host: String = dir
        .to_str()
        .unwrap()
        .bytes()
        .map(|b| if b == b'/' { "%2F".to_string() } else { (b as char).to_string() })
        .collect();
    format!("postgresql://postgres@{host}/postgres")
}

/// The MD5 of a file, as Glance's `checksum` (the client computes it independently too).
fn md5_of(p: &Path) -> u128 {
    let o = std::process::Command::new("md5sum").arg(p).output().unwrap();
    u128::from_str_radix(String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap(), 16)
        .unwrap()
}

#[test]
fn openstack_client_networks_with_two_tenants() {
    require!(openstack_bin().is_some(), OPENSTACK_MISSING);
    let bin = openstack_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("state"), None);
    let admin_token = cloud_support::token(&serve.addr, "admin", ADMIN_PASSWORD, "admin");
    cloud_support::tenant(&serve.addr, &admin_token, "na");
    cloud_support::tenant(&serve.addr, &admin_token, "nb");
    let admin = Os::new(&bin, &serve, "admin", ADMIN_PASSWORD, "admin");
    let alice = Os::new(&bin, &serve, "na-user", "pw-na", "na");
    let bob = Os::new(&bin, &serve, "nb-user", "pw-nb", "nb");

    // The operator's external network.
    let ext = admin.json(&[
        "network",
        "create",
        "--external",
        "--provider-network-type",
        "flat",
        "--provider-physical-network",
        "physnet1",
        "public",
    ]);
    assert_eq!(ext["router:external"], true);
    admin.json(&[
        "subnet",
        "create",
        "--network",
        "public",
        "--subnet-range",
        "203.0.113.0/24",
        "public-v4",
    ]);

    // A tenant's network, subnet, security group and rule, router and floating IP.
    let net = alice.json(&["network", "create", "net1"]);
    let sub = alice.json(&[
        "subnet",
        "create",
        "--network",
        "net1",
        "--subnet-range",
        "10.0.0.0/24",
        "sub1",
    ]);
    assert_eq!((s(&sub, "gateway_ip"), s(&sub, "network_id")), ("10.0.0.1", s(&net, "id")));
    assert_eq!(sub["allocation_pools"][0]["start"], "10.0.0.2");
    let sg = alice.json(&["security", "group", "create", "web"]);
    let rule = alice.json(&[
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "web",
    ]);
    assert_eq!(
        (rule["port_range_min"].as_u64(), s(&rule, "security_group_id")),
        (Some(22), s(&sg, "id"))
    );
    alice.json(&["router", "create", "r1"]);
    alice.ok(&["router", "set", "--external-gateway", "public", "r1"]);
    alice.ok(&["router", "add", "subnet", "r1", "sub1"]);
    let r = alice.json(&["router", "show", "r1"]);
    assert_eq!(r["external_gateway_info"]["network_id"], ext["id"]);
    let fip = alice.json(&["floating", "ip", "create", "public"]);
    assert!(s(&fip, "floating_ip_address").starts_with("203.0.113."));
    let ports = alice.json(&["port", "list"]);
    let addrs: Vec<&str> = ports
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["Fixed IP Addresses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["ip_address"].as_str().unwrap())
        })
        .collect();
    assert!(addrs.contains(&"10.0.0.1"), "the router's interface takes the gateway: {addrs:?}");

    // The other tenant sees the external network but nothing of the first tenant's.
    assert_eq!(names(&bob.json(&["network", "list"])), ["public"]);
    assert_not_found(&bob.fails(&["network", "show", s(&net, "id")]), "network");
    assert_not_found(&bob.fails(&["security", "group", "show", s(&sg, "id")]), "securitygroup");
    assert_not_found(&bob.fails(&["router", "show", "r1"]), "router");
    assert_eq!(bob.json(&["floating", "ip", "list"]).as_array().unwrap().len(), 0);
    assert!(!bob
        .fails(&[
            "subnet",
            "create",
            "--network",
            s(&net, "id"),
            "--subnet-range",
            "10.9.0.0/24",
            "x"
        ])
        .is_empty());
}

#[test]
fn openstack_client_runs_servers_on_this_host() {
    require!(openstack_bin().is_some(), OPENSTACK_MISSING);
    require!(can_run_vms(), "KVM, root, ip and nft are needed");
    let bin = openstack_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ns = hv_test_support::netns::NetNs::new("cloud-srv");
    ns.run(|| {
        let mut serve = Serve::start_compute(&dir.path().join("state"));
        let admin_token = cloud_support::token(&serve.addr, "admin", ADMIN_PASSWORD, "admin");
        cloud_support::tenant(&serve.addr, &admin_token, "sa");
        cloud_support::tenant(&serve.addr, &admin_token, "sb");
        let admin = Os::new(&bin, &serve, "admin", ADMIN_PASSWORD, "admin");
        let alice = Os::new(&bin, &serve, "sa-user", "pw-sa", "sa");
        let bob = Os::new(&bin, &serve, "sb-user", "pw-sb", "sb");
        admin.json(&["flavor", "create", "--vcpus", "1", "--ram", "64", "--disk", "0", "m1.nano"]);
        let kernel = test_guest();
        alice.create_aki(
            "guest",
            &kernel,
            &["os_command_line=test=power-button", "os_shutdown_timeout=5"],
        );
        admin.json(&[
            "network",
            "create",
            "--external",
            "--provider-network-type",
            "flat",
            "--provider-physical-network",
            "physnet1",
            "public",
        ]);
        admin.json(&[
            "subnet",
            "create",
            "--network",
            "public",
            "--subnet-range",
            "203.0.113.0/24",
            "public-v4",
        ]);
        alice.json(&["network", "create", "net1"]);
        alice.json(&[
            "subnet",
            "create",
            "--network",
            "net1",
            "--subnet-range",
            "10.0.0.0/24",
            "sub1",
        ]);

        // Create and wait: the client polls until ACTIVE.
        let vm = alice.json(&[
            "server",
            "create",
            "--image",
            "guest",
            "--flavor",
            "m1.nano",
            "--network",
            "net1",
            "--wait",
            "vm1",
        ]);
        assert_eq!(s(&vm, "status"), "ACTIVE", "{vm}");
        let id = s(&vm, "id").to_string();
        let shown = alice.json(&["server", "show", "vm1"]);
        assert_eq!((s(&shown, "id"), s(&shown, "status")), (id.as_str(), "ACTIVE"));
        let addresses = shown["addresses"].to_string();
        assert!(addresses.contains("net1") && addresses.contains("10.0.0."), "{addresses}");

        // A floating address, through the router, on the server's port.
        alice.json(&["router", "create", "r1"]);
        alice.ok(&["router", "set", "--external-gateway", "public", "r1"]);
        alice.ok(&["router", "add", "subnet", "r1", "sub1"]);
        let fip = alice.json(&["floating", "ip", "create", "public"]);
        let fip = s(&fip, "floating_ip_address").to_string();
        alice.ok(&["server", "add", "floating", "ip", "vm1", &fip]);
        let addresses = alice.json(&["server", "show", "vm1"])["addresses"].to_string();
        assert!(addresses.contains(&fip), "{addresses}");

        // The guest's console, through Nova's os-getConsoleOutput.
        let mut log = String::new();
        for _ in 0..30 {
            log = alice.ok(&["console", "log", "show", "vm1"]);
            if log.contains("waiting for the power button") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        assert!(log.contains("hvtest: cmdline="), "{log}");
        assert!(log.contains("waiting for the power button"), "{log}");

        // Stop presses the power button (the guest answers it), start boots it again; a
        // second start is a state conflict.
        alice.ok(&["server", "stop", "vm1"]);
        let listed = alice.json(&["server", "list", "--status", "SHUTOFF"]);
        assert_eq!(names(&listed), ["vm1"]);

        // A volume, attached to the stopped server; it cannot be deleted while attached.
        let vol = alice.json(&["volume", "create", "--size", "1", "vol1"]);
        assert_eq!((s(&vol, "status"), vol["size"].as_u64()), ("available", Some(1)));
        alice.json(&["server", "add", "volume", "vm1", "vol1"]);
        let vols = alice.json(&["volume", "list"]);
        assert_eq!(vols[0]["Status"], "in-use", "{vols}");
        assert_eq!(vols[0]["Attached to"][0]["server_id"], id.as_str(), "{vols}");
        assert!(!alice.fails(&["volume", "delete", "vol1"]).is_empty());
        alice.ok(&["server", "start", "vm1"]);
        let err = alice.fails(&["server", "start", "vm1"]);
        assert!(err.contains("409") || err.to_lowercase().contains("conflict"), "{err}");
        assert_eq!(s(&alice.json(&["server", "show", &id]), "status"), "ACTIVE");

        // The other tenant sees nothing of it, by name or by id.
        let err = bob.fails(&["server", "show", "vm1"]);
        assert!(err.contains("No Server found for vm1"), "{err}");
        let err = bob.fails(&["server", "delete", &id]);
        assert!(err.contains(&format!("No Server found for {id}")), "{err}");
        assert_eq!(bob.json(&["server", "list"]).as_array().unwrap().len(), 0);

        // Delete: gone, its quota freed.
        alice.ok(&["server", "delete", "--wait", "vm1"]);
        assert_eq!(alice.json(&["server", "list"]).as_array().unwrap().len(), 0);
        let q = alice.json(&["quota", "show", "--usage", "sa"]);
        let in_use = |r: &str| {
            q.as_array().unwrap().iter().find(|x| x["Resource"] == r).map(|x| x["In Use"].clone())
        };
        assert_eq!((in_use("instances"), in_use("cores")), (Some(0.into()), Some(0.into())));
        // The server's volume is free again and can go.
        alice.ok(&["volume", "delete", "vol1"]);
        assert_eq!(alice.json(&["volume", "list"]).as_array().unwrap().len(), 0);
        serve.stop();
    });
}
