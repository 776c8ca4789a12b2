//! vCPUs: their initial state (CPUID, MSRs, FPU, local APIC, boot registers) and the run loop
//! each one runs on its own host thread.
//!
//! vCPUs are plain threads, so a VM may have more vCPUs than the host has cores: the host
//! scheduler time-slices them, and a vCPU the guest halts sleeps inside KVM.

use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::boot::regs::{entry_regs, setup_sregs};
use crate::boot::EntryPoint;
use crate::exits::{self, Step};
use crate::lifecycle::{CrashInfo, CrashReason, ExitReason};
use crate::vm::Context;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A vCPU ioctl failed.
    #[error("vCPU {vcpu}: {what} failed: {source}")]
    Ioctl {
        /// The vCPU index.
        vcpu: u8,
        /// The ioctl.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn ioctl(vcpu: u8, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Ioctl { vcpu, what, source }
}

/// Sets CPUID, MSRs, FPU and (with an in-kernel irqchip) the local APIC's LINT pins.
pub fn configure(fd: &VcpuFd, id: u8, cpuid: &CpuId, irqchip: bool) -> Result<(), Error> {
    fd.set_cpuid2(cpuid).map_err(ioctl(id, "KVM_SET_CPUID2"))?;
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
    .collect();
    // Msrs::from_entries only fails for more entries than the FAM limit, far above these.
    if let Ok(msrs) = Msrs::from_entries(&entries) {
        let set = fd.set_msrs(&msrs).map_err(ioctl(id, "KVM_SET_MSRS"))?;
        if set != entries.len() {
            log::debug!("vCPU {id}: host accepted {set} of {} boot MSRs", entries.len());
        }
    }
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    fd.set_fpu(&fpu).map_err(ioctl(id, "KVM_SET_FPU"))?;
    if irqchip {
        let mut lapic = fd.get_lapic().map_err(ioctl(id, "KVM_GET_LAPIC"))?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let bytes: &mut [u8] = bytemuck_regs(&mut lapic.regs);
            let mut v =
                u32::from_le_bytes([bytes[reg], bytes[reg + 1], bytes[reg + 2], bytes[reg + 3]]);
            v = (v & !0x700) | (mode << 8);
            bytes[reg..reg + 4].copy_from_slice(&v.to_le_bytes());
        }
        fd.set_lapic(&lapic).map_err(ioctl(id, "KVM_SET_LAPIC"))?;
    }
    Ok(())
}

fn bytemuck_regs(regs: &mut [libc::c_char; 1024]) -> &mut [u8] {
    // SAFETY: c_char and u8 have the same size and alignment; the slice covers exactly the
    // array and borrows it mutably for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(regs.as_mut_ptr().cast::<u8>(), regs.len()) }
}

/// Puts the boot vCPU at the kernel's entry point.
pub fn set_boot_state(fd: &VcpuFd, entry: &EntryPoint, boot_info: u64) -> Result<(), Error> {
    let mut sregs: kvm_sregs = fd.get_sregs().map_err(ioctl(0, "KVM_GET_SREGS"))?;
    setup_sregs(&mut sregs, entry);
    fd.set_sregs(&sregs).map_err(ioctl(0, "KVM_SET_SREGS"))?;
    let regs: kvm_regs = entry_regs(entry, boot_info);
    fd.set_regs(&regs).map_err(ioctl(0, "KVM_SET_REGS"))?;
    Ok(())
}

/// Lets another thread kick a vCPU out of `KVM_RUN`: it signals the vCPU's thread, whose
/// handler sets `immediate_exit` in its own `kvm_run` (see [`crate::signal`]).
#[derive(Debug, Default)]
pub struct Kicker {
    thread: Mutex<Option<libc::pthread_t>>,
}

impl Kicker {
    /// Makes the vCPU leave `KVM_RUN` as soon as possible.
    pub fn kick(&self) {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = *thread {
            // SAFETY: the thread is alive while it is recorded here (the vCPU thread clears it,
            // under this lock, before it ends); the signal has a handler installed by
            // crate::signal::install before any vCPU thread starts.
            unsafe { libc::pthread_kill(t, crate::signal::kick_signal()) };
        }
    }
}

