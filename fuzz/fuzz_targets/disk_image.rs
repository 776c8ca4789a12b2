//! Disk images are untrusted (a tenant uploads one; a guest can write any bytes into a raw disk
//! that is later probed): probing and opening one must give a typed error, never a panic.
//!
//! Any panic is a crash, even one hv-storage would catch: imago 0.2.6 panics on a short qcow2
//! feature-name table (finding F2 in the README), which hv's own header check now refuses
//! before imago parses it (`regressions/disk_image/`).
#![no_main]

use hv_fuzz::scratch_dir;
use hv_storage::block::{open_disk, DiskFormat, DiskOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch_dir().join("image");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = hv_storage::pool::format::probe_path(&path);
    let options = DiskOptions { read_only: true, ..DiskOptions::default() };
    if open_disk(&path, DiskFormat::Auto, options).is_ok() {
        hv_fuzz::reached("opened");
    }
    let _ = std::fs::remove_file(&path);
});
