//! A small cloud in one process: an admin makes two projects and their users; each user
//! uploads the test guest as images, makes a network and subnet, boots two instances that
//! ping each other, attaches a volume that keeps its data across a stop/start, and gets a
//! floating IP that a client in an outside network namespace reaches. Then a summary.
//!
//! ```text
//! sudo cargo run --example cloud
//! ```
//!
//! Needs root, `/dev/kvm`, `ip` and `nft`. Everything network-side happens in namespaces the
//! example makes and removes; state lives in a temporary directory.
//!
//! On this host (PVM: guest user space cannot run, see docs/DESIGN.md) the instances run hv's
//! test guest, a bare-metal program with its own virtio drivers and IPv4 stack; a Linux guest
//! would stop at /init here. On a hardware-KVM host the same calls boot Linux images.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hv_orchestrator::compute::{InstanceAction, InstanceStatus, NewFlavor, NewInstance};
use hv_orchestrator::identity::{Bootstrap, NewUser, PasswordAuth};
use hv_orchestrator::image::{DiskFormat, NewImage};
use hv_orchestrator::network::{
    Direction, FixedIpRequest, NewNetwork, NewPort, NewSecurityGroupRule, NewSubnet, Protocol,
};
use hv_orchestrator::store::SqliteStore;
use hv_orchestrator::volume::NewVolume;
use hv_orchestrator::{Cloud, ComputeConfig, Config, Context, Role};
use hv_test_support::netns::NetNs;

type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn wait_console(cloud: &Cloud, ctx: &Context, id: &str, what: &str) -> R<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let log = cloud.console_log(ctx, id, None)?;
        // Only whole lines: the console may be read half-way through one.
        if let Some(l) = hv_test_support::whole_lines(&log).lines().find(|l| l.contains(what)) {
            return Ok(l.trim_end().to_string());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("instance {id} never printed {what:?}").into())
}

fn image(cloud: &Cloud, ctx: &Context, name: &str, cmdline: &str) -> R<String> {
    let mut n = NewImage::new(name, DiskFormat::Aki);
    n.properties = BTreeMap::from([
        ("os_command_line".to_string(), cmdline.to_string()),
        ("os_shutdown_timeout".to_string(), "5".to_string()),
    ]);
    let img = cloud.create_image(ctx, &n)?;
    cloud.upload_image(ctx, &img.id, &mut std::fs::File::open(hv_test_support::test_guest())?)?;
    Ok(img.id)
}

struct Summary {
    project: String,
    instances: Vec<(String, String, String)>,
    ping: String,
    volume: String,
    floating: String,
    /// Whether the story held: the ping answered, the data kept, the floating IP reached.
    held: bool,
}

