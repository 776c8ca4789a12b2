//! The state directory: persistent pool definitions and their runtime state, like libvirt's
//! `/etc/libvirt/storage/*.xml` and `/run/libvirt/storage/`.
//!
//! Layout under `<state>/storage/`: `pools/NAME.json` (the [`PoolDef`]), `run/NAME.json` (the
//! pool's [`PoolState`] while it is active; absent means inactive), `locks/NAME.lock` (an
//! exclusive `flock` held while a process has the pool open, so concurrent `hvctl` runs
//! serialise). Every file is replaced crash-safely ([`persist::write_atomic`]).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::def::{validate_name, PoolDef, PoolKind};
use super::error::{io_err, PoolError, Result};
use super::image::VolumeIo;
use super::logical::LogicalPool;
use super::persist::{self, clean_temp_files, write_atomic};
use super::volume::{Progress, ResizeFlags, VolumeInfo, VolumeSpec};
use super::{BuildFlags, DirPool, Pool, PoolInfo, PoolState};

/// Pool definitions in a state directory.
#[derive(Debug, Clone)]
pub struct PoolManager {
    root: PathBuf,
    lock_timeout: Duration,
}

#[derive(Serialize, Deserialize)]
struct RunState {
    state: PoolState,
}

impl PoolManager {
    /// Uses (and creates if needed) `<state_dir>/storage`.
    pub fn new(state_dir: impl AsRef<Path>) -> Result<PoolManager> {
        let root = state_dir.as_ref().join("storage");
        for sub in ["pools", "run", "locks"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
        }
        Ok(PoolManager { root, lock_timeout: Duration::from_secs(10) })
    }

    fn def_path(&self, name: &str) -> PathBuf {
        self.root.join("pools").join(format!("{name}.json"))
    }

    fn run_path(&self, name: &str) -> PathBuf {
        self.root.join("run").join(format!("{name}.json"))
    }

    /// Takes the exclusive lock `locks/NAME.lock`, waiting up to the manager's lock timeout for
    /// another process to let go of it.
    fn lock(&self, name: &str) -> Result<Flock<File>> {
        let path = self.root.join("locks").join(format!("{name}.lock"));
        let deadline = Instant::now() + self.lock_timeout;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        loop {
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    // Say who holds it, for the message of whoever waits next.
                    let _ = lock.set_len(0);
                    let _ = lock.write_all_at(std::process::id().to_string().as_bytes(), 0);
                    return Ok(lock);
                }
                Err((back, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    f = back;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((back, Errno::EWOULDBLOCK)) => {
                    let mut holder = String::new();
                    let _ = (&back).read_to_string(&mut holder);
                    return Err(PoolError::Busy {
                        pool: name.to_string(),
                        holder: holder.trim().parse().ok(),
                    });
                }
                Err((_, e)) => return Err(io_err("lock", &path)(e.into())),
            }
        }
    }

    /// Sets how long [`PoolManager::open`] and friends wait for another process that has the
    /// pool open (default 10 s) before failing with [`PoolError::Busy`].
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
        let mut s = String::new();
        match File::open(path) {
            Ok(mut f) => f.read_to_string(&mut s).map_err(io_err("read", path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", path)(e)),
        };
        serde_json::from_str(&s)
            .map(Some)
            .map_err(|source| PoolError::StateFile { path: path.to_path_buf(), source })
    }

    /// The definition of pool `name`.
    pub fn get(&self, name: &str) -> Result<PoolDef> {
        validate_name("pool", name)?;
        Self::read_json(&self.def_path(name))?
            .ok_or_else(|| PoolError::PoolNotFound(name.to_string()))
    }

    /// The persisted state of pool `name`.
    pub fn state_of(&self, name: &str) -> Result<PoolState> {
        Ok(Self::read_json::<RunState>(&self.run_path(name))?
            .map_or(PoolState::Inactive, |r| r.state))
    }

    /// All defined pools with their states, sorted by name.
    pub fn list(&self) -> Result<Vec<(PoolDef, PoolState)>> {
        let dir = self.root.join("pools");
        let mut out = vec![];
        for e in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let e = e.map_err(io_err("read directory", &dir))?;
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".json") else { continue };
            if validate_name("pool", name).is_err() {
                continue;
            }
            let def = self.get(name)?;
            let state = self.state_of(name)?;
            out.push((def, state));
        }
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        Ok(out)
    }

    /// Defines a pool (virsh `pool-define-as`). Refused if the name is taken or another pool
    /// already uses the same directory or physical volume.
    pub fn define(&self, def: PoolDef) -> Result<()> {
        let _guard = self.lock(".manager")?;
        clean_temp_files(&self.root.join("pools"));
        validate_name("pool", &def.name)?;
        if self.def_path(&def.name).exists() {
            return Err(PoolError::PoolExists(def.name));
        }
        for (other, _) in self.list()? {
            let clash = match (&def.kind, &other.kind) {
                (PoolKind::Dir { target: a }, PoolKind::Dir { target: b }) => a == b,
                (
                    PoolKind::Logical { source_devs: a, vg_name: va, .. },
                    PoolKind::Logical { source_devs: b, vg_name: vb, .. },
                ) => va == vb || a.iter().any(|d| b.contains(d)),
                _ => false,
            };
            if clash {
                return Err(PoolError::Invalid {
                    name: def.name.clone(),
                    reason: format!("its storage is already used by pool '{}'", other.name),
                });
            }
        }
        let json = serde_json::to_vec_pretty(&def).expect("a pool definition serialises");
        write_atomic(&self.def_path(&def.name), &json)
    }

    /// Removes an inactive pool's definition (virsh `pool-undefine`); its storage stays.
    pub fn undefine(&self, name: &str) -> Result<()> {
        let _guard = self.lock(".manager")?;
        let _pool = self.lock(name)?;
        self.get(name)?;
        let state = self.state_of(name)?;
        state.check(super::PoolOp::Undefine).ok_or(PoolError::BadState {
            pool: name.to_string(),
            op: super::PoolOp::Undefine,
            state,
        })?;
        persist::remove_durable(&self.run_path(name))?;
        persist::remove_durable(&self.def_path(name))
    }

    /// Opens pool `name`, holding its lock until the returned pool is dropped (another
    /// process opening it meanwhile waits, then fails with [`PoolError::Busy`]).
    pub fn open(&self, name: &str) -> Result<ManagedPool> {
        let lock = self.lock(name)?;
        let def = self.get(name)?;
        let state = self.state_of(name)?;
        let pool: Box<dyn Pool> = match &def.kind {
            PoolKind::Dir { .. } => Box::new(DirPool::new(def, state)?),
            PoolKind::Logical { .. } => Box::new(LogicalPool::open(def, state)?),
        };
        Ok(ManagedPool { pool, run_path: self.run_path(name), _lock: lock })
    }
}

