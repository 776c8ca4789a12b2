//! The real `openstack` client against a real `hv-cloud serve` that is a compute host, in a
//! network namespace: servers created without `--network` (Nova's 2.1 default: the one
//! network, none, or a 409 when several could carry it), security group rules taking effect
//! on a running server, `server suspend`/`resume` (the host's managed save), and volumes made
//! from an image and from a snapshot, with `volume snapshot create/list/show/delete`; a second
//! tenant sees none of it.

mod cloud_support;

use std::path::Path;
use std::time::Duration;

use cloud_support::{
    can_run_vms, names, openstack_bin, s, Os, Serve, ADMIN_PASSWORD, OPENSTACK_MISSING,
};
use hv_test_support::netns::NetNs;
use hv_test_support::{require, test_guest};
use serde_json::Value;

/// The first fixed address of `server show`'s `addresses` on network `net`.
fn address_on(server: &Value, net: &str) -> String {
    let a = &server["addresses"][net];
    // The client shows `{"net": ["10.0.0.3"]}`; older ones a string "net=10.0.0.3".
    a.as_array()
        .and_then(|l| l.first())
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| server["addresses"].as_str()?.split('=').nth(1).map(str::to_string))
        .unwrap_or_else(|| panic!("no address on {net}: {server}"))
}

/// The client's words for a resource it could not find.
fn assert_not_found(stderr: &str) {
    let low = stderr.to_lowercase();
    assert!(
        low.contains("not found")
            || low.contains("could not be found")
            || (low.starts_with("no ") && (low.contains(" found for ") || low.contains("exists"))),
        "expected a not-found answer, got: {stderr}"
    );
}

