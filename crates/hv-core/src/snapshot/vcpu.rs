//! A vCPU's architectural state as KVM holds it, read on the vCPU's own thread when it parks
//! (pause) and written back on a fresh vCPU before it first runs (restore).
//!
//! What is saved: general registers, special registers, the XSAVE area (x87/SSE/AVX state),
//! XCR0, debug registers, the local APIC page, pending events (exceptions, interrupts, NMIs,
//! SMIs as KVM_GET_VCPU_EVENTS reports them), the MP state, and the value of every MSR in the
//! list KVM reports (`KVM_GET_MSR_INDEX_LIST`), less those this host refuses to read.
//!
//! Nested virtualization state (`KVM_GET_NESTED_STATE`) is not saved: hv never offers VMX or
//! SVM to a guest, and this project's CI host (PVM) answers that ioctl with EINVAL anyway.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Everything a vCPU is, for a snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU index (and APIC ID).
    pub id: u8,
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// The XSAVE area (x87, SSE and extended state).
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The local APIC page (with an in-kernel irqchip).
    pub lapic: Option<kvm_lapic_state>,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// Runnable, halted, waiting for INIT/SIPI...
    pub mp_state: kvm_mp_state,
    /// Every MSR this host lets us read, by index.
    pub msrs: Vec<kvm_msr_entry>,
}

impl Clone for VcpuState {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            regs: self.regs,
            sregs: self.sregs,
            // kvm_xsave ends in a flexible array (unused by KVM_GET_XSAVE), so it is not Clone.
            xsave: kvm_xsave { region: self.xsave.region, ..Default::default() },
            xcrs: self.xcrs,
            debugregs: self.debugregs,
            lapic: self.lapic,
            events: self.events,
            mp_state: self.mp_state,
            msrs: self.msrs.clone(),
        }
    }
}

/// A vCPU ioctl that failed while saving or restoring state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("vCPU {vcpu}: {what} failed: {}", std::io::Error::from_raw_os_error(*errno))]
pub struct VcpuStateError {
    /// The vCPU index.
    pub vcpu: u8,
    /// The ioctl.
    pub what: &'static str,
    /// The errno.
    pub errno: i32,
}

fn err(vcpu: u8, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuStateError {
    move |e| VcpuStateError { vcpu, what, errno: e.errno() }
}

/// Reads every MSR of `indices` this host can read. KVM_GET_MSRS stops at the first MSR it
/// refuses and returns how many it read; that MSR is dropped and the rest read again.
fn read_msrs(fd: &VcpuFd, id: u8, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(256)];
        let entries: Vec<kvm_msr_entry> =
            chunk.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError {
            vcpu: id,
            what: "KVM_GET_MSRS (buffer)",
            errno: 0,
        })?;
        let n = fd.get_msrs(&mut msrs).map_err(err(id, "KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        // Skip the refused MSR (if any), carry on after it.
        rest = &rest[(n + usize::from(n < chunk.len())).min(rest.len())..];
    }
    Ok(out)
}

/// Reads the vCPU's state; `msr_indices` is the host's MSR list.
pub fn capture(
    fd: &VcpuFd,
    id: u8,
    msr_indices: &[u32],
    irqchip: bool,
) -> Result<VcpuState, VcpuStateError> {
    Ok(VcpuState {
        id,
        // MP state first: KVM_GET_MP_STATE may complete pending APIC events into it.
        mp_state: fd.get_mp_state().map_err(err(id, "KVM_GET_MP_STATE"))?,
        regs: fd.get_regs().map_err(err(id, "KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(err(id, "KVM_GET_SREGS"))?,
        xsave: fd.get_xsave().map_err(err(id, "KVM_GET_XSAVE"))?,
        xcrs: fd.get_xcrs().map_err(err(id, "KVM_GET_XCRS"))?,
        debugregs: fd.get_debug_regs().map_err(err(id, "KVM_GET_DEBUGREGS"))?,
        lapic: if irqchip { Some(fd.get_lapic().map_err(err(id, "KVM_GET_LAPIC"))?) } else { None },
        events: fd.get_vcpu_events().map_err(err(id, "KVM_GET_VCPU_EVENTS"))?,
        msrs: read_msrs(fd, id, msr_indices)?,
    })
}

/// Writes `state` into a fresh vCPU (CPUID already set), in the order KVM needs: MSRs and
/// sregs before the LAPIC (its base comes from an MSR), pending events last.
pub fn apply(fd: &VcpuFd, state: &VcpuState) -> Result<(), VcpuStateError> {
    let id = state.id;
    fd.set_mp_state(state.mp_state).map_err(err(id, "KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs).map_err(err(id, "KVM_SET_REGS"))?;
    fd.set_sregs(&state.sregs).map_err(err(id, "KVM_SET_SREGS"))?;
    // SAFETY: the XSAVE area came from KVM_GET_XSAVE of a vCPU with the same CPUID on this
    // kind of host; KVM validates the header and refuses features the vCPU lacks.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(err(id, "KVM_SET_XSAVE"))?;
    fd.set_xcrs(&state.xcrs).map_err(err(id, "KVM_SET_XCRS"))?;
    fd.set_debug_regs(&state.debugregs).map_err(err(id, "KVM_SET_DEBUGREGS"))?;
    let msrs = Msrs::from_entries(&state.msrs).map_err(|_| VcpuStateError {
        vcpu: id,
        what: "KVM_SET_MSRS (too many)",
        errno: 0,
    })?;
    let n = fd.set_msrs(&msrs).map_err(err(id, "KVM_SET_MSRS"))?;
    if n != state.msrs.len() {
        let index = state.msrs.get(n).map_or(0, |m| m.index);
        log::warn!("vCPU {id}: this host refused MSR {index:#x} ({n} of {} set)", state.msrs.len());
        return Err(VcpuStateError { vcpu: id, what: "KVM_SET_MSRS (an MSR refused)", errno: 0 });
    }
    if let Some(lapic) = &state.lapic {
        fd.set_lapic(lapic).map_err(err(id, "KVM_SET_LAPIC"))?;
    }
    fd.set_vcpu_events(&state.events).map_err(err(id, "KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
