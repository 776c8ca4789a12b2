//! A domain's disks as its VMM opens them, and which domains hold a volume open.

use super::{Host, Inner};
use crate::domain::{DiskFormat, DiskSource, DomainDef};
use crate::error::{HostError, Result};
use crate::storage::VmVolume;
use crate::vmm::ResolvedDisk;

impl Host {
    /// What the VMM opens for each disk of `def`: a file (with whether its qcow2 backing
    /// chain may open), or a logical volume's extents.
    pub(super) fn resolve_disks(&self, def: &DomainDef) -> Result<Vec<ResolvedDisk>> {
        def.disks
            .iter()
            .map(|d| match &d.source {
                DiskSource::File { path, format } => {
                    self.file_disk(path.clone(), *format, d.read_only)
                }
                DiskSource::Volume { pool, volume, format } => {
                    let vol = crate::storage::volume_for_vm(&self.cfg.state_dir, pool, volume)?;
                    let recorded = match &vol {
                        VmVolume::File { format, .. } => *format,
                        VmVolume::Logical { .. } => DiskFormat::Raw,
                    };
                    if let Some(f) = format {
                        if *f != recorded {
                            return Err(HostError::Unsupported(format!(
                                "disk {}: the XML says {f} but pool {pool} records volume {volume} as {recorded}",
                                d.target
                            )));
                        }
                    }
                    let disk = match vol {
                        VmVolume::File { path, format } => {
                            self.file_disk(path, format, d.read_only)?
                        }
                        VmVolume::Logical { name, extents } => {
                            // The VMM's option string separates extents with `;` and options
                            // with `,`: a PV path holding either cannot be passed.
                            if let Some(s) = extents.iter().find(|s| {
                                s.path.to_str().is_none_or(|p| p.contains([',', ';']))
                            }) {
                                return Err(HostError::Unsupported(format!(
                                    "disk {}: physical volume {} (a path with ',' or ';')",
                                    d.target,
                                    s.path.display()
                                )));
                            }
                            ResolvedDisk {
                                path: name,
                                segments: extents,
                                format: DiskFormat::Raw,
                                read_only: d.read_only,
                                backing_files: false,
                            }
                        }
                    };
                    Ok(disk)
                }
            })
            .collect()
    }

    /// A disk the VMM opens as a file, with whether its qcow2 backing chain may open.
    fn file_disk(
        &self,
        path: std::path::PathBuf,
        format: DiskFormat,
        read_only: bool,
    ) -> Result<ResolvedDisk> {
        let backing_files =
            crate::storage::backing_chain_allowed(&self.cfg.state_dir, &path, format)?;
        Ok(ResolvedDisk { path, segments: Vec::new(), format, read_only, backing_files })
    }

    /// Locks the domain table and names the domains using volume `volume` of `pool`: those
    /// whose VMM runs (or is paused) and those with a saved state, whose snapshot reopens the
    /// volume where it was. The lock is held as long as the guard, so no domain starts
    /// meanwhile.
    pub(crate) async fn lock_volume_users(
        &self,
        pool: &str,
        volume: &str,
    ) -> (tokio::sync::MutexGuard<'_, Inner>, Vec<String>) {
        let inner = self.inner.lock().await;
        let users = inner
            .store
            .list()
            .filter(|def| {
                def.disks.iter().any(|d| {
                    matches!(&d.source, DiskSource::Volume { pool: p, volume: v, .. }
                        if p == pool && v == volume)
                })
            })
            .filter(|def| {
                inner.runs.get(&def.name).is_some_and(|r| r.state.is_active())
                    || self.has_saved_state(&def.name)
            })
            .map(|def| def.name.to_string())
            .collect();
        (inner, users)
    }
}
