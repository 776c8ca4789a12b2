//! The CPUID a vCPU reports: KVM's supported set with the topology fixed up (APIC IDs, logical
//! processor counts, the hypervisor bit).
//!
//! On a PVM host `KVM_SET_CPUID2` has no effect (the guest sees the host's raw CPUID), so
//! features a guest must not use there are hidden through its command line instead, by
//! [`crate::quirks::pvm`].

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Adjusts `cpuid` for vCPU `id` of `count`: one package of `count` single-threaded cores.
pub fn fixup(cpuid: &mut CpuId, id: u8, count: u8) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
                let cores = u32::from(count.max(1) - 1) & 0x3f;
                e.eax = (e.eax & 0x03ff_ffff) | (cores << 26);
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { u32::from(count.max(1) - 1) } else { 0 };
                e.eax = (e.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = u32::from(id);
                match e.index {
                    // SMT level: one thread per core.
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    // Core level: `count` cores; the APIC ID shift covers them.
                    1 => {
                        e.eax = u32::from(count.max(1)).next_power_of_two().trailing_zeros();
                        e.ebx = u32::from(count);
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn sets_apic_id_and_counts() {
        let entries = [
            kvm_cpuid_entry2 { function: 1, ebx: 0xff00_1234, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xb, index: 1, ..Default::default() },
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        fixup(&mut c, 3, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_eq!(s[0].ebx & 0xffff, 0x1234);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(s[1].edx, 3);
        assert_eq!(s[1].ebx, 4);
        assert_eq!(s[1].eax, 2);
    }
}
