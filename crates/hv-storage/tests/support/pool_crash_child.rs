//! The child process of `pool_crash.rs`'s `kill -9` test: loops over volume operations on a
//! pool, printing `@@ begin OP NAME [SIZE]` before and `@@ done OP NAME [SIZE]` after each one,
//! until the parent kills it.
//!
//! Usage: `hv-pool-crash-child STATE_DIR POOL ROUND`.

#[path = "pattern.rs"]
mod pattern;

use hv_storage::pool::{Pool, PoolManager, ResizeFlags, VolFormat, VolumeSpec};
use pattern::pattern;

const MIB: u64 = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [state, pool_name, round] = args.as_slice() else {
        eprintln!("usage: hv-pool-crash-child STATE_DIR POOL ROUND");
        std::process::exit(2);
    };
    let mgr = PoolManager::new(state).unwrap();
    let mut pool = mgr.open(pool_name).unwrap();
    let qcow2 = matches!(pool.def().kind, hv_storage::pool::PoolKind::Dir { .. });
    for i in 0u64.. {
        let name = format!("r{round}v{i}");
        let size = (1 + i % 3) * MIB;
        println!("@@ begin create {name} {size}");
        let format = if qcow2 && i % 2 == 0 { VolFormat::Qcow2 } else { VolFormat::Raw };
        let spec = VolumeSpec::builder(&name).format(format).capacity(size).build().unwrap();
        pool.create_volume(&spec).unwrap();
        let data = pattern(64 << 10, i);
        pool.upload_volume(&name, &mut &data[..], 0, &mut |_, _| {}).unwrap();
        println!("@@ done create {name} {size}");
        println!("@@ begin resize {name} {}", size + MIB);
        pool.resize_volume(&name, size + MIB, ResizeFlags::default()).unwrap();
        println!("@@ done resize {name} {}", size + MIB);
        if i % 3 == 2 {
            let victim = format!("r{round}v{}", i - 1);
            println!("@@ begin delete {victim}");
            pool.delete_volume(&victim).unwrap();
            println!("@@ done delete {victim}");
        }
    }
}