/// A pool opened through the [`PoolManager`]: the pool itself, whose state changes are
/// persisted, and the lock that keeps other processes out meanwhile.
pub struct ManagedPool {
    pool: Box<dyn Pool>,
    run_path: PathBuf,
    _lock: Flock<File>,
}

impl std::fmt::Debug for ManagedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedPool")
            .field("name", &self.pool.name())
            .field("state", &self.pool.state())
            .finish()
    }
}

impl ManagedPool {
    fn persist_state(&self) -> Result<()> {
        match self.pool.state() {
            PoolState::Running | PoolState::Inaccessible => {
                let json = serde_json::to_vec(&RunState { state: PoolState::Running })
                    .expect("serialises");
                write_atomic(&self.run_path, &json)
            }
            _ => persist::remove_durable(&self.run_path),
        }
    }

    fn persisting<T>(&mut self, f: impl FnOnce(&mut dyn Pool) -> Result<T>) -> Result<T> {
        let r = f(self.pool.as_mut());
        self.persist_state()?;
        r
    }
}

impl Pool for ManagedPool {
    fn def(&self) -> &PoolDef {
        self.pool.def()
    }
    fn state(&self) -> PoolState {
        self.pool.state()
    }
    fn build(&mut self, flags: BuildFlags) -> Result<()> {
        self.pool.build(flags)
    }
    fn start(&mut self) -> Result<()> {
        self.persisting(|p| p.start())
    }
    fn stop(&mut self) -> Result<()> {
        self.persisting(|p| p.stop())
    }
    fn refresh(&mut self) -> Result<()> {
        self.pool.refresh()
    }
    fn delete(&mut self) -> Result<()> {
        self.pool.delete()
    }
    fn info(&self) -> Result<PoolInfo> {
        self.pool.info()
    }
    fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.pool.list_volumes()
    }
    fn create_volume(&mut self, spec: &VolumeSpec) -> Result<VolumeInfo> {
        self.pool.create_volume(spec)
    }
    fn delete_volume(&mut self, name: &str) -> Result<()> {
        self.pool.delete_volume(name)
    }
    fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        self.pool.volume_info(name)
    }
    fn volume_path(&self, name: &str) -> Result<PathBuf> {
        self.pool.volume_path(name)
    }
    fn resize_volume(&mut self, name: &str, capacity: u64, flags: ResizeFlags) -> Result<()> {
        self.pool.resize_volume(name, capacity, flags)
    }
    fn clone_volume(&mut self, name: &str, new_name: &str) -> Result<VolumeInfo> {
        self.pool.clone_volume(name, new_name)
    }
    fn open_volume(&self, name: &str, writable: bool) -> Result<Box<dyn VolumeIo>> {
        self.pool.open_volume(name, writable)
    }
    fn open_disk(
        &self,
        name: &str,
        options: crate::block::DiskOptions,
    ) -> Result<Box<dyn crate::block::BlockBackend>> {
        self.pool.open_disk(name, options)
    }
    fn as_logical(&self) -> Option<&LogicalPool> {
        self.pool.as_logical()
    }
    fn upload_volume(
        &mut self,
        name: &str,
        src: &mut dyn Read,
        len: u64,
        progress: Progress<'_>,
    ) -> Result<u64> {
        self.pool.upload_volume(name, src, len, progress)
    }
    fn download_volume(
        &self,
        name: &str,
        dst: &mut dyn Write,
        progress: Progress<'_>,
    ) -> Result<u64> {
        self.pool.download_volume(name, dst, progress)
    }
    fn wipe_volume(&mut self, name: &str) -> Result<()> {
        self.pool.wipe_volume(name)
    }
}