fn tenant_story(
    cloud: &Cloud,
    ctx: &Context,
    flavor: &str,
    ext: &str,
    outside: &NetNs,
    n: u8,
) -> R<Summary> {
    // Network and subnet; the first instance gets a fixed address so the second can ping it.
    let net = cloud.create_network(ctx, &NewNetwork::new("private"))?;
    let cidr = format!("10.{n}.0.0/24");
    let subnet = cloud.create_subnet(ctx, &NewSubnet::new("private", &net.id, &cidr))?;
    let server_ip = format!("10.{n}.0.10");
    let mut np = NewPort::new(&net.id);
    np.fixed_ips = vec![FixedIpRequest { subnet_id: None, ip_address: Some(server_ip.parse()?) }];
    let port = cloud.create_port(ctx, &np)?;
    let serve = image(cloud, ctx, "serve", "test=net ip=dhcp serve=0")?;
    let ping = image(cloud, ctx, "ping", &format!("test=net ip=dhcp ping={server_ip} count=3"))?;
    let blk = image(cloud, ctx, "blk", "test=blk sector=0 count=8 seed=7")?;
    let router = cloud.create_router(ctx, "router", Some(ext))?;
    cloud.add_router_interface(ctx, &router.id, &subnet.id)?;

    let a =
        cloud.create_instance(ctx, &NewInstance::new("server", &serve, flavor).port(&port.id))?;
    wait_console(cloud, ctx, &a.id, "net serving")?;
    let b =
        cloud.create_instance(ctx, &NewInstance::new("client", &ping, flavor).network(&net.id))?;
    let ping_line = wait_console(cloud, ctx, &b.id, "net ping ")?;

    // A volume attached at boot: the guest writes a pattern and powers off; it is there again
    // at the next start.
    let vol = cloud
        .create_volume(ctx, &NewVolume { name: "data".into(), size_gb: 1, ..Default::default() })?;
    let c = cloud.create_instance(ctx, &NewInstance::new("disk", &blk, flavor).volume(&vol.id))?;
    wait_console(cloud, ctx, &c.id, "blk verify ok")?;
    while cloud.get_instance(ctx, &c.id)?.status == InstanceStatus::Active {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The volume is a logical volume (extents of the volume group's PVs, no file of its own):
    // read it through the volume pool.
    let mut first = vec![0u8; 4096];
    cloud.open_volume(ctx, &vol.id)?.read_at(&mut first, 0)?;
    cloud.instance_action(ctx, &c.id, InstanceAction::Start)?;
    while cloud.get_instance(ctx, &c.id)?.status == InstanceStatus::Active {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut again = vec![0u8; 4096];
    cloud.open_volume(ctx, &vol.id)?.read_at(&mut again, 0)?;
    let kept = first == again && first.iter().any(|b| *b != 0);

    // A floating IP for the server, and a rule that lets ICMP in from anywhere.
    let fip = cloud.create_floating_ip(ctx, ext, Some(&port.id))?;
    let group = cloud.get_port(ctx, &port.id)?.security_groups[0].clone();
    let mut rule = NewSecurityGroupRule::new(&group, Direction::Ingress, Some(Protocol::Icmp));
    rule.remote_ip_prefix = Some("0.0.0.0/0".into());
    cloud.add_security_group_rule(ctx, &rule)?;
    let reached = outside.ping(&fip.floating_ip_address.to_string(), 3);

    let instances = [&a, &b, &c]
        .iter()
        .map(|i| {
            let i = cloud.get_instance(ctx, &i.id).unwrap();
            let ips = i
                .nics
                .iter()
                .flat_map(|n| n.fixed_ips.iter().map(|ip| ip.to_string()))
                .collect::<Vec<_>>();
            (i.name, i.status.as_str().to_string(), ips.join(","))
        })
        .collect();
    let held = ping_line.contains(" ok ") && kept && reached;
    Ok(Summary {
        held,
        project: ctx.project_name().into(),
        instances,
        ping: ping_line.trim_start_matches("hvtest: ").into(),
        volume: format!("{} ({} GiB): data kept across stop/start: {kept}", vol.id, vol.size_gb),
        floating: format!(
            "{} -> {server_ip}: reached from outside: {reached}",
            fip.floating_ip_address
        ),
    })
}

fn main() -> R<()> {
    if !(hv_test_support::is_root() && hv_test_support::have_kvm()) {
        return Err("this example needs root and /dev/kvm".into());
    }
    let dir = tempfile::tempdir()?;
    let host_ns = NetNs::new("cloud");
    let outside = NetNs::new("outside");
    let summaries = host_ns.run(|| -> R<Vec<Summary>> {
        let store = Arc::new(SqliteStore::open(dir.path().join("cloud.db"))?);
        let mut cfg = Config::new(dir.path().join("images"));
        let mut compute =
            ComputeConfig::new(dir.path().join("host"), hv_test_support::vmm_binary());
        compute.shutdown_timeout = Duration::from_secs(5);
        cfg.compute = Some(compute);
        let cloud = Cloud::open(store, cfg)?;
        cloud.bootstrap(&Bootstrap::new("admin-secret"))?;
        let admin_token =
            cloud.authenticate(&PasswordAuth::by_name("admin", "admin-secret", "admin"))?;
        let admin = cloud.validate(&admin_token.secret)?;
        let flavor = cloud.create_flavor(&admin, &NewFlavor::new("m1.tiny", 1, 128, 0))?;
        let ext = cloud.create_network(
            &admin,
            &NewNetwork { name: "public".into(), shared: false, external: true },
        )?;
        cloud.create_subnet(&admin, &NewSubnet::new("public", &ext.id, "203.0.113.0/24"))?;
        // The outside world: a namespace on the external network's bridge.
        let bridge = format!("hv{}", ext.host_name);
        host_ns.exec_ok(&["ip", "link", "add", "vin", "type", "veth", "peer", "name", "vout"]);
        host_ns.exec_ok(&["ip", "link", "set", "vout", "netns", outside.name()]);
        host_ns.exec_ok(&["ip", "link", "set", "vin", "master", &bridge, "up"]);
        outside.exec_ok(&["ip", "addr", "add", "203.0.113.100/24", "dev", "vout"]);
        outside.exec_ok(&["ip", "link", "set", "vout", "up"]);

        let stories = (|| -> R<Vec<Summary>> {
            let mut out = vec![];
            for (n, name) in [(1u8, "alpha"), (2u8, "beta")] {
                let p = cloud.create_project(&admin, name, "")?;
                let u = cloud.create_user(
                    &admin,
                    &NewUser {
                        name: format!("{name}-user"),
                        password: "pw".into(),
                        default_project_id: Some(p.id.clone()),
                    },
                )?;
                cloud.grant_role(&admin, &p.id, &u.id, Role::Member)?;
                let t = cloud.authenticate(&PasswordAuth::by_name(&u.name, "pw", name))?;
                let ctx = cloud.validate(&t.secret)?;
                out.push(tenant_story(&cloud, &ctx, &flavor.id, &ext.id, &outside, n)?);
            }
            Ok(out)
        })();
        // Whether the stories ran to the end or not, no guest outlives the example (VMMs
        // outlive their manager by design).
        for i in cloud.list_instances(&admin)? {
            cloud.delete_instance(&admin, &i.id)?;
        }
        stories
    })?;
    let held = summaries.iter().all(|s| s.held);
    for s in summaries {
        println!("project {}", s.project);
        for (name, status, ips) in &s.instances {
            println!("  instance {name:<8} {status:<8} {ips}");
        }
        println!("  client -> server: {}", s.ping);
        println!("  volume {}", s.volume);
        println!("  floating IP {}", s.floating);
    }
    println!("(instances run hv's test guest: on this PVM host Linux guests stop at /init)");
    if !held {
        return Err("the story did not hold (see above)".into());
    }
    Ok(())
}
