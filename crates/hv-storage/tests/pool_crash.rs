//! Crash safety of pool metadata.
//!
//! 1. Fault injection: every metadata write point of define, create, resize, clone and delete
//!    is made to "crash" in turn (the `failpoints` feature panics there, skipping all cleanup);
//!    reopening the pool from disk must find every committed volume intact and either the
//!    whole operation or none of it.
//! 2. A real `kill -9`: a child process (`tests/support/pool_crash_child.rs`) creates, resizes
//!    and deletes volumes in a loop; the parent kills it at random moments and checks the pool.

mod pool_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Once};
use std::time::{Duration, Instant};

use hv_storage::pool::{
    failpoint, ManagedPool, Pool, PoolDef, PoolManager, ResizeFlags, VolFormat, VolumeSpec,
};
use pool_common::{pattern, read_all, Env};

const MIB: u64 = 1 << 20;

/// Silences the panic message of injected crashes (other panics print as usual).
fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|s| s.starts_with(failpoint::INJECTED));
            if !injected {
                default(info);
            }
        }));
    });
}

/// What a pool holds: volume name -> (capacity, content hash).
type Snapshot = BTreeMap<String, (u64, u64)>;

fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn snapshot(pool: &dyn Pool) -> Snapshot {
    pool.list_volumes()
        .unwrap()
        .into_iter()
        .map(|v| {
            let data = read_all(pool, &v.name);
            assert_eq!(data.len() as u64, v.capacity, "{}", v.name);
            (v.name, (v.capacity, hash(&data)))
        })
        .collect()
}

type Setup = fn(&Env) -> ManagedPool;
type Op = fn(&mut ManagedPool);

/// Runs `op` once to learn the end state, then crashes it at each metadata write point in
/// turn and checks that the reopened pool is exactly the state before or the state after.
fn sweep(name: &str, setup: Setup, op: Op) {
    quiet_injected_panics();
    let (before, after) = {
        let env = Env::new();
        let mut pool = setup(&env);
        let before = snapshot(&pool);
        op(&mut pool);
        (before, snapshot(&pool))
    };
    assert_ne!(before, after, "{name}: the operation changes nothing");
    let mut crashes = 0;
    for n in 0.. {
        let env = Env::new();
        let mut pool = setup(&env);
        failpoint::arm(n);
        let crashed = catch_unwind(AssertUnwindSafe(|| op(&mut pool))).is_err();
        failpoint::disarm();
        drop(pool);
        let pool_name = env.mgr.list().unwrap()[0].0.name.clone();
        let pool = env.mgr.open(&pool_name).unwrap();
        let now = snapshot(&pool);
        if !crashed {
            assert_eq!(now, after, "{name}: without a crash");
            break;
        }
        crashes += 1;
        assert!(
            now == before || now == after,
            "{name}: crash at point {n} left a state that is neither before nor after:\nbefore {before:?}\nafter  {after:?}\nnow    {now:?}"
        );
        assert!(n < 200, "{name}: too many write points");
    }
    assert!(crashes > 0, "{name}: no write point was reached");
    eprintln!("{name}: {crashes} crash points checked");
}

fn dir_setup(env: &Env) -> ManagedPool {
    let mut p = env.dir_pool("d");
    let base = VolumeSpec::builder("base").format(VolFormat::Qcow2).capacity(4 * MIB);
    p.create_volume(&base.build().unwrap()).unwrap();
    let data = pattern(MIB as usize, 1);
    p.upload_volume("base", &mut &data[..], 0, &mut |_, _| {}).unwrap();
    p.create_volume(&VolumeSpec::builder("r").capacity(2 * MIB).build().unwrap()).unwrap();
    p.upload_volume("r", &mut &data[..], 0, &mut |_, _| {}).unwrap();
    p
}

fn logical_setup(env: &Env) -> ManagedPool {
    let mut p = env.logical_pool("vg", &[12, 12]);
    p.create_volume(&VolumeSpec::builder("a").capacity(3 * MIB).build().unwrap()).unwrap();
    let data = pattern(3 * MIB as usize, 2);
    p.upload_volume("a", &mut &data[..], 0, &mut |_, _| {}).unwrap();
    p.create_volume(&VolumeSpec::builder("b").capacity(MIB).build().unwrap()).unwrap();
    p
}

#[test]
fn dir_pool_operations_are_atomic_at_every_write_point() {
    sweep("dir create raw", dir_setup, |p| {
        p.create_volume(&VolumeSpec::builder("new").capacity(MIB).build().unwrap()).unwrap();
    });
    sweep("dir create qcow2 overlay", dir_setup, |p| {
        let s = VolumeSpec::builder("ov").format(VolFormat::Qcow2).backing("base");
        p.create_volume(&s.build().unwrap()).unwrap();
    });
    sweep("dir clone", dir_setup, |p| {
        p.clone_volume("base", "copy").unwrap();
    });
    sweep("dir resize raw", dir_setup, |p| {
        p.resize_volume("r", 3 * MIB, ResizeFlags::default()).unwrap();
    });
    sweep("dir delete", dir_setup, |p| p.delete_volume("r").unwrap());
}

