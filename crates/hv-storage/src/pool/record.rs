//! A dir pool's record of its volumes' formats (`.hv-volumes.json` in the pool directory).
//!
//! A volume's format is recorded when hv creates it, or when the pool first sees a file placed
//! by hand (at `pool-start`, `pool-refresh`, or the first operation naming it), and is used
//! from then on: a recorded raw volume stays raw whatever a guest later writes into it, so a
//! qcow2 header a guest wrote never makes the host open a backing file. The record is written
//! crash-safely (temporary file, fsync, rename, fsync of the directory), and before a new
//! volume's file is linked into place, so no volume exists unrecorded after a crash.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{io_err, PoolError, Result};
use super::persist::write_atomic;
use super::volume::VolFormat;

/// The record's file name inside the pool directory (hidden: never a volume name).
pub const RECORD_FILE: &str = ".hv-volumes.json";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    version: u32,
    volumes: BTreeMap<String, VolFormat>,
}

/// The recorded formats of a dir pool's volumes, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    volumes: BTreeMap<String, VolFormat>,
}

fn path_in(dir: &Path) -> PathBuf {
    dir.join(RECORD_FILE)
}

impl Records {
    /// Reads the record of the pool in `dir` (empty when there is none yet).
    pub fn load(dir: &Path) -> Result<Records> {
        let path = path_in(dir);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Records::default()),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let on_disk: OnDisk = serde_json::from_slice(&data)
            .map_err(|source| PoolError::StateFile { path: path.clone(), source })?;
        Ok(Records { volumes: on_disk.volumes })
    }

    /// Writes the record durably.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let on_disk = OnDisk { version: 1, volumes: self.volumes.clone() };
        let json = serde_json::to_vec_pretty(&on_disk).expect("a map of names serialises");
        write_atomic(&path_in(dir), &json)
    }

    /// The recorded format of `name`.
    pub fn get(&self, name: &str) -> Option<VolFormat> {
        self.volumes.get(name).copied()
    }

    /// Records `name` as `format`; true when that changed anything.
    pub fn set(&mut self, name: &str, format: VolFormat) -> bool {
        self.volumes.insert(name.to_string(), format) != Some(format)
    }

    /// Forgets `name`; true when it was recorded.
    pub fn remove(&mut self, name: &str) -> bool {
        self.volumes.remove(name).is_some()
    }

    /// Forgets every volume whose file is gone; true when any was.
    pub fn retain_existing(&mut self, dir: &Path) -> bool {
        let before = self.volumes.len();
        self.volumes.retain(|name, _| fs::symlink_metadata(dir.join(name)).is_ok());
        before != self.volumes.len()
    }

    /// The names and formats, for a [`crate::block::Confinement::allow_pool`].
    pub fn to_map(&self) -> HashMap<String, VolFormat> {
        self.volumes.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}
