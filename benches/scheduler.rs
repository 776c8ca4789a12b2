//! Control-plane benchmarks (hv-orchestrator): scheduler placements with 10,000 compute hosts,
//! and token validation.
//!
//! - `scheduler_select_10000_hosts`: filtering and weighing alone (the in-memory host view),
//!   one request against 10,000 hosts.
//! - `scheduler_place_10000_hosts_sqlite`: a whole placement: flavor lookup, filter and
//!   weigh, then the atomic claim in the SQLite store (one durable transaction:
//!   `synchronous=FULL`, so one fsync per placement) with its event.
//! - `scheduler_place_10000_hosts_sqlite_64_clients`: the same placements from 64 threads
//!   at once, as concurrent API requests arrive: the store's group commit puts the claims
//!   that arrive during one commit into the next one (each still atomic on its own), so the
//!   rate is no longer one fsync per placement. Reported per placement.
//! - `token_validate_sqlite`: `Cloud::validate` of a token (hash + one lookup).
//!
//! Run briefly with `cargo bench --bench scheduler -- --warm-up-time 1 --measurement-time 5`.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hv_orchestrator::compute::scheduler::{select, GroupRule, HostState, Request, Weigher};
use hv_orchestrator::compute::NewFlavor;
use hv_orchestrator::identity::{Bootstrap, PasswordAuth};
use hv_orchestrator::quota::Resource;
use hv_orchestrator::store::{HostRow, Op, SqliteStore, Store};
use hv_orchestrator::{Cloud, Config};

const HOSTS: usize = 10_000;

/// A deterministic spread of host sizes and loads (xorshift).
fn hosts() -> Vec<HostRow> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..HOSTS)
        .map(|i| {
            let vcpus = 16 + (next() % 112) as i64;
            let ram_mb = (64 + (next() % 960) as i64) * 1024;
            HostRow {
                id: format!("host-{i:05}"),
                name: format!("compute-{i:05}"),
                enabled: next() % 50 != 0,
                vcpus,
                ram_mb,
                disk_gb: 2000,
                cpu_ratio: 16.0,
                ram_ratio: 1.5,
                disk_ratio: 1.0,
                used_vcpus: (next() % (vcpus as u64 * 8)) as i64,
                used_ram_mb: (next() % (ram_mb as u64)) as i64,
                used_disk_gb: (next() % 1000) as i64,
            }
        })
        .collect()
}

fn bench_select(c: &mut Criterion) {
    let states: Vec<HostState> = hosts().iter().map(HostState::of).collect();
    let req = Request { vcpus: 2, ram_mb: 4096, disk_gb: 20 };
    let mut g = c.benchmark_group("scheduler");
    g.throughput(Throughput::Elements(1));
    g.bench_function("scheduler_select_10000_hosts", |b| {
        b.iter(|| select(&states, &req, Weigher::Spread, &GroupRule::None, &[]))
    });
    g.finish();
}

fn bench_place(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("cloud.db")).expect("store"));
    let ops: Vec<Op> = hosts().into_iter().map(Op::PutHost).collect();
    store.apply(&ops).expect("hosts");
    let cloud = Cloud::open(store, Config::new(dir.path().join("images"))).expect("cloud");
    cloud.bootstrap(&Bootstrap::new("bench-admin")).expect("bootstrap");
    let token =
        cloud.authenticate(&PasswordAuth::by_name("admin", "bench-admin", "admin")).expect("token");
    let ctx = cloud.validate(&token.secret).expect("context");
    cloud.set_quota(&ctx, ctx.project_id(), Resource::Instances, -1).expect("quota");
    let flavor = cloud.create_flavor(&ctx, &NewFlavor::new("m1.small", 1, 512, 1)).expect("flavor");
    let n = AtomicU64::new(0);
    let mut g = c.benchmark_group("scheduler");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.bench_function("scheduler_place_10000_hosts_sqlite", |b| {
        b.iter(|| {
            let consumer = format!("vm-{}", n.fetch_add(1, Ordering::Relaxed));
            cloud.schedule(&ctx, &consumer, &flavor.id, None).expect("placement")
        })
    });
    const CLIENTS: u64 = 64;
    g.bench_function("scheduler_place_10000_hosts_sqlite_64_clients", |b| {
        b.iter_custom(|iters| {
            // `iters` placements in all, spread over the clients.
            let each = iters.div_ceil(CLIENTS);
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..CLIENTS {
                    s.spawn(|| {
                        for _ in 0..each {
                            let consumer = format!("vm-{}", n.fetch_add(1, Ordering::Relaxed));
                            cloud.schedule(&ctx, &consumer, &flavor.id, None).expect("placement");
                        }
                    });
                }
            });
            start.elapsed().mul_f64(iters as f64 / (each * CLIENTS) as f64)
        })
    });
    g.bench_function("token_validate_sqlite", |b| {
        b.iter(|| cloud.validate(&token.secret).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, bench_select, bench_place);
criterion_main!(benches);
