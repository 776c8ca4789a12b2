//! Kernel images are user input: unpacking a bzImage's payload must never panic or allocate
//! without bound, whatever the setup header and the LZ4 stream claim.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(vmlinux) = hv_core::boot::bzimage::extract_vmlinux(data) {
        assert!(vmlinux.starts_with(b"\x7fELF"));
    }
    let _ = hv_core::boot::bzimage::setup_header_of(data);
});
