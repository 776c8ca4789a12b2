//! The host's storage pools and volumes (hv-storage's [`PoolManager`] on the host's state
//! directory): virsh's `pool-*` and `vol-*` verbs as [`Host`] methods, and the volumes domains
//! use as disks.
//!
//! Pool operations are blocking file and device I/O; each runs on tokio's blocking pool with
//! the pool's lock held only for that operation, so concurrent callers (and other processes on
//! the same state directory) serialise on the pool, never on the host.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hv_storage::pool::{
    BuildFlags, Pool, PoolDef, PoolError, PoolKind, PoolManager, ResizeFlags, VolFormat,
    VolumeInfo, VolumeSpec,
};
use serde::{Deserialize, Serialize};

use crate::error::{HostError, Result};
use crate::host::Host;

mod domain_disks;

pub use domain_disks::{backing_chain, backing_chain_allowed, volume_for_vm, VmVolume};

/// `pool-define-as NAME TYPE ...`: a pool definition as virsh's arguments give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDefineAs {
    /// The pool name.
    pub name: String,
    /// `dir` or `logical`.
    pub pool_type: String,
    /// A dir pool's directory (`--target`, absolute).
    pub target: Option<PathBuf>,
    /// A logical pool's physical volumes (`--source-dev`, absolute, repeatable).
    #[serde(default)]
    pub source_devs: Vec<PathBuf>,
    /// A logical pool's volume group name (`--source-name`; the pool name by default).
    pub source_name: Option<String>,
}

impl PoolDefineAs {
    /// The validated definition (a fresh UUID).
    pub fn to_def(&self) -> Result<PoolDef> {
        let def = match self.pool_type.as_str() {
            "dir" => {
                let target = self.target.as_ref().ok_or_else(|| {
                    HostError::Unsupported("a dir pool needs --target PATH".into())
                })?;
                PoolDef::dir(&self.name, absolute(target)?).build()?
            }
            "logical" => {
                let devs: Vec<PathBuf> =
                    self.source_devs.iter().map(|d| absolute(d)).collect::<Result<_>>()?;
                let mut b = PoolDef::logical(&self.name, devs);
                if let Some(vg) = &self.source_name {
                    b = b.vg_name(vg);
                }
                b.build()?
            }
            other => {
                return Err(HostError::Unsupported(format!(
                    "unsupported pool type '{other}' (dir or logical)"
                )))
            }
        };
        Ok(def)
    }
}

/// A pool's lifecycle verbs that take only the pool's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PoolAction {
    /// `pool-build [--overwrite]`.
    Build {
        /// Relabel this pool's own earlier PVs.
        overwrite: bool,
    },
    /// `pool-start`.
    Start,
    /// `pool-destroy`: deactivate (data stays).
    Destroy,
    /// `pool-delete`: remove an inactive, empty pool's storage.
    Delete,
    /// `pool-refresh`.
    Refresh,
}

impl PoolAction {
    /// virsh's past participle for the verb (`Pool NAME built`).
    pub fn done(self) -> &'static str {
        match self {
            PoolAction::Build { .. } => "built",
            PoolAction::Start => "started",
            PoolAction::Destroy => "destroyed",
            PoolAction::Delete => "deleted",
            PoolAction::Refresh => "refreshed",
        }
    }
}

/// One pool as `pool-list` and `pool-info` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRow {
    /// The name.
    pub name: String,
    /// The UUID.
    pub uuid: String,
    /// `dir` or `logical`.
    pub pool_type: String,
    /// libvirt's state word (`running`, `inactive`...).
    pub state: String,
    /// Whether the pool is active.
    pub active: bool,
    /// Total bytes (0 when inactive).
    pub capacity: u64,
    /// Bytes in use (0 when inactive).
    pub allocation: u64,
    /// Bytes free (0 when inactive).
    pub available: u64,
}

/// `vol-create-as POOL NAME CAPACITY ...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolCreateAs {
    /// The pool.
    pub pool: String,
    /// The new volume's name.
    pub name: String,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// `raw` or `qcow2`; by default qcow2 over a backing volume in a dir pool, else raw.
    pub format: Option<String>,
    /// The backing volume (a name, or a path inside a dir pool).
    pub backing_vol: Option<String>,
    /// The backing volume's format.
    pub backing_vol_format: Option<String>,
}

