//! Disk images are untrusted (a guest can write any bytes into a raw disk that is later probed):
//! probing and opening one must give a typed error, never a panic.
//!
//! imago 0.2.6 panics on some damaged metadata; hv-storage contains that with `catch_unwind`
//! and returns an error. libFuzzer's panic hook would abort even on a panic that is caught, so
//! this target keeps the default hook: a panic that escapes hv still aborts the run (it cannot
//! unwind through libFuzzer), and is reported as a crash.
#![no_main]

use hv_storage::block::{open_disk, DiskOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: { let _ = std::panic::take_hook(); }, |data: &[u8]| {
    let path = std::env::temp_dir().join(format!("hv-fuzz-image-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = hv_storage::pool::format::probe_path(&path);
    let options = DiskOptions { read_only: true, ..DiskOptions::default() };
    let _ = open_disk(&path, options);
    let _ = std::fs::remove_file(&path);
});
