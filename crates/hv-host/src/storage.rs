//! The host's storage pools (hv-storage's [`PoolManager`] on the host's state directory), as
//! domains use them.

use std::path::{Path, PathBuf};

use hv_storage::pool::{Pool, PoolManager, VolFormat};

use crate::domain::DiskFormat;
use crate::error::{HostError, Result};

/// The host file and recorded format of volume `volume` in pool `pool`, for a VMM to open.
///
/// The format is the pool's record, never a probe of the volume's bytes (which the guest
/// controls). Volumes without a host file of their own (logical volumes) are refused here.
pub fn volume_for_vm(state_dir: &Path, pool: &str, volume: &str) -> Result<(PathBuf, DiskFormat)> {
    let storage = |e: hv_storage::pool::PoolError| HostError::Storage(e.to_string());
    let mgr = PoolManager::new(state_dir).map_err(storage)?;
    let p = mgr.open(pool).map_err(storage)?;
    let info = p.volume_info(volume).map_err(storage)?;
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
