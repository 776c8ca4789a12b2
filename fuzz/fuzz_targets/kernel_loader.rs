//! Kernel images are user input: loading any bytes as a kernel (ELF vmlinux, PVH ELF, bzImage,
//! with or without a payload hv unpacks itself) must load it inside guest RAM or give a typed
//! error, never panic.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

use hv_core::boot::load_kernel;
use hv_fuzz::{scratch_dir, strict};
use hv_mem::{GuestRam, MemoryConfig};
use libfuzzer_sys::fuzz_target;

const RAM: u64 = 32 << 20;

static PAST_RAM: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let path = scratch_dir().join("kernel");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let ram = GuestRam::new(&MemoryConfig::new(RAM)).expect("guest RAM");
    if let Ok(k) = load_kernel(ram.memory(), &path) {
        hv_fuzz::reached("loaded");
        // Known finding (README, regressions/kernel_loader/elf-memsz-past-ram): hv-core accepts
        // an ELF whose PT_LOAD p_memsz runs past guest RAM and reports that end. Counted, not a
        // crash (unless HV_FUZZ_STRICT=1), until load_kernel refuses it.
        if k.end > RAM {
            assert!(!strict(), "kernel ends past guest RAM: {k:?}");
            let n = PAST_RAM.fetch_add(1, Ordering::Relaxed) + 1;
            hv_fuzz::log_known("kernel ends past guest RAM", n);
        }
    }
});