/// One volume as `vol-list` and `vol-info` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolRow {
    /// The name.
    pub name: String,
    /// The host file, or the `VG/LV` key of a logical volume.
    pub path: String,
    /// virsh's type: `file` in dir pools, `block` for logical volumes.
    pub vol_type: String,
    /// The recorded format.
    pub format: String,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Bytes used on the host.
    pub allocation: u64,
    /// The backing volume or file, if any.
    pub backing: Option<String>,
}

/// `vol-resize VOL CAPACITY --pool POOL [--delta] [--shrink]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolResize {
    /// The pool.
    pub pool: String,
    /// The volume.
    pub vol: String,
    /// Bytes: the new capacity, or with `delta` the change.
    pub capacity: u64,
    /// `capacity` is added (or, with `shrink`, subtracted).
    pub delta: bool,
    /// Allow the volume to get smaller.
    pub shrink: bool,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p)
        .map_err(|e| HostError::Unsupported(format!("bad path '{}': {e}", p.display())))
}

fn vol_type(pool: &dyn Pool) -> &'static str {
    match pool.def().kind {
        PoolKind::Dir { .. } => "file",
        PoolKind::Logical { .. } => "block",
    }
}

fn vol_row(pool: &dyn Pool, v: VolumeInfo) -> VolRow {
    VolRow {
        path: v.path.as_ref().map_or(v.key.clone(), |p| p.display().to_string()),
        name: v.name,
        vol_type: vol_type(pool).into(),
        format: v.format.to_string(),
        capacity: v.capacity,
        allocation: v.allocation,
        backing: v.backing,
    }
}

/// virsh takes `--backing-vol` as a name, key or path; a path inside a dir pool is its name.
fn backing_name(pool: &dyn Pool, vol: &str) -> String {
    if let PoolKind::Dir { target } = &pool.def().kind {
        if let Ok(rest) = Path::new(vol).strip_prefix(target) {
            return rest.display().to_string();
        }
    }
    vol.to_string()
}

fn pool_row(pool: &dyn Pool) -> Result<PoolRow> {
    let info = pool.info()?;
    Ok(PoolRow {
        name: info.name,
        uuid: info.uuid,
        pool_type: pool.def().kind.type_name().into(),
        state: info.state.to_string(),
        active: info.state.is_active(),
        capacity: info.capacity,
        allocation: info.allocation,
        available: info.available,
    })
}

