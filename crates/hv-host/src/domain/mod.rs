//! Domains: persistent VM definitions in libvirt's model.
//!
//! A [`DomainDef`] is what `virsh define` stores: a name and UUID, memory and vCPUs, a kernel to
//! boot directly, disks from pools or paths with an explicit format, NICs on hv networks or
//! bridges, where the serial console goes, and what to do on power-off, reboot and crash. It is
//! built from libvirt domain XML by [`DomainDef::from_xml`] (the subset hv honours; anything else
//! is an error naming the element) and written back by [`DomainDef::to_xml`].

mod state;
mod store;
mod xml;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use hv_net::MacAddr;
use uuid::Uuid;

pub use state::{DomainOp, DomainState, StateReason, TransitionError};
pub use store::{Defined, DomainStore};
pub use xml::{BackingLayer, XmlError};

/// The longest domain name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A domain's name: 1-64 characters of `[A-Za-z0-9._+-]`, not starting with `.` or `-`.
///
/// Names become file names in the host's state directory, so nothing that could leave it
/// (`/`, `..`) or confuse a shell is accepted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainName(String);

/// Errors in a domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid domain name {name:?}: {reason}")]
pub struct NameError {
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for DomainName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let err = |reason| Err(NameError { name: s.to_string(), reason });
        if s.is_empty() {
            return err("empty");
        }
        if s.len() > MAX_NAME_LEN {
            return err("longer than 64 characters");
        }
        if s.starts_with('.') || s.starts_with('-') {
            return err("starts with '.' or '-'");
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+')) {
            return err("only letters, digits and . _ - + are allowed");
        }
        Ok(DomainName(s.to_string()))
    }
}

impl DomainName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A disk image format, always explicit: hv never guesses a domain disk's format from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DiskFormat {
    /// The bytes as they are.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
}

impl DiskFormat {
    /// libvirt's name (`<driver type='...'/>`).
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a disk's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskSource {
    /// A file or block device by absolute path, in the format given.
    File {
        /// The absolute path.
        path: PathBuf,
        /// Its format (`<driver type=...>`; raw when the XML gives none, as libvirt assumes).
        format: DiskFormat,
    },
    /// A volume of a storage pool, opened with the format the pool recorded for it.
    Volume {
        /// The pool's name.
        pool: String,
        /// The volume's name in that pool.
        volume: String,
        /// A format the XML insisted on; it must agree with the pool's record at start.
        format: Option<DiskFormat>,
    },
}

/// One disk of a domain (a virtio-blk device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskDef {
    /// Where the bytes are.
    pub source: DiskSource,
    /// The guest-side name (`vda`, `vdb`, ...).
    pub target: String,
    /// The guest may not write.
    pub read_only: bool,
}

/// What a NIC is plugged into.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InterfaceSource {
    /// An hv network by name: a TAP on its bridge with port security on.
    Network(String),
    /// A host bridge by name: a TAP on it.
    Bridge(String),
}

/// One NIC of a domain (a virtio-net device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceDef {
    /// What it is plugged into.
    pub source: InterfaceSource,
    /// Its MAC address (generated in libvirt's `52:54:00` range when the XML gives none).
    pub mac: MacAddr,
}

/// Where the serial console (COM1) goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SerialDef {
    /// No serial port output kept.
    #[default]
    None,
    /// Appended to a file on the host.
    File(PathBuf),
    /// A pseudo-terminal (`virsh console` attaches to it).
    Pty,
}

/// What happens when the guest powers off, reboots or crashes (libvirt's `on_*` elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LifecycleAction {
    /// The domain stops (`shut off`).
    Destroy,
    /// The domain starts again.
    Restart,
    /// The domain is kept in its final state (`crashed` after a crash) for inspection.
    Preserve,
}

impl LifecycleAction {
    /// libvirt's name.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleAction::Destroy => "destroy",
            LifecycleAction::Restart => "restart",
            LifecycleAction::Preserve => "preserve",
        }
    }
}

/// A domain's kernel, booted directly (`<os><kernel>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsDef {
    /// The kernel image (bzImage, ELF or PVH ELF), an absolute path.
    pub kernel: PathBuf,
    /// An initramfs, an absolute path.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: Option<String>,
}

