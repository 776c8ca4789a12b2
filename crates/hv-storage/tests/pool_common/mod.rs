//! Helpers shared by the pool tests: temporary state directories, pools, data patterns.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use hv_storage::pool::{BuildFlags, ManagedPool, Pool, PoolDef, PoolManager};
use tempfile::TempDir;

/// A temporary directory with a state dir and room for pool storage.
pub struct Env {
    pub dir: TempDir,
    pub mgr: PoolManager,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let mgr = PoolManager::new(dir.path().join("state")).expect("manager");
        Env { dir, mgr }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Defines, builds and starts a dir pool `name` under the temp dir.
    pub fn dir_pool(&self, name: &str) -> ManagedPool {
        self.mgr.define(PoolDef::dir(name, self.path(name)).build().unwrap()).unwrap();
        let mut p = self.mgr.open(name).unwrap();
        p.build(BuildFlags::default()).unwrap();
        p.start().unwrap();
        p
    }

    /// Makes sparse PV files of the given sizes (MiB) and a started logical pool over them
    /// with 1 MiB extents.
    pub fn logical_pool(&self, name: &str, pv_mib: &[u64]) -> ManagedPool {
        let pvs = self.pv_files(name, pv_mib);
        self.mgr.define(PoolDef::logical(name, pvs).extent_size(1 << 20).build().unwrap()).unwrap();
        let mut p = self.mgr.open(name).unwrap();
        p.build(BuildFlags::default()).unwrap();
        p.start().unwrap();
        p
    }

    pub fn pv_files(&self, name: &str, pv_mib: &[u64]) -> Vec<PathBuf> {
        pv_mib
            .iter()
            .enumerate()
            .map(|(i, mib)| {
                let p = self.path(&format!("{name}-pv{i}"));
                let f = std::fs::File::create(&p).unwrap();
                f.set_len(mib << 20).unwrap();
                p
            })
            .collect()
    }
}

#[path = "../support/pattern.rs"]
mod pattern_impl;
pub use pattern_impl::pattern;

/// True when `qemu-img` runs.
pub fn have_qemu_img() -> bool {
    Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Runs qemu-img, panicking with its output on failure; returns stdout.
pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a volume's whole guest-visible content.
pub fn read_all(pool: &dyn Pool, vol: &str) -> Vec<u8> {
    let mut out = vec![];
    pool.download_volume(vol, &mut out, &mut |_, _| {}).unwrap();
    out
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}
