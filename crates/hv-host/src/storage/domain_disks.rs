//! The volumes domains use as disks: what a VMM opens for `<disk type='volume'>` (a dir
//! pool's file, or a logical volume's extent map) and the qcow2 backing chains a VMM may open.

use std::path::{Path, PathBuf};

use hv_storage::block::{DiskOptions, SegmentPath};
use hv_storage::format::Probed;
use hv_storage::pool::{Pool, PoolKind, PoolManager, VolFormat};

use crate::domain::DiskFormat;
use crate::error::{HostError, Result};

/// What a VMM opens for a volume of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmVolume {
    /// A dir pool's volume: its host file, in the format the pool recorded.
    File {
        /// The host file.
        path: PathBuf,
        /// The recorded format.
        format: DiskFormat,
    },
    /// A logical pool's volume: raw, its extents on the volume group's physical volumes.
    /// There is no device-mapper, so no `/dev/VG/LV` to open: the VMM is given the extent
    /// map (hv-vmm's `segments`).
    Logical {
        /// The name LVM would give its device node (`/dev/VG/LV`), which the VMM shows.
        name: PathBuf,
        /// Its extents, in order from byte 0.
        extents: Vec<SegmentPath>,
    },
}

/// What a VMM opens for volume `volume` of pool `pool`.
///
/// The format is the pool's record, never a probe of the volume's bytes (which the guest
/// controls).
pub fn volume_for_vm(state_dir: &Path, pool: &str, volume: &str) -> Result<VmVolume> {
    let mgr = PoolManager::new(state_dir)?;
    let p = mgr.open(pool)?;
    let info = p.volume_info(volume)?;
    if let Some(lvm) = p.as_logical() {
        let extents = lvm
            .lv_segments(volume)?
            .into_iter()
            .map(|s| SegmentPath { path: s.pv_path, file_offset: s.pv_offset, len: s.len })
            .collect();
        return Ok(VmVolume::Logical { name: Path::new("/dev").join(&info.key), extents });
    }
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
        HostError::Unsupported(format!("volume {pool}/{volume} has no host file"))
    })?;
    Ok(VmVolume::File { path, format })
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