/// Polls `console log show` until it has `what`.
fn console_until(os: &Os, server: &str, what: &str) -> String {
    let mut log = String::new();
    for _ in 0..120 {
        log = os.ok(&["console", "log", "show", server]);
        if log.contains(what) {
            return log;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("no '{what}' in the console of {server}: {log}");
}

/// `quota show --usage` 's "In Use" of `resource`.
fn in_use(os: &Os, project: &str, resource: &str) -> Value {
    let q = os.json(&["quota", "show", "--usage", project]);
    q.as_array()
        .unwrap()
        .iter()
        .find(|x| x["Resource"] == resource)
        .map(|x| x["In Use"].clone())
        .unwrap_or_else(|| panic!("no {resource} in {q}"))
}

/// Volume `id` (a logical volume of the volume pool) on the compute host of the server whose
/// state is in `state`, read through the pool.
fn volume_bytes(state: &Path, id: &str) -> Box<dyn hv_storage::pool::VolumeIo> {
    use hv_storage::pool::Pool;
    let pools = hv_storage::pool::PoolManager::new(state.join("host")).expect("host pools");
    let pool = pools.open(hv_orchestrator::driver::VOLUME_POOL).expect("the volume pool");
    pool.open_volume(id, false).unwrap_or_else(|e| panic!("volume {id} on the host: {e}"))
}

/// Reads `len` bytes at 0 and the volume's size.
fn head_and_size(v: &dyn hv_storage::pool::VolumeIo, len: usize) -> (Vec<u8>, u64) {
    let mut buf = vec![0u8; len];
    v.read_at(&mut buf, 0).unwrap();
    (buf, v.size())
}

#[test]
fn openstack_client_server_lifecycle_networks_and_volumes() {
    require!(openstack_bin().is_some(), OPENSTACK_MISSING);
    require!(can_run_vms(), "KVM, root, ip and nft are needed");
    let bin = openstack_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ns = NetNs::new("cloud-life");
    ns.run(|| {
        let mut serve = Serve::start_compute(&state);
        let admin_token = cloud_support::token(&serve.addr, "admin", ADMIN_PASSWORD, "admin");
        cloud_support::tenant(&serve.addr, &admin_token, "la");
        cloud_support::tenant(&serve.addr, &admin_token, "lb");
        let admin = Os::new(&bin, &serve, "admin", ADMIN_PASSWORD, "admin");
        let alice = Os::new(&bin, &serve, "la-user", "pw-la", "la");
        let bob = Os::new(&bin, &serve, "lb-user", "pw-lb", "lb");
        admin.json(&["flavor", "create", "--vcpus", "1", "--ram", "64", "--disk", "0", "m1.nano"]);
        // The test guest takes a DHCP lease and answers pings.
        let kernel = test_guest();
        alice.create_aki("guest", &kernel, &["os_command_line=test=net ip=dhcp serve=0"]);
        // A guest without a NIC to use waits for the power button (so it stays ACTIVE).
        alice.create_aki("idle", &kernel, &["os_command_line=test=power-button"]);
        // The operator's external network is no tenant's to boot on.
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

        // No network the project can use: the server boots without a NIC.
        let create = |image: &str, name: &str| {
            alice.json(&[
                "server", "create", "--image", image, "--flavor", "m1.nano", "--wait", name,
            ])
        };
        let bare = create("idle", "bare");
        assert_eq!(s(&bare, "status"), "ACTIVE", "{bare}");
        let shown = alice.json(&["server", "show", "bare"]);
        assert!(
            shown["addresses"].as_object().is_none_or(|m| m.is_empty())
                && shown["addresses"].as_str().is_none_or(str::is_empty),
            "no NIC: {shown}"
        );
        alice.ok(&["server", "delete", "--wait", "bare"]);

        // Exactly one: the server is put on it.
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
        let vm = create("guest", "vm1");
        assert_eq!(s(&vm, "status"), "ACTIVE", "{vm}");
        let shown = alice.json(&["server", "show", "vm1"]);
        assert_eq!(shown["security_groups"], serde_json::json!([{"name": "default"}]), "{shown}");
        let ip = address_on(&shown, "net1");
        assert!(ip.starts_with("10.0.0."), "{ip}");
        let log = console_until(&alice, "vm1", "net serving");
        assert!(log.contains(&format!("net lease {ip}/24")), "{log}");

        // Several: Nova's 409, and nothing is made.
        alice.json(&["network", "create", "net2"]);
        let err = alice.fails(&[
            "server", "create", "--image", "guest", "--flavor", "m1.nano", "--wait", "vm2",
        ]);
        assert!(
            err.contains("Multiple possible networks found, use a Network ID to be more specific")
                && err.contains("409"),
            "{err}"
        );
        assert_eq!(names(&alice.json(&["server", "list"])), ["vm1"]);
        alice.ok(&["network", "delete", "net2"]);

        // Security group rules on the running server. The default group lets in only its
        // members, so the host (the subnet's gateway) is kept out; the rules are stateful, so
        // an allow-all egress rule lets replies out, not everything in. The server moves to a
        // new group (its egress rules only), still kept out, until an ingress rule lets the
        // host in.
        let rules = || ns.exec_ok(&["nft", "list", "ruleset"]);
        assert!(!ns.ping(&ip, 2), "the host is no member of the default group:\n{}", rules());
        let port = alice.json(&["port", "list", "--server", "vm1"]);
        let port = port[0]["ID"].as_str().unwrap().to_string();
        alice.json(&["security", "group", "create", "locked"]);
        alice.ok(&["port", "set", "--no-security-group", "--security-group", "locked", &port]);
        // The server shows its port's groups, as Nova does.
        let shown = alice.json(&["server", "show", "vm1"]);
        assert_eq!(shown["security_groups"], serde_json::json!([{"name": "locked"}]), "{shown}");
        assert!(!ns.ping(&ip, 2), "no ingress rule, no way in:\n{}", rules());
        let rule = alice.json(&[
            "security",
            "group",
            "rule",
            "create",
            "--protocol",
            "icmp",
            "--remote-ip",
            "10.0.0.1/32",
            "locked",
        ]);
        assert!(
            ns.ping_within(&ip, Duration::from_secs(10)),
            "the new rule lets the host in:\n{}",
            rules()
        );
        // A server created in that group (`--security-group`, which the client resolves to
        // the group's id) has its port there from the start: the host gets in at once.
        let vm3 = alice.json(&[
            "server",
            "create",
            "--image",
            "guest",
            "--flavor",
            "m1.nano",
            "--network",
            "net1",
            "--security-group",
            "locked",
            "--wait",
            "vm3",
        ]);
        assert_eq!(s(&vm3, "status"), "ACTIVE", "{vm3}");
        let shown = alice.json(&["server", "show", "vm3"]);
        assert_eq!(shown["security_groups"], serde_json::json!([{"name": "locked"}]), "{shown}");
        let ip3 = address_on(&shown, "net1");
        console_until(&alice, "vm3", "net serving");
        assert!(ns.ping_within(&ip3, Duration::from_secs(10)), "vm3 is in locked:\n{}", rules());
        alice.ok(&["server", "delete", "--wait", "vm3"]);

        // Suspend: the host saves the VM and stops it; Nova's SUSPENDED, power state Shutdown.
        alice.ok(&["server", "suspend", "vm1"]);
        let shown = alice.json(&["server", "show", "vm1"]);
        assert_eq!(s(&shown, "status"), "SUSPENDED", "{shown}");
        assert_eq!(shown["OS-EXT-STS:vm_state"], "suspended", "{shown}");
        // The client shows the number: 4 is SHUTDOWN.
        assert_eq!(shown["OS-EXT-STS:power_state"], 4, "{shown}");
        assert_eq!(names(&alice.json(&["server", "list", "--status", "SUSPENDED"])), ["vm1"]);
        assert!(!ns.ping(&ip, 2), "a suspended server does not answer");
        let err = alice.fails(&["server", "start", "vm1"]);
        assert!(err.contains("409") && err.contains("SUSPENDED"), "{err}");
        // The other tenant cannot resume it (nor see it).
        let err = bob.fails(&["server", "resume", "vm1"]);
        assert!(err.contains("No Server found for vm1"), "{err}");

        // A restart of `serve` keeps it suspended; resume restores it running where it was:
        // no second boot, the same address, answering at once (the rule still holds).
        serve.restart();
        assert_eq!(s(&alice.json(&["server", "show", "vm1"]), "status"), "SUSPENDED");
        alice.ok(&["server", "resume", "vm1"]);
        let shown = alice.json(&["server", "show", "vm1"]);
        assert_eq!(
            (s(&shown, "status"), &shown["OS-EXT-STS:power_state"]),
            ("ACTIVE", &Value::from(1)),
            "{shown}"
        );
        assert!(ns.ping_within(&ip, Duration::from_secs(10)), "the resumed server answers");
        let log = alice.ok(&["console", "log", "show", "vm1"]);
        assert_eq!(log.matches("hvtest: cmdline=").count(), 1, "no second boot: {log}");
        let err = alice.fails(&["server", "resume", "vm1"]);
        assert!(err.contains("409"), "{err}");

        // The rule's removal shuts the host out of the running server again.
        alice.ok(&["security", "group", "rule", "delete", s(&rule, "id")]);
        assert!(!ns.ping(&ip, 2), "the removed rule no longer lets the host in");
        alice.ok(&["server", "delete", "--wait", "vm1"]);

        // Volumes from an image: its bytes, converted to raw at the volume's size.
        let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8 ^ 0x5a).collect();
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, &pattern).unwrap();
        let qcow = dir.path().join("disk.qcow2");
        let conv = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .args([&raw, &qcow])
            .output()
            .expect("qemu-img (the reference for qcow2) runs");
        assert!(conv.status.success(), "{conv:?}");
        for (fmt, file) in [("raw", &raw), ("qcow2", &qcow)] {
            let img = alice.json(&[
                "image",
                "create",
                "--disk-format",
                fmt,
                "--file",
                file.to_str().unwrap(),
                &format!("disk-{fmt}"),
            ]);
            assert_eq!(s(&img, "status"), "active");
            let v = alice.json(&[
                "volume",
                "create",
                "--image",
                &format!("disk-{fmt}"),
                "--size",
                "1",
                &format!("from-{fmt}"),
            ]);
            assert_eq!((s(&v, "status"), v["size"].as_u64()), ("available", Some(1)), "{v}");
            assert_eq!(v["bootable"], true, "{v}");
            let shown = alice.json(&["volume", "show", &format!("from-{fmt}")]);
            assert_eq!(shown["volume_image_metadata"]["image_id"], img["id"], "{shown}");
            let (head, size) =
                head_and_size(volume_bytes(&state, s(&v, "id")).as_ref(), pattern.len());
            assert_eq!(size, 1 << 30, "raw at the volume's size");
            assert!(head == pattern, "the {fmt} image's guest-visible bytes");
        }
        // A volume smaller than its image's virtual size is refused (Cinder's 400); nothing
        // is kept.
        let big = dir.path().join("big.qcow2");
        let mk = std::process::Command::new("qemu-img")
            .args(["create", "-f", "qcow2"])
            .arg(&big)
            .arg("2G")
            .output()
            .unwrap();
        assert!(mk.status.success(), "{mk:?}");
        alice.json(&[
            "image",
            "create",
            "--disk-format",
            "qcow2",
            "--file",
            big.to_str().unwrap(),
            "big",
        ]);
        let err = alice.fails(&["volume", "create", "--image", "big", "--size", "1", "small"]);
        assert!(err.contains("400") && err.contains("doesn't fit"), "{err}");
        assert_eq!(names(&alice.json(&["volume", "list"])), ["from-qcow2", "from-raw"]);

        // Snapshots: create, list, show; a volume from a snapshot has its bytes.
        let snap = alice.json(&["volume", "snapshot", "create", "--volume", "from-raw", "snap1"]);
        assert_eq!(s(&snap, "status"), "available", "{snap}");
        let listed = alice.json(&["volume", "snapshot", "list", "--long"]);
        assert_eq!(names(&listed), ["snap1"]);
        // (`-f json` shows the volume's id; the table its name.)
        let from_raw = alice.json(&["volume", "show", "from-raw"]);
        assert_eq!(listed[0]["Volume"], from_raw["id"], "{listed}");
        let shown = alice.json(&["volume", "snapshot", "show", "snap1"]);
        assert_eq!((s(&shown, "id"), shown["size"].as_u64()), (s(&snap, "id"), Some(1)));
        assert_eq!(in_use(&alice, "la", "gigabytes"), 3, "two volumes and a snapshot");
        let restored =
            alice.json(&["volume", "create", "--snapshot", "snap1", "--size", "1", "from-snap"]);
        assert_eq!(s(&restored, "status"), "available");
        let (head, _) =
            head_and_size(volume_bytes(&state, s(&restored, "id")).as_ref(), pattern.len());
        assert!(head == pattern, "the snapshot's bytes");
        // A volume with snapshots cannot go; the other tenant sees none of it.
        let err = alice.fails(&["volume", "delete", "from-raw"]);
        assert!(err.to_lowercase().contains("snapshot"), "{err}");
        assert_not_found(&bob.fails(&["volume", "snapshot", "show", s(&snap, "id")]));
        bob.fails(&["volume", "snapshot", "delete", s(&snap, "id")]);
        assert_eq!(bob.json(&["volume", "snapshot", "list"]).as_array().unwrap().len(), 0);
        assert_not_found(&bob.fails(&[
            "volume",
            "create",
            "--snapshot",
            s(&snap, "id"),
            "--size",
            "1",
            "x",
        ]));
        // Delete the snapshot, then its volume.
        alice.ok(&["volume", "snapshot", "delete", "snap1"]);
        assert_eq!(alice.json(&["volume", "snapshot", "list"]).as_array().unwrap().len(), 0);
        for v in ["from-raw", "from-qcow2", "from-snap"] {
            alice.ok(&["volume", "delete", v]);
        }
        assert_eq!(in_use(&alice, "la", "gigabytes"), 0);
        serve.stop();
    });
}
