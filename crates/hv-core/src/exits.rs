//! What each kind of vCPU exit means for the VM.

use kvm_bindings::{
    KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::VcpuFd;

use crate::lifecycle::{CrashReason, ExitReason};
use crate::quirks::Emulated;
use crate::vcpu::Exit;
use crate::vm::Context;

/// What the run loop does after an exit.
pub(crate) enum Step {
    /// Run the vCPU again.
    Continue,
    /// KVM_RUN was interrupted by a kick: clear immediate_exit and look at the VM state.
    Interrupted,
    /// The vCPU halted with no in-kernel irqchip to wake it.
    Halted,
    /// KVM reported an internal error: look at kvm_run for details.
    InternalError,
    /// The guest crashed.
    Crash(CrashReason),
    /// The VM stops for this reason.
    Stop(ExitReason),
}

/// Classifies an exit, dispatching I/O to the buses.
pub(crate) fn handle(ctx: &Context, exit: Exit<'_>) -> Step {
    match exit {
        Exit::IoIn(port, data) => {
            ctx.pio.read(u64::from(port), data);
            Step::Continue
        }
        Exit::IoOut(port, data) => {
            ctx.pio.write(u64::from(port), data);
            Step::Continue
        }
        Exit::MmioRead(addr, data) => {
            ctx.mmio.read(addr, data);
            Step::Continue
        }
        Exit::MmioWrite(addr, data) => {
            ctx.mmio.write(addr, data);
            Step::Continue
        }
        Exit::Hlt => Step::Halted,
        Exit::Shutdown => Step::Crash(CrashReason::TripleFault),
        Exit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Step::Stop(ExitReason::PoweredOff),
            KVM_SYSTEM_EVENT_RESET => Step::Stop(ExitReason::Reset),
            KVM_SYSTEM_EVENT_CRASH => Step::Crash(CrashReason::GuestPanic),
            other => Step::Crash(CrashReason::UnexpectedExit(format!("system event {other}"))),
        },
        Exit::FailEntry(reason, _cpu) => Step::Crash(CrashReason::FailEntry { reason }),
        Exit::InternalError => Step::InternalError,
        Exit::Intr | Exit::IrqWindowOpen => Step::Continue,
        Exit::IoapicEoi(_) => Step::Continue,
        other => Step::Crash(CrashReason::UnexpectedExit(format!("{other:?}"))),
    }
}

/// Looks at an internal error: emulation failures go to the quirk layer; returns the crash
/// reason when the VM must stop.
pub(crate) fn internal_error(ctx: &Context, fd: &mut VcpuFd) -> Option<CrashReason> {
    let run = fd.get_kvm_run();
    // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so the `internal` member of the
    // union is the one KVM filled; reading plain integers from it is always defined.
    let (suberror, ndata) =
        unsafe { (run.__bindgen_anon_1.internal.suberror, run.__bindgen_anon_1.internal.ndata) };
    if suberror != KVM_INTERNAL_ERROR_EMULATION {
        return Some(CrashReason::InternalError { suberror });
    }
    // SAFETY: for KVM_INTERNAL_ERROR_EMULATION KVM fills `emulation_failure`, which overlays
    // `internal`; all its fields are plain integers.
    let ef = unsafe { run.__bindgen_anon_1.emulation_failure };
    let insn: Vec<u8> = if ndata >= 2
        && ef.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
    {
        // SAFETY: the flag says KVM filled the instruction-bytes member of the inner union.
        let bytes = unsafe { ef.__bindgen_anon_1.__bindgen_anon_1 };
        let n = usize::from(bytes.insn_size).min(bytes.insn_bytes.len());
        bytes.insn_bytes[..n].to_vec()
    } else {
        Vec::new()
    };
    match ctx.quirks.emulation_failure(fd, &insn) {
        Emulated::Handled => None,
        Emulated::Unhandled => Some(CrashReason::EmulationFailure { insn }),
    }
}
