//! The state directory's files: JSON written crash-safely (a temporary file in the same
//! directory, fsync, rename, fsync of the directory), and a lock file that serialises changes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{NetworkError, Result};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError + '_ {
    move |source| NetworkError::Io { path: path.to_path_buf(), source }
}

/// Writes `value` as JSON to `path` so that a crash leaves either the old or the new file.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut text = serde_json::to_vec_pretty(value)
        .map_err(|e| NetworkError::Corrupt { path: path.to_path_buf(), source: e })?;
    text.push(b'\n');
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        NetworkError::Io { path: path.to_path_buf(), source: e }
    })
}

/// Reads JSON from `path`; `Ok(None)` when the file does not exist.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| NetworkError::Corrupt { path: path.to_path_buf(), source })
}

/// Removes a file; a missing file is fine.
pub(crate) fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// An exclusive lock on the networks directory, held while a change is made.
pub(crate) struct DirLock {
    _lock: Flock<File>,
}

impl DirLock {
    pub(crate) fn take(dir: &Path) -> Result<DirLock> {
        let path: PathBuf = dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| NetworkError::Io { path, source: e.into() })?;
        Ok(DirLock { _lock: lock })
    }
}
