//! hv-core: the hv VMM on KVM.
//!
//! A [`VmBuilder`] validates a machine description (memory, vCPUs, kernel, initrd, command
//! line, devices) and builds a [`Vm`]: guest RAM from `hv-mem`, a KVM VM with the in-kernel
//! irqchip and PIT, the kernel loaded (bzImage, ELF or PVH ELF), ACPI tables, and one vCPU per
//! host thread once started. Exits are dispatched to devices on the PIO and MMIO [`bus`]es;
//! every way a guest can stop ends in a defined [`ExitReason`], never a host panic.
//!
//! ```no_run
//! use hv_core::{console::Capture, VmBuilder};
//! let console = Capture::new();
//! let vm = VmBuilder::new()
//!     .memory_mib(128)
//!     .vcpus(2)
//!     .kernel("vmlinux")
//!     .cmdline("console=ttyS0")
//!     .serial_output(console.clone())
//!     .build()?;
//! vm.start()?;
//! let reason = vm.wait()?;
//! println!("guest stopped: {reason}");
//! # Ok::<(), hv_core::Error>(())
//! ```

pub mod acpi;
pub mod boot;
pub mod bus;
pub mod console;
pub mod cpuid;
pub mod devices;
mod exits;
pub mod kvm;
pub mod lifecycle;
pub mod migration;
pub mod quirks;
pub mod rate_limiter;
pub mod seccomp;
mod signal;
pub mod snapshot;
pub mod vcpu;
pub mod virtio;
pub mod vm;

pub use kvm::{HostKind, Hypervisor};
pub use vm::{CrashInfo, CrashReason, Error, ExitReason, Vm, VmBuilder, VmState};

/// Re-exports so embedders use the same versions as hv-core.
pub use {hv_mem, kvm_bindings, kvm_ioctls, vm_memory, vmm_sys_util};
