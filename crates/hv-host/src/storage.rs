//! The host's storage pools and volumes (hv-storage's [`PoolManager`] on the host's state
//! directory): virsh's `pool-*` and `vol-*` verbs as [`Host`] methods, and the volumes domains
//! use as disks.
//!
//! Pool operations are blocking file and device I/O; each runs on tokio's blocking pool with
//! the pool's lock held only for that operation, so concurrent callers (and other processes on
//! the same state directory) serialise on the pool, never on the host.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hv_storage::block::DiskOptions;
use hv_storage::format::Probed;
use hv_storage::pool::{
    BuildFlags, Pool, PoolDef, PoolError, PoolKind, PoolManager, ResizeFlags, VolFormat,
    VolumeInfo, VolumeSpec,
};
use serde::{Deserialize, Serialize};

use crate::domain::DiskFormat;
use crate::error::{HostError, Result};
use crate::host::Host;

/// The host file and recorded format of volume `volume` in pool `pool`, for a VMM to open.
///
/// The format is the pool's record, never a probe of the volume's bytes (which the guest
/// controls). Volumes without a host file of their own (logical volumes) are refused here.
pub fn volume_for_vm(state_dir: &Path, pool: &str, volume: &str) -> Result<(PathBuf, DiskFormat)> {
    let mgr = PoolManager::new(state_dir)?;
    let p = mgr.open(pool)?;
    let info = p.volume_info(volume)?;
    let format = match info.format {
        VolFormat::Raw => DiskFormat::Raw,
        VolFormat::Qcow2 => DiskFormat::Qcow2,
        #[allow(unreachable_patterns)]
        other => {
            return Err(HostError::Unsupported(format!(
                "volume {pool}/{volume} of format {}",
                other.as_str()
            )))
        }
    };
    let path = info.path.ok_or_else(|| {
        HostError::Unsupported(format!(
            "volume {pool}/{volume} has no host file (a logical volume): hv-vmm opens files"
        ))
    })?;
    Ok((path, format))
}

/// Whether the VMM may open the backing chain of disk `path` (hv-vmm's `backing_files=on`).
///
/// Only a qcow2 whose header names a backing file needs it, and it is given only when `path`
/// is a volume of a directory pool this host manages and its whole chain opens under that
/// pool's confinement (recorded volumes of the same pool, stated formats, bounded depth, no
/// loops); hv-vmm then confines the chain to that directory again. A qcow2 with a backing
/// file anywhere else is refused here, before any VMM starts.
pub fn backing_chain_allowed(state_dir: &Path, path: &Path, format: DiskFormat) -> Result<bool> {
    if format != DiskFormat::Qcow2 {
        return Ok(false);
    }
    match hv_storage::format::probe_path(path) {
        Ok(Probed::Qcow2(h)) if h.backing_file.is_some() => {}
        // No backing file, or not a valid qcow2: the VMM opens it (or says why not) itself.
        _ => return Ok(false),
    }
    let refused = |why: String| {
        HostError::Unsupported(format!(
            "disk {}: a qcow2 with a backing file starts only as a volume of a dir pool \
             this host manages, its backing volumes in the same pool ({why})",
            path.display()
        ))
    };
    let real = path.canonicalize().map_err(|e| refused(format!("cannot resolve it: {e}")))?;
    let (Some(dir), Some(name)) = (real.parent(), real.file_name().and_then(|n| n.to_str())) else {
        return Err(refused("no file name".into()));
    };
    let mgr = PoolManager::new(state_dir)?;
    for (def, _) in mgr.list()? {
        let PoolKind::Dir { target } = &def.kind else { continue };
        if target.canonicalize().ok().as_deref() != Some(dir) {
            continue;
        }
        let pool = mgr.open(&def.name)?;
        pool.open_disk(name, DiskOptions { read_only: true, ..Default::default() })?;
        return Ok(true);
    }
    Err(refused(format!("{} is in no dir pool", dir.display())))
}

/// The backing chain below disk image `path`, top layer first, as its qcow2 headers name it
/// (for `dumpxml`; a raw image, a file that cannot be read or a layer without a stated format
/// ends it; at most [`hv_storage::block::open::MAX_CHAIN_DEPTH`] layers). Nothing is opened
/// for a guest here: this only reads headers.
pub fn backing_chain(path: &Path) -> Vec<crate::domain::BackingLayer> {
    let mut chain = Vec::new();
    let mut image = path.to_path_buf();
    while chain.len() < hv_storage::block::open::MAX_CHAIN_DEPTH {
        let Ok(Probed::Qcow2(h)) = hv_storage::format::probe_path(&image) else { break };
        let Some(name) = h.backing_file else { break };
        let joined = image.parent().unwrap_or(Path::new("/")).join(&name);
        let next = joined.canonicalize().unwrap_or(joined);
        let format = h.backing_format;
        chain.push(crate::domain::BackingLayer {
            path: next.clone(),
            format: format.map(|f| f.as_str().to_string()),
        });
        if format != Some(hv_storage::format::ImageFormat::Qcow2)
            || chain.iter().rev().skip(1).any(|l| l.path == next)
        {
            break;
        }
        image = next;
    }
    chain
}

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

    /// `vol-delete`.
    pub async fn vol_delete(&self, pool: &str, vol: &str) -> Result<()> {
        let (pool, vol) = (pool.to_string(), vol.to_string());
        self.with_pools(move |m| Ok(m.open(&pool)?.delete_volume(&vol)?)).await
    }

    /// `vol-wipe`: the volume reads as zeroes afterwards.
    pub async fn vol_wipe(&self, pool: &str, vol: &str) -> Result<()> {
        let (pool, vol) = (pool.to_string(), vol.to_string());
        self.with_pools(move |m| Ok(m.open(&pool)?.wipe_volume(&vol)?)).await
    }

    /// `vol-resize`; returns the new capacity.
    pub async fn vol_resize(&self, r: VolResize) -> Result<u64> {
        self.with_pools(move |m| {
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

impl From<PoolError> for HostError {
    fn from(e: PoolError) -> HostError {
        HostError::Pool(e)
    }
}