/// One vCPU and the VM it belongs to, moved onto its thread by [`run`].
pub struct Vcpu {
    /// Index (and APIC ID).
    pub id: u8,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    pub(crate) ctx: Arc<Context>,
    pub(crate) kicker: Arc<Kicker>,
}

/// The vCPU thread's body: runs until the VM has an outcome (at once when `confined` is false:
/// its seccomp filter could not be installed and the VM is being stopped).
pub(crate) fn run(mut vcpu: Vcpu, confined: bool) {
    {
        let run = vcpu.fd.get_kvm_run();
        crate::signal::set_kick_target(std::ptr::addr_of_mut!(run.immediate_exit));
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        *vcpu.kicker.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    }
    let ctx = vcpu.ctx.clone();
    // However this thread ends, even by a panic in a device model, the VM learns of it and the
    // kicker stops pointing at this thread's kvm_run.
    let _guard = ExitGuard { ctx: &ctx, kicker: &vcpu.kicker, id: vcpu.id };
    if !confined {
        return;
    }
    crate::seccomp::set_owner(Some(Arc::downgrade(&ctx)));
    let snapshot = |fd: &VcpuFd| {
        let full = crate::snapshot::vcpu::capture(fd, vcpu.id, &ctx.msr_list, ctx.irqchip);
        if let Some(slot) =
            ctx.vcpu_states.lock().unwrap_or_else(|e| e.into_inner()).get_mut(usize::from(vcpu.id))
        {
            *slot = Some(full);
        }
        let regs = fd.get_regs().ok().zip(fd.get_sregs().ok());
        if let Some(slot) =
            ctx.snapshots.lock().unwrap_or_else(|e| e.into_inner()).get_mut(usize::from(vcpu.id))
        {
            *slot = regs;
        }
    };
    while ctx.control.gate(|| snapshot(&vcpu.fd)) {
        let step = match vcpu.fd.run() {
            Ok(exit) => exits::handle(&ctx, exit),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Interrupted,
            Err(e) => Step::Stop(ExitReason::Failed { vcpu: vcpu.id, errno: e.errno() }),
        };
        match step {
            Step::Continue => {}
            Step::Interrupted => vcpu.fd.set_kvm_immediate_exit(0),
            Step::Halted => {
                ctx.control.vcpu_halted();
                break;
            }
            Step::InternalError => {
                let reason = exits::internal_error(&ctx, &mut vcpu.fd);
                if let Some(reason) = reason {
                    ctx.control.finish(crash(&vcpu.fd, vcpu.id, reason));
                }
            }
            Step::Crash(reason) => ctx.control.finish(crash(&vcpu.fd, vcpu.id, reason)),
            Step::Stop(reason) => ctx.control.finish(reason),
        }
        // A device model on this thread made a call the vCPU filter forbids: it failed, and
        // the VM ends here.
        if let Some(violation) = crate::seccomp::take_violation() {
            log::error!("vCPU {} made {violation}, which its seccomp filter forbids", vcpu.id);
            let thread = format!("hv-vcpu{}", vcpu.id);
            let reason = CrashReason::SeccompViolation { violation, thread };
            ctx.control.finish(crash(&vcpu.fd, vcpu.id, reason));
        }
    }
}

struct ExitGuard<'a> {
    ctx: &'a Context,
    kicker: &'a Kicker,
    id: u8,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        *self.kicker.thread.lock().unwrap_or_else(|e| e.into_inner()) = None;
        crate::signal::set_kick_target(std::ptr::null_mut());
        if std::thread::panicking() {
            // The panic is what ended the thread; calls the panic machinery made while printing
            // (a backtrace opens files) were refused and are forgotten.
            let _ = crate::seccomp::take_violation();
            self.ctx.control.finish(ExitReason::Panicked { vcpu: self.id });
        }
        self.ctx.control.vcpu_exited();
    }
}

fn crash(fd: &VcpuFd, vcpu: u8, reason: CrashReason) -> ExitReason {
    ExitReason::Crashed(Box::new(CrashInfo {
        vcpu: Some(vcpu),
        reason,
        regs: fd.get_regs().ok(),
        sregs: fd.get_sregs().ok(),
    }))
}

/// Re-exported for exit handling.
pub(crate) type Exit<'a> = VcpuExit<'a>;
