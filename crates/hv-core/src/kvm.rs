//! Opening `/dev/kvm` and learning what kind of host this is.
//!
//! hv probes the device itself, never the `vmx`/`svm` cpuinfo flags: a PVM host (KVM on a
//! paravirtualised vendor module) has neither flag and still runs guests.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// Errors opening or probing KVM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `/dev/kvm` does not exist: KVM is not loaded or not exposed to this container.
    #[error("/dev/kvm does not exist: load the kvm module or pass the device through")]
    Missing,
    /// `/dev/kvm` exists but this process may not open it.
    #[error("no permission to open /dev/kvm (add the user to the kvm group or run as root)")]
    PermissionDenied,
    /// Opening failed for another reason.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] std::io::Error),
    /// The KVM API version is not the stable one (12).
    #[error("unsupported KVM API version {0} (need 12)")]
    ApiVersion(i32),
    /// A capability hv needs is absent.
    #[error("KVM lacks a required capability: {0}")]
    MissingCapability(&'static str),
}

/// What implements KVM on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostKind {
    /// Intel VMX (`kvm_intel`).
    Vmx,
    /// AMD SVM (`kvm_amd`).
    Svm,
    /// PVM (`kvm_pvm`): guest kernel mode runs in an instruction emulator, see
    /// [`crate::quirks::pvm`].
    Pvm,
    /// KVM works but the vendor module is not one we recognise.
    Unknown,
}

impl HostKind {
    /// Detects the vendor module from `/sys/module`.
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/sys/module"))
    }

    fn detect_in(sys_module: &Path) -> Self {
        if sys_module.join("kvm_pvm").exists() {
            HostKind::Pvm
        } else if sys_module.join("kvm_intel").exists() {
            HostKind::Vmx
        } else if sys_module.join("kvm_amd").exists() {
            HostKind::Svm
        } else {
            HostKind::Unknown
        }
    }

    /// True when guest kernel code runs at hardware speed and guest user space works.
    pub fn is_hardware_virt(self) -> bool {
        matches!(self, HostKind::Vmx | HostKind::Svm)
    }
}

/// An open `/dev/kvm` with the capabilities hv relies on checked.
#[derive(Debug)]
pub struct Hypervisor {
    kvm: Kvm,
    host: HostKind,
}

/// Capabilities hv cannot work without.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

impl Hypervisor {
    /// Opens `/dev/kvm` and checks the API version and required capabilities.
    pub fn open() -> Result<Self, Error> {
        Self::open_path(c"/dev/kvm")
    }

    /// Opens a KVM device at another path (a device node passed into a container, say).
    pub fn open_path(path: &std::ffi::CStr) -> Result<Self, Error> {
        let kvm = Kvm::new_with_path(path).map_err(|e| match e.errno() {
            libc::ENOENT => Error::Missing,
            libc::EACCES | libc::EPERM => Error::PermissionDenied,
            _ => Error::Open(std::io::Error::from_raw_os_error(e.errno())),
        })?;
        // A file that is not a KVM device answers the ioctl with an error (-1).
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(Error::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(Error::MissingCapability(name));
            }
        }
        Ok(Self { kvm, host: HostKind::detect() })
    }

    /// The KVM handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// What kind of host this is.
    pub fn host(&self) -> HostKind {
        self.host
    }

    /// Most vCPUs one VM may have.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_vendor_module() {
        let dir = std::env::temp_dir().join(format!("hv-kvm-detect-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kvm")).unwrap();
        assert_eq!(HostKind::detect_in(&dir), HostKind::Unknown);
        std::fs::create_dir_all(dir.join("kvm_intel")).unwrap();
        assert_eq!(HostKind::detect_in(&dir), HostKind::Vmx);
        std::fs::create_dir_all(dir.join("kvm_pvm")).unwrap();
        assert_eq!(HostKind::detect_in(&dir), HostKind::Pvm);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!HostKind::Pvm.is_hardware_virt());
        assert!(HostKind::Svm.is_hardware_virt());
    }

    #[test]
    fn open_errors_say_what_is_wrong() {
        assert!(matches!(Hypervisor::open_path(c"/nonexistent/kvm"), Err(Error::Missing)));
        // A device that is not KVM fails the API-version check.
        assert!(matches!(Hypervisor::open_path(c"/dev/null"), Err(Error::ApiVersion(-1))));
        let msg = Error::PermissionDenied.to_string();
        assert!(msg.contains("kvm group"), "{msg}");
    }
}