impl Host {
    /// Runs `f` on the host's pools on tokio's blocking pool.
    async fn with_pools<T: Send + 'static>(
        &self,
        f: impl FnOnce(&PoolManager) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let dir = self.config().state_dir.clone();
        tokio::task::spawn_blocking(move || f(&PoolManager::new(&dir)?))
            .await
            .map_err(|e| HostError::Internal(format!("pool task: {e}")))?
    }

    /// `pool-define-as`.
    pub async fn pool_define_as(&self, spec: PoolDefineAs) -> Result<String> {
        let def = spec.to_def()?;
        let name = def.name.clone();
        self.with_pools(move |m| Ok(m.define(def)?)).await?;
        Ok(name)
    }

    /// `pool-build`, `pool-start`, `pool-destroy`, `pool-delete`, `pool-refresh`.
    pub async fn pool_action(&self, pool: &str, action: PoolAction) -> Result<()> {
        let pool = pool.to_string();
        self.with_pools(move |m| {
            let mut p = m.open(&pool)?;
            match action {
                PoolAction::Build { overwrite } => p.build(BuildFlags { overwrite })?,
                PoolAction::Start => p.start()?,
                PoolAction::Destroy => p.stop()?,
                PoolAction::Delete => p.delete()?,
                PoolAction::Refresh => p.refresh()?,
            }
            Ok(())
        })
        .await
    }

    /// `pool-undefine`.
    pub async fn pool_undefine(&self, pool: &str) -> Result<()> {
        let pool = pool.to_string();
        self.with_pools(move |m| Ok(m.undefine(&pool)?)).await
    }

    /// `pool-list`: every pool with its state and (when active) sizes, by name.
    pub async fn pool_list(&self) -> Result<Vec<PoolRow>> {
        self.with_pools(|m| {
            let mut rows = Vec::new();
            for (def, _) in m.list()? {
                rows.push(pool_row(&m.open(&def.name)?)?);
            }
            Ok(rows)
        })
        .await
    }

    /// `pool-info`.
    pub async fn pool_info(&self, pool: &str) -> Result<PoolRow> {
        let pool = pool.to_string();
        self.with_pools(move |m| pool_row(&m.open(&pool)?)).await
    }

    /// `vol-create-as`.
    pub async fn vol_create_as(&self, spec: VolCreateAs) -> Result<()> {
        self.with_pools(move |m| {
            let mut pool = m.open(&spec.pool)?;
            let default_format = match pool.def().kind {
                PoolKind::Dir { .. } if spec.backing_vol.is_some() => VolFormat::Qcow2,
                _ => VolFormat::Raw,
            };
            let format = spec.format.as_deref().map(str::parse).transpose()?;
            let mut b = VolumeSpec::builder(&spec.name)
                .format(format.unwrap_or(default_format))
                .capacity(spec.capacity);
            if let Some(v) = &spec.backing_vol {
                b = b.backing(backing_name(&pool, v));
            }
            if let Some(f) = &spec.backing_vol_format {
                b = b.backing_format(f.parse()?);
            }
            pool.create_volume(&b.build()?)?;
            Ok(())
        })
        .await
    }

    /// `vol-list`: the pool's volumes, by name.
    pub async fn vol_list(&self, pool: &str) -> Result<Vec<VolRow>> {
        let pool = pool.to_string();
        self.with_pools(move |m| {
            let p = m.open(&pool)?;
            Ok(p.list_volumes()?.into_iter().map(|v| vol_row(&p, v)).collect())
        })
        .await
    }

    /// `vol-info`.
    pub async fn vol_info(&self, pool: &str, vol: &str) -> Result<VolRow> {
        let (pool, vol) = (pool.to_string(), vol.to_string());
        self.with_pools(move |m| {
            let p = m.open(&pool)?;
            let v = p.volume_info(&vol)?;
            Ok(vol_row(&p, v))
        })
        .await
    }

    /// `vol-path`: the volume's host file (logical volumes have none).
    pub async fn vol_path(&self, pool: &str, vol: &str) -> Result<PathBuf> {
        let (pool, vol) = (pool.to_string(), vol.to_string());
        self.with_pools(move |m| Ok(m.open(&pool)?.volume_path(&vol)?)).await
    }

    /// Runs `f` on the host's pools with the domain table locked (no domain starts
    /// meanwhile); `f` is given who uses volume `vol` of `pool`, to refuse what would free or
    /// rewrite a logical volume's extents under them.
    async fn with_volume_users<T: Send + 'static>(
        &self,
        pool: &str,
        vol: &str,
        f: impl FnOnce(&PoolManager, VolumeUsers) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (_domains, users) = self.lock_volume_users(pool, vol).await;
        let users = VolumeUsers { pool: pool.to_string(), volume: vol.to_string(), users };
        self.with_pools(move |m| f(m, users)).await
    }

    /// `vol-delete`. A logical volume a domain uses is refused: its freed extents would be
    /// handed to the next volume while the domain's VMM still writes them (LVM refuses to
    /// remove an open volume for the same reason).
    pub async fn vol_delete(&self, pool: &str, vol: &str) -> Result<()> {
        let (pool_s, vol_s) = (pool.to_string(), vol.to_string());
        self.with_volume_users(pool, vol, move |m, users| {
            let mut p = m.open(&pool_s)?;
            users.refuse_lv(&p, "delete")?;
            Ok(p.delete_volume(&vol_s)?)
        })
        .await
    }

    /// `vol-wipe`: the volume reads as zeroes afterwards. Refused for a logical volume a
    /// domain uses.
    pub async fn vol_wipe(&self, pool: &str, vol: &str) -> Result<()> {
        let (pool_s, vol_s) = (pool.to_string(), vol.to_string());
        self.with_volume_users(pool, vol, move |m, users| {
            let mut p = m.open(&pool_s)?;
            users.refuse_lv(&p, "wipe")?;
            Ok(p.wipe_volume(&vol_s)?)
        })
        .await
    }

    /// `vol-resize`; returns the new capacity. Shrinking a logical volume a domain uses is
    /// refused (its last extents would be freed under the VMM); growing it is not (the VMM's
    /// extents stay where they are, and it sees the new ones when it next starts).
    pub async fn vol_resize(&self, r: VolResize) -> Result<u64> {
        let (pool, vol) = (r.pool.clone(), r.vol.clone());
        self.with_volume_users(&pool, &vol, move |m, users| {
            let mut p = m.open(&r.pool)?;
            let current = p.volume_info(&r.vol)?.capacity;
            let capacity = match (r.delta, r.shrink) {
                (true, false) => current.checked_add(r.capacity).ok_or_else(|| {
                    HostError::Unsupported(format!("capacity of {} overflows", r.vol))
                })?,
                (true, true) => current.checked_sub(r.capacity).ok_or_else(|| {
                    HostError::Unsupported(format!("cannot shrink {} below zero", r.vol))
                })?,
                (false, _) => r.capacity,
            };
            if capacity < current {
                users.refuse_lv(&p, "shrink")?;
            }
            p.resize_volume(&r.vol, capacity, ResizeFlags { allow_shrink: r.shrink })?;
            Ok(capacity)
        })
        .await
    }

    /// `vol-clone`: a full, independent copy.
    pub async fn vol_clone(&self, pool: &str, vol: &str, new_name: &str) -> Result<()> {
        let (pool, vol, new) = (pool.to_string(), vol.to_string(), new_name.to_string());
        self.with_pools(move |m| {
            m.open(&pool)?.clone_volume(&vol, &new)?;
            Ok(())
        })
        .await
    }

    /// `vol-upload`: writes `src` into the volume from offset 0 (its guest-visible bytes,
    /// whatever its format); `len` is the expected length (0 if unknown). Returns bytes written.
    pub async fn vol_upload(
        &self,
        pool: &str,
        vol: &str,
        mut src: Box<dyn Read + Send>,
        len: u64,
    ) -> Result<u64> {
        let (pool, vol) = (pool.to_string(), vol.to_string());
        self.with_pools(move |m| {
            Ok(m.open(&pool)?.upload_volume(&vol, &mut src, len, &mut |_, _| {})?)
        })
        .await
    }

    /// `vol-download`: writes the volume's guest-visible bytes to `dst`. Returns bytes written.
    pub async fn vol_download(
        &self,
        pool: &str,
        vol: &str,
        mut dst: Box<dyn Write + Send>,
    ) -> Result<u64> {
        let (pool, vol) = (pool.to_string(), vol.to_string());
        self.with_pools(move |m| {
            let n = m.open(&pool)?.download_volume(&vol, &mut dst, &mut |_, _| {})?;
            dst.flush().map_err(|e| HostError::Storage(format!("download of {vol}: {e}")))?;
            Ok(n)
        })
        .await
    }
}

/// The domains using one volume (see [`Host::lock_volume_users`]).
struct VolumeUsers {
    pool: String,
    volume: String,
    users: Vec<String>,
}

impl VolumeUsers {
    /// Refuses `op` when `pool` is a logical pool and domains use the volume.
    fn refuse_lv(&self, pool: &dyn Pool, op: &'static str) -> Result<()> {
        if self.users.is_empty() || pool.as_logical().is_none() {
            return Ok(());
        }
        Err(HostError::VolumeBusy {
            op,
            pool: self.pool.clone(),
            volume: self.volume.clone(),
            domains: self.users.join(", "),
        })
    }
}

impl From<PoolError> for HostError {
    fn from(e: PoolError) -> HostError {
        HostError::Pool(e)
    }
}
