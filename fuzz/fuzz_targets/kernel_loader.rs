//! Kernel images are user input: loading any bytes as a kernel (ELF vmlinux, PVH ELF, bzImage,
//! with or without a payload hv unpacks itself) must load it inside guest RAM or give a typed
//! error, never panic.
#![no_main]

use hv_core::boot::load_kernel;
use hv_fuzz::scratch_dir;
use hv_mem::{GuestRam, MemoryConfig};
use libfuzzer_sys::fuzz_target;

const RAM: u64 = 32 << 20;

fuzz_target!(|data: &[u8]| {
    let path = scratch_dir().join("kernel");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let ram = GuestRam::new(&MemoryConfig::new(RAM)).expect("guest RAM");
    if let Ok(k) = load_kernel(ram.memory(), &path) {
        hv_fuzz::reached("loaded");
        // Finding F3 (README, regressions/kernel_loader/elf-memsz-past-ram): an ELF whose
        // PT_LOAD ran past guest RAM was accepted with that end.
        assert!(k.end <= RAM, "kernel ends past guest RAM: {k:?}");
    }
});
