//! The PVM quirk layer.
//!
//! On a PVM host (`kvm_pvm`), guest kernel mode runs in KVM's instruction emulator, which
//! lacks some instructions a Linux kernel executes. Each ends `KVM_RUN` with
//! `KVM_EXIT_INTERNAL_ERROR` / `KVM_INTERNAL_ERROR_EMULATION` and the instruction bytes:
//!
//! - `int3` (the alternatives self-test, once per boot): complete it — advance RIP past it and
//!   inject #BP, exactly what the CPU would have done.
//! - `fwait` and `ldmxcsr`: skip them (no x87 exception is pending in an emulated kernel, and
//!   the kernel only loads the default MXCSR).
//! - `xrstor`, `clac`, `lock cmpxchg16b`, `popcnt`, SSE4/AES moves in kernel FPU sections
//!   and other extensions the emulator lacks (`rdrand`, `movbe`, BMI, `rdfsbase`): cannot be
//!   completed here, so the guest is told not to use them on its command line (`noxsave`,
//!   `clearcpuid=...`), since `KVM_SET_CPUID2` has no effect on PVM.
//!
//! The emulated kernel is ~2000x slower than native, so the soft-lockup and RCU stall
//! detectors are silenced too: their warnings would be noise, not faults.
//!
//! Any other failure ends the VM as crashed with the bytes in the outcome.

use kvm_bindings::kvm_vcpu_events;
use kvm_ioctls::VcpuFd;

use super::Emulated;

/// What a Linux guest's command line gets on PVM: hide what the emulator cannot run, and keep
/// the soft-lockup detector quiet while the emulated kernel is slow.
pub const CMDLINE: &str = "noxsave \
    clearcpuid=smap,cx16,pclmulqdq,aes,sse4_1,sse4_2,ssse3,avx,avx2,popcnt,rdrand,rdseed,movbe,\
    bmi1,bmi2,fsgsbase nosoftlockup rcupdate.rcu_cpu_stall_suppress=1";

const BP_VECTOR: u8 = 3;

/// What to do with an instruction, from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Advance RIP by `len` and inject #BP (a completed `int3`).
    CompleteInt3,
    /// Advance RIP by `len` without executing the instruction.
    Skip(usize),
    /// Not ours.
    Unhandled,
}

/// Decides what to do with the instruction in `insn`.
pub fn classify(insn: &[u8]) -> Action {
    // Legacy prefixes and REX before the opcode.
    let mut i = 0;
    while i < insn.len() && i < 14 {
        match insn[i] {
            0x66 | 0x67 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 => i += 1,
            0x40..=0x4f => i += 1,
            _ => break,
        }
    }
    match insn.get(i..) {
        Some([0xcc, ..]) if i == 0 => Action::CompleteInt3,
        Some([0x9b, ..]) => Action::Skip(i + 1),
        // ldmxcsr m32: 0f ae /2 with a memory operand.
        Some([0x0f, 0xae, modrm, rest @ ..]) if (modrm >> 3) & 7 == 2 && modrm >> 6 != 3 => {
            match modrm_operand_len(*modrm, rest) {
                Some(n) => Action::Skip(i + 3 + n),
                None => Action::Unhandled,
            }
        }
        _ => Action::Unhandled,
    }
}

/// Bytes after the ModRM byte taken by SIB and displacement (64-bit addressing).
fn modrm_operand_len(modrm: u8, rest: &[u8]) -> Option<usize> {
    let md = modrm >> 6;
    let rm = modrm & 7;
    let mut n = 0;
    let mut disp = match md {
        0 if rm == 5 => 4,
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = *rest.first()?;
        n += 1;
        if md == 0 && sib & 7 == 5 {
            disp = 4;
        }
    }
    Some(n + disp)
}

/// Applies the quirk for a failed instruction.
pub fn emulation_failure(vcpu: &VcpuFd, insn: &[u8]) -> Emulated {
    let action = classify(insn);
    let advance = match action {
        Action::CompleteInt3 => 1,
        Action::Skip(n) => n as u64,
        Action::Unhandled => return Emulated::Unhandled,
    };
    let Ok(mut regs) = vcpu.get_regs() else { return Emulated::Unhandled };
    regs.rip = regs.rip.wrapping_add(advance);
    if vcpu.set_regs(&regs).is_err() {
        return Emulated::Unhandled;
    }
    if action == Action::CompleteInt3 {
        let Ok(mut events) = vcpu.get_vcpu_events() else { return Emulated::Unhandled };
        events.exception.injected = 1;
        events.exception.nr = BP_VECTOR;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        events.exception.pending = 0;
        let events: kvm_vcpu_events = events;
        if vcpu.set_vcpu_events(&events).is_err() {
            return Emulated::Unhandled;
        }
        log::debug!("pvm: completed int3 at {:#x}", regs.rip - 1);
    } else {
        log::debug!("pvm: skipped {advance}-byte instruction {insn:02x?}");
    }
    Emulated::Handled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_known_instructions() {
        assert_eq!(classify(&[0xcc, 0x90]), Action::CompleteInt3);
        assert_eq!(classify(&[0x9b, 0xdb, 0xe2]), Action::Skip(1));
        // ldmxcsr (%rsp): 0f ae 14 24
        assert_eq!(classify(&[0x0f, 0xae, 0x14, 0x24]), Action::Skip(4));
        // ldmxcsr 0x10(%rbp): 0f ae 55 10
        assert_eq!(classify(&[0x0f, 0xae, 0x55, 0x10]), Action::Skip(4));
        // ldmxcsr rip+disp32: 0f ae 15 xx xx xx xx
        assert_eq!(classify(&[0x0f, 0xae, 0x15, 1, 2, 3, 4]), Action::Skip(7));
        // REX-prefixed ldmxcsr (%r8): 41 0f ae 10
        assert_eq!(classify(&[0x41, 0x0f, 0xae, 0x10]), Action::Skip(4));
        // xrstor (%rdi): 0f ae 2f — not ours.
        assert_eq!(classify(&[0x0f, 0xae, 0x2f]), Action::Unhandled);
        // lock cmpxchg16b
        assert_eq!(classify(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e]), Action::Unhandled);
        assert_eq!(classify(&[]), Action::Unhandled);
        assert_eq!(classify(&[0x66; 20]), Action::Unhandled);
        // SIB with a truncated buffer does not panic.
        assert_eq!(classify(&[0x0f, 0xae, 0x14]), Action::Unhandled);
    }
}