/// A persistent domain definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainDef {
    /// Its name, unique on the host.
    pub name: DomainName,
    /// Its UUID, unique on the host (generated when the XML gives none).
    pub uuid: Uuid,
    /// Free text (`<description>`), kept and written back.
    pub description: Option<String>,
    /// Guest RAM in KiB (libvirt's `<memory>`).
    pub memory_kib: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// The kernel to boot.
    pub os: OsDef,
    /// Disks, in target order.
    pub disks: Vec<DiskDef>,
    /// NICs.
    pub interfaces: Vec<InterfaceDef>,
    /// The serial console.
    pub serial: SerialDef,
    /// On guest power-off.
    pub on_poweroff: LifecycleAction,
    /// On guest reboot.
    pub on_reboot: LifecycleAction,
    /// On guest crash.
    pub on_crash: LifecycleAction,
}

/// The most vCPUs a domain may have.
pub const MAX_VCPUS: u32 = 254;

/// Errors in a domain definition (the XML parsed but says something hv cannot honour).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefError {
    /// A bad name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A value out of range or malformed.
    #[error("invalid {what}: {value:?} ({reason})")]
    Invalid {
        /// Which element or attribute.
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Something libvirt has but hv cannot honour.
    #[error("unsupported {what}: {value:?} (hv supports {supported})")]
    Unsupported {
        /// Which element or attribute.
        what: &'static str,
        /// The value given.
        value: String,
        /// What hv supports instead.
        supported: &'static str,
    },
    /// A required element is missing.
    #[error("missing {0}")]
    Missing(&'static str),
}

impl DomainDef {
    /// Checks the cross-field rules a parsed definition must meet.
    pub fn validate(&self) -> Result<(), DefError> {
        if self.memory_kib < 1024 {
            return Err(DefError::Invalid {
                what: "memory",
                value: format!("{} KiB", self.memory_kib),
                reason: "at least 1 MiB",
            });
        }
        if !self.memory_kib.is_multiple_of(1024) {
            return Err(DefError::Invalid {
                what: "memory",
                value: format!("{} KiB", self.memory_kib),
                reason: "must be a whole number of MiB",
            });
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(DefError::Invalid {
                what: "vcpu",
                value: self.vcpus.to_string(),
                reason: "between 1 and 254",
            });
        }
        check_abs("os/kernel", &self.os.kernel)?;
        if let Some(initrd) = &self.os.initrd {
            check_abs("os/initrd", initrd)?;
        }
        let mut targets = std::collections::HashSet::new();
        for d in &self.disks {
            if !is_virtio_target(&d.target) {
                return Err(DefError::Invalid {
                    what: "disk target dev",
                    value: d.target.clone(),
                    reason: "a virtio name vda..vdz",
                });
            }
            if !targets.insert(d.target.as_str()) {
                return Err(DefError::Invalid {
                    what: "disk target dev",
                    value: d.target.clone(),
                    reason: "used by two disks",
                });
            }
            if let DiskSource::File { path, .. } = &d.source {
                check_abs("disk source file", path)?;
            }
        }
        let mut macs = std::collections::HashSet::new();
        for i in &self.interfaces {
            if i.mac.is_multicast() {
                return Err(DefError::Invalid {
                    what: "interface mac address",
                    value: i.mac.to_string(),
                    reason: "a multicast address cannot be a NIC's own",
                });
            }
            if !macs.insert(i.mac) {
                return Err(DefError::Invalid {
                    what: "interface mac address",
                    value: i.mac.to_string(),
                    reason: "used by two interfaces",
                });
            }
        }
        if let SerialDef::File(p) = &self.serial {
            check_abs("serial source path", p)?;
        }
        Ok(())
    }

    /// Guest RAM in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.memory_kib / 1024
    }
}

fn check_abs(what: &'static str, p: &std::path::Path) -> Result<(), DefError> {
    if !p.is_absolute() {
        return Err(DefError::Invalid {
            what,
            value: p.display().to_string(),
            reason: "must be an absolute path",
        });
    }
    Ok(())
}

fn is_virtio_target(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 3 && b.starts_with(b"vd") && b[2].is_ascii_lowercase()
}

/// A MAC address in libvirt's locally administered `52:54:00` range with random low bytes.
pub fn random_mac() -> MacAddr {
    let r = Uuid::new_v4();
    let b = r.as_bytes();
    MacAddr([0x52, 0x54, 0x00, b[0], b[1], b[2]])
}
