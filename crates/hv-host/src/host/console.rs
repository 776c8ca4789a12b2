//! What the host knows of a domain's serial console: where it is (the pty its VMM made, or
//! the file its output goes to), and `dumpxml`, which names a running domain's pty as libvirt
//! does (`<source path='/dev/pts/N'/>`).

use super::Host;
use crate::console::ConsoleSource;
use crate::domain::{DiskSource, DomainName, SerialDef};
use crate::error::{HostError, Result};
use crate::vmm::VmmApi;

impl Host {
    /// Where an active domain's console is: its VMM's pty (asked of the VMM, which makes a new
    /// one when it restores or receives the VM), or the file its serial output goes to.
    pub async fn console_source(&self, key: &str) -> Result<(DomainName, ConsoleSource)> {
        let inner = self.inner.lock().await;
        let def = inner.store.lookup(key)?;
        let name = def.name.clone();
        if !inner.runs.get(&name).is_some_and(|r| r.state.is_active()) {
            return Err(HostError::NotRunning(name.to_string()));
        }
        let source = match &def.serial {
            SerialDef::Pty => {
                let pty = self.live_pty(&self.api_of(&inner, &name)?).await?;
                ConsoleSource::Pty(pty)
            }
            SerialDef::File(p) => ConsoleSource::Log(p.clone()),
            SerialDef::None => ConsoleSource::Log(self.console_log(&name)),
        };
        Ok((name, source))
    }

    async fn live_pty(&self, api: &VmmApi) -> Result<std::path::PathBuf> {
        let info = api.info().await.map_err(|e| HostError::Vmm(e.to_string()))?;
        info.pty()
            .map(|p| p.to_path_buf())
            .ok_or_else(|| HostError::Vmm("the VMM reports no pty for the serial port".into()))
    }

    /// `dumpxml`: the definition, with a running domain's pty named in its serial and console.
    pub async fn dumpxml(&self, key: &str) -> Result<String> {
        let inner = self.inner.lock().await;
        let def = inner.store.lookup(key)?;
        let active = inner.runs.get(&def.name).is_some_and(|r| r.state.is_active());
        let pty = match (&def.serial, active) {
            (SerialDef::Pty, true) => match self.api_of(&inner, &def.name) {
                // A VMM that cannot answer just now leaves the path out, as for a stopped one.
                Ok(api) => self.live_pty(&api).await.ok(),
                Err(_) => None,
            },
            _ => None,
        };
        // Each disk's backing chain, read from its image headers, as libvirt shows it.
        let chains: Vec<_> = def
            .disks
            .iter()
            .map(|d| {
                let path = match &d.source {
                    DiskSource::File { path, .. } => Some(path.clone()),
                    DiskSource::Volume { pool, volume, .. } => {
                        match crate::storage::volume_for_vm(&self.cfg.state_dir, pool, volume) {
                            Ok(crate::storage::VmVolume::File { path, .. }) => Some(path),
                            // A logical volume is raw: no chain.
                            _ => None,
                        }
                    }
                };
                path.map(|p| crate::storage::backing_chain(&p)).unwrap_or_default()
            })
            .collect();
        Ok(def.to_xml_with(pty.as_deref(), &chains))
    }
}
