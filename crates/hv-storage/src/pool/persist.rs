//! Crash-safe small files: write a temporary file, fsync it, rename it over the old one, fsync
//! the directory. A reader sees the old content or the new, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::error::{io_err, Result};
use super::failpoint;

/// Replaces `path` with `data` atomically and durably.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    failpoint::point("persist.create_tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(data).map_err(io_err("write", &tmp))?;
    failpoint::point("persist.fsync_tmp");
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(f);
    failpoint::point("persist.rename");
    fs::rename(&tmp, path).map_err(io_err("rename into", path))?;
    failpoint::point("persist.fsync_dir");
    sync_dir(dir)
}

/// Removes `path` (if present) durably.
pub fn remove_durable(path: &Path) -> Result<()> {
    failpoint::point("persist.unlink");
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("remove", path)(e)),
    }
    failpoint::point("persist.fsync_dir");
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// fsyncs a directory, making renames and unlinks in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync directory", dir))
}

/// Removes leftover temporary files (`.NAME.tmp.PID`) of writers that crashed.
pub fn clean_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp.") {
            let _ = fs::remove_file(e.path());
        }
    }
}
