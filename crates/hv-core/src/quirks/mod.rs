//! Host-specific workarounds, switched on by detection. The rest of hv-core never asks which
//! host it runs on: it asks the active [`Quirks`] what to do.

pub mod pvm;

use kvm_ioctls::VcpuFd;

use crate::kvm::HostKind;

/// What a quirk layer did with an instruction KVM could not emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Emulated {
    /// The quirk completed or skipped the instruction; the vCPU can run on.
    Handled,
    /// Nothing to do with it: the VM ends as crashed.
    Unhandled,
}

/// The workarounds for the host hv runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quirks {
    host: HostKind,
}

impl Quirks {
    /// The quirks for `host`.
    pub fn for_host(host: HostKind) -> Self {
        if host == HostKind::Pvm {
            log::info!("KVM is PVM (kvm_pvm): enabling the PVM quirk layer");
        }
        Self { host }
    }

    /// No workarounds at all.
    pub fn none() -> Self {
        Self { host: HostKind::Unknown }
    }

    /// True when some workaround is active.
    pub fn active(&self) -> bool {
        self.host == HostKind::Pvm
    }

    /// Words to append to a Linux guest's command line.
    pub fn cmdline_additions(&self) -> &'static str {
        match self.host {
            HostKind::Pvm => pvm::CMDLINE,
            _ => "",
        }
    }

    /// Tries to complete an instruction the in-kernel emulator failed on. `insn` are the
    /// instruction bytes KVM reported (may be empty).
    pub fn emulation_failure(&self, vcpu: &VcpuFd, insn: &[u8]) -> Emulated {
        match self.host {
            HostKind::Pvm => pvm::emulation_failure(vcpu, insn),
            _ => Emulated::Unhandled,
        }
    }
}