#[test]
fn logical_pool_operations_are_atomic_at_every_write_point() {
    sweep("lv create", logical_setup, |p| {
        p.create_volume(&VolumeSpec::builder("new").capacity(14 * MIB).build().unwrap()).unwrap();
    });
    sweep("lv snapshot", logical_setup, |p| {
        p.create_volume(&VolumeSpec::builder("snap").backing("a").build().unwrap()).unwrap();
    });
    sweep("lv clone", logical_setup, |p| {
        p.clone_volume("a", "copy").unwrap();
    });
    sweep("lv grow", logical_setup, |p| {
        p.resize_volume("b", 12 * MIB, ResizeFlags::default()).unwrap();
    });
    sweep("lv shrink", logical_setup, |p| {
        p.resize_volume("a", MIB, ResizeFlags { allow_shrink: true }).unwrap();
    });
    sweep("lv delete", logical_setup, |p| p.delete_volume("a").unwrap());
}

#[test]
fn pool_definitions_are_atomic_at_every_write_point() {
    quiet_injected_panics();
    for n in 0.. {
        let env = Env::new();
        failpoint::arm(n);
        let crashed = catch_unwind(AssertUnwindSafe(|| {
            env.mgr.define(PoolDef::dir("p", env.path("p")).build().unwrap()).unwrap();
            let mut p = env.mgr.open("p").unwrap();
            p.build(Default::default()).unwrap();
            p.start().unwrap();
        }))
        .is_err();
        failpoint::disarm();
        // The definition is there or not, never half-written; so is the running state.
        let mgr = PoolManager::new(env.path("state")).unwrap();
        let list = mgr.list().unwrap();
        assert!(list.len() <= 1);
        if !crashed {
            assert_eq!(list[0].1, hv_storage::pool::PoolState::Running);
            break;
        }
        assert!(n < 50);
    }
}

// ---- kill -9 ----

/// Runs one child on `pool` and kills it with SIGKILL after `delay` from its first line;
/// returns its output lines.
fn run_and_kill(state: &str, pool: &str, round: u32, delay: Duration) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hv-pool-crash-child"))
        .args([state, pool, &round.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line.clone()).is_err() {
                break;
            }
        }
    });
    let mut lines = vec![];
    let first = rx.recv_timeout(Duration::from_secs(60)).expect("the child starts");
    lines.push(first);
    let deadline = Instant::now() + delay;
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(l);
        if Instant::now() >= deadline {
            break;
        }
    }
    // SIGKILL, by pid, of the child we started.
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    // The harness prints "test crash_child_worker ... " without a newline before the child's
    // first line: take what follows the marker.
    lines.iter().filter_map(|l| l.split_once("@@ ").map(|(_, rest)| rest.to_string())).collect()
}

fn kill_rounds(env: &Env, pool_name: &str) {
    let state = env.path("state").to_str().unwrap().to_string();
    // Expected volumes: name -> minimum capacity; plus the one operation in flight.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut seed = std::process::id() as u64 ^ 0x5DEE_CE66;
    for round in 0..6 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(30 + seed % 400);
        let lines = run_and_kill(&state, pool_name, round, delay);
        let mut in_flight: Option<Vec<String>> = None;
        for l in &lines {
            let w: Vec<String> = l.split(' ').map(str::to_string).collect();
            match (w[0].as_str(), w[1].as_str()) {
                ("begin", _) => in_flight = Some(w[1..].to_vec()),
                ("done", "create") => {
                    expected.insert(w[2].clone(), w[3].parse().unwrap());
                    in_flight = None;
                }
                ("done", "resize") => {
                    expected.insert(w[2].clone(), w[3].parse().unwrap());
                    in_flight = None;
                }
                ("done", "delete") => {
                    expected.remove(&w[2]);
                    in_flight = None;
                }
                _ => unreachable!("{l}"),
            }
        }
        let pool = env.mgr.open(pool_name).unwrap();
        let actual: BTreeMap<String, u64> =
            pool.list_volumes().unwrap().into_iter().map(|v| (v.name, v.capacity)).collect();
        for (name, cap) in &actual {
            // Every volume is whole: readable to its end.
            assert_eq!(read_all(&pool, name).len() as u64, *cap);
        }
        let flight = in_flight.clone().unwrap_or_default();
        let flight_name = flight.get(1).cloned().unwrap_or_default();
        for (name, cap) in &expected {
            match actual.get(name) {
                Some(c) if c == cap => {}
                Some(c) if flight_name == *name && flight[0] == "resize" => {
                    assert_eq!(c.to_string(), flight[2], "{name}: resize half done")
                }
                None if flight_name == *name && flight[0] == "delete" => {}
                other => panic!("round {round}: committed {name} ({cap}) is now {other:?}; in flight {flight:?}"),
            }
        }
        for name in actual.keys() {
            assert!(
                expected.contains_key(name) || *name == flight_name,
                "round {round}: {name} was never committed (in flight {flight:?})"
            );
        }
        // Continue from what is on disk.
        expected = actual;
        eprintln!(
            "{pool_name} round {round}: killed after {} lines, {} volumes",
            lines.len(),
            expected.len()
        );
    }
}

#[test]
fn kill_9_in_the_middle_of_metadata_updates() {
    let env = Env::new();
    drop(env.logical_pool("vg", &[256, 256]));
    kill_rounds(&env, "vg");
    drop(env.dir_pool("d"));
    kill_rounds(&env, "d");
}
