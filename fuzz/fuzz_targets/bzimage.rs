//! Kernel images are user input: unpacking a bzImage's payload must never panic or allocate
//! without bound, whatever the setup header and the LZ4 stream claim; what it unpacks is an ELF.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = hv_core::boot::bzimage::setup_header_of(data);
    if let Some(vmlinux) = hv_core::boot::bzimage::extract_vmlinux(data) {
        assert!(header.is_some(), "unpacked a payload without a setup header");
        hv_fuzz::reached("unpacked");
        assert!(vmlinux.starts_with(b"\x7fELF"));
    }
});
