//! Cloud control-plane figures (a plain harness: each sample boots real VMs, too slow for
//! criterion's sampling):
//!
//! - `instance_create_active_ms`: `Cloud::create_instance` until ACTIVE for one instance (no
//!   NIC, 128 MiB, the test guest idling in `hlt`), against `host_domain_start_ms`, the same
//!   domain defined and started through `hv_host::Host` directly: the difference is the
//!   control plane's own time (quota, placement claim, records, events).
//! - `instance_create_active_20_ms`: 20 creates at once from 20 threads, wall time.
//! - `idle_instances_ksm`: N idle 128 MiB instances with KSM on: memory the host spends per
//!   instance (MemAvailable delta, hv-vmm RSS), extrapolated to this host's RAM.
//!
//! `sudo cargo bench --bench cloud` (root and /dev/kvm; `HV_BENCH_IDLE=N` sets N, default 40).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hv_orchestrator::compute::{InstanceStatus, NewFlavor, NewInstance};
use hv_orchestrator::identity::{Bootstrap, NewUser, PasswordAuth};
use hv_orchestrator::image::{DiskFormat, NewImage};
use hv_orchestrator::quota::Resource;
use hv_orchestrator::store::SqliteStore;
use hv_orchestrator::{Cloud, ComputeConfig, Config, Context, Role};
use hv_test_support::netns::NetNs;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn ksm(file: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/kernel/mm/ksm/{file}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Sum of VmRSS (KiB) of the hv-vmm processes whose command line mentions `marker`.
fn vmm_rss_kib(marker: &str) -> (u64, usize) {
    let mut total = 0;
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        let Ok(cmd) = std::fs::read(p.join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.contains("hv-vmm") || !cmd.contains(marker) {
            continue;
        }
        let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        {
            total += kib;
            n += 1;
        }
    }
    (total, n)
}

struct Env {
    cloud: Arc<Cloud>,
    ctx: Context,
    image: String,
    flavor: String,
    state: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn setup() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("cloud.db")).unwrap());
    let mut cfg = Config::new(dir.path().join("images"));
    let state = dir.path().join("host");
    let mut c = ComputeConfig::new(&state, hv_test_support::vmm_binary());
    c.host_name = "bench".into();
    // Offer more CPUs than the machine has, so the CPU allocation ratio (2 cores x 16 here)
    // does not cap the idle-instance count: memory is what is measured.
    c.vcpus = 100;
    cfg.compute = Some(c);
    let cloud = Cloud::open(store, cfg).unwrap();
    cloud.bootstrap(&Bootstrap::new("pw")).unwrap();
    let t = cloud.authenticate(&PasswordAuth::by_name("admin", "pw", "admin")).unwrap();
    let admin = cloud.validate(&t.secret).unwrap();
    let p = cloud.create_project(&admin, "bench", "").unwrap();
    let u = cloud
        .create_user(
            &admin,
            &NewUser { name: "b".into(), password: "pw".into(), default_project_id: None },
        )
        .unwrap();
    cloud.grant_role(&admin, &p.id, &u.id, Role::Member).unwrap();
    for r in [Resource::Instances, Resource::Cores, Resource::Ram] {
        cloud.set_quota(&admin, &p.id, r, -1).unwrap();
    }
    let flavor = cloud.create_flavor(&admin, &NewFlavor::new("m128", 1, 128, 0)).unwrap().id;
    let t = cloud.authenticate(&PasswordAuth::by_name("b", "pw", "bench")).unwrap();
    let ctx = cloud.validate(&t.secret).unwrap();
    let mut n = NewImage::new("hlt", DiskFormat::Aki);
    n.properties.insert("os_command_line".into(), "test=hlt".into());
    let img = cloud.create_image(&ctx, &n).unwrap();
    cloud
        .upload_image(
            &ctx,
            &img.id,
            &mut std::fs::File::open(hv_test_support::test_guest()).unwrap(),
        )
        .unwrap();
    Env { cloud: Arc::new(cloud), ctx, image: img.id, flavor, state, _dir: dir }
}

