//! Disk images are untrusted (a tenant uploads one; a guest can write any bytes into a raw disk
//! that is later probed): probing and opening one must give a typed error, never a panic.
//!
//! imago 0.2.6 panics on a short qcow2 feature-name table; hv-storage catches that panic with
//! `catch_unwind` and returns an error. This target lets exactly that panic unwind (and counts
//! it) and aborts on any other, so a new panic is still reported as a crash. Once hv checks
//! qcow2 headers itself before imago sees them, the allowance can go.
#![no_main]

use hv_fuzz::{allow_known_panics, scratch_dir, IMAGO_FEATURE_TABLE};
use hv_storage::block::{open_disk, DiskFormat, DiskOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: allow_known_panics(&[IMAGO_FEATURE_TABLE]), |data: &[u8]| {
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