/// Defines and starts a domain like an instance's directly through hv-host; returns the time.
fn host_start(state: &std::path::Path, i: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let cfg = hv_host::HostConfig {
            state_dir: state.join(format!("direct{i}")),
            vmm_binary: hv_test_support::vmm_binary(),
        };
        let host = hv_host::Host::open(cfg).await.unwrap();
        let kernel = hv_test_support::test_guest();
        let xml = format!(
            "<domain type='kvm'><name>d{i}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
             <os><type>hvm</type><kernel>{}</kernel><cmdline>test=hlt</cmdline></os></domain>",
            kernel.display()
        );
        let t = Instant::now();
        host.define(&xml).await.unwrap();
        host.start(&format!("d{i}")).await.unwrap();
        let took = ms(t.elapsed());
        host.destroy(&format!("d{i}")).await.unwrap();
        took
    })
}

fn create(env: &Env, name: &str) -> (String, f64) {
    let t = Instant::now();
    let i = env
        .cloud
        .create_instance(&env.ctx, &NewInstance::new(name, &env.image, &env.flavor))
        .unwrap();
    let took = ms(t.elapsed());
    assert_eq!(i.status, InstanceStatus::Active, "{:?}", i.fault);
    (i.id, took)
}

fn main() {
    if !(hv_test_support::is_root() && hv_test_support::have_kvm()) {
        eprintln!("cloud bench: needs root and /dev/kvm; skipped");
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ns = NetNs::new("bench");
    ns.run(|| {
        let env = setup();
        let runs = 10;
        let direct: Vec<f64> = (0..runs).map(|i| host_start(&env.state, i)).collect();
        let mut one = vec![];
        for i in 0..runs {
            let (id, t) = create(&env, &format!("one{i}"));
            one.push(t);
            env.cloud.delete_instance(&env.ctx, &id).unwrap();
        }
        let (d, o) = (median(direct), median(one));
        println!("host_domain_start_ms           median {d:8.1} ms ({runs} runs)");
        println!("instance_create_active_ms      median {o:8.1} ms ({runs} runs)");
        println!("  control plane per instance          {:8.1} ms", o - d);

        let t = Instant::now();
        let ids: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> =
                (0..20).map(|i| { let env = &env; s.spawn(move || create(env, &format!("many{i}")).0) }).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wall = ms(t.elapsed());
        println!("instance_create_active_20_ms   wall   {wall:8.1} ms, {:.1} ms per instance", wall / 20.0);
        println!("  beyond 20 direct VM starts          {:8.1} ms per instance", (wall - 20.0 * d) / 20.0);
        for id in &ids {
            env.cloud.delete_instance(&env.ctx, id).unwrap();
        }

        let n: usize = std::env::var("HV_BENCH_IDLE").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
        let _ = std::fs::write("/sys/kernel/mm/ksm/run", "1");
        let _ = std::fs::write("/sys/kernel/mm/ksm/pages_to_scan", "10000");
        let _ = std::fs::write("/sys/kernel/mm/ksm/sleep_millisecs", "20");
        let before = meminfo("MemAvailable:");
        let ids: Vec<String> = (0..n).map(|i| create(&env, &format!("idle{i}")).0).collect();
        std::thread::sleep(Duration::from_secs(20));
        let after = meminfo("MemAvailable:");
        let marker = env.state.display().to_string();
        let (rss, procs) = vmm_rss_kib(&marker);
        let per = (before.saturating_sub(after)) as f64 / n as f64;
        let total = meminfo("MemTotal:") as f64;
        println!(
            "idle_instances_ksm             {n} x 128 MiB: MemAvailable -{:.1} MiB ({:.2} MiB each), \
             hv-vmm RSS {:.1} MiB over {procs} processes ({:.2} MiB each), KSM pages_sharing {}",
            (before.saturating_sub(after)) as f64 / 1024.0,
            per / 1024.0,
            rss as f64 / 1024.0,
            rss as f64 / 1024.0 / procs.max(1) as f64,
            ksm("pages_sharing"),
        );
        println!(
            "  extrapolated: {:.0} such instances fit this host's {:.1} GiB by memory; the \
             scheduler admits {:.0} (RAM ratio 1.5 x 128 MiB flavors)",
            total / per.max(1.0),
            total / 1048576.0,
            total / 1024.0 * 1.5 / 128.0
        );
        for id in &ids {
            env.cloud.delete_instance(&env.ctx, id).unwrap();
        }
    });
}
