//! Cloud Hypervisor's `VmConfig` and its parts, as serde types.
//!
//! Field names, nesting and defaults follow `vmm/src/api/openapi/cloud-hypervisor.yaml`, so a
//! body written for Cloud Hypervisor parses here. Fields of that schema hv cannot honour
//! (vhost-user, VFIO, virtio-fs, NUMA, a TPM...) are still accepted when they ask for nothing
//! (absent, `null`, `false`, an empty list); asking for them is a [`ConfigError::Unsupported`],
//! never a silent no-op. Fields outside the schema are refused by serde, so a typo is an error
//! too. [`VmConfig::validate`] checks the rest before anything is opened.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod validate;

/// Why a `VmConfig` cannot be used (an HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A field asks for something hv does not do.
    #[error("{field}: {what} is not supported by hv")]
    Unsupported {
        /// The field, as a JSON path.
        field: String,
        /// What it asked for.
        what: String,
    },
    /// A field has a value outside what it allows.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as a JSON path.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), reason: reason.into() }
}

fn unsupported(field: impl Into<String>, what: impl Into<String>) -> ConfigError {
    ConfigError::Unsupported { field: field.into(), what: what.into() }
}

/// True for a JSON value that asks for nothing: null, false, 0, "", or a list or object of
/// such values (Cloud Hypervisor's clients send `{"amx": false}` and the like for defaults).
fn asks_nothing(v: &Option<Value>) -> bool {
    v.as_ref().is_none_or(is_nothing)
}

fn is_nothing(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Array(a) => a.iter().all(is_nothing),
        Value::Object(o) => o.values().all(is_nothing),
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_u64() == Some(0),
    }
}

fn refuse_set(field: &str, v: &Option<Value>) -> Result<(), ConfigError> {
    if asks_nothing(v) {
        Ok(())
    } else {
        Err(unsupported(field, format!("{}", v.as_ref().unwrap_or(&Value::Null))))
    }
}

fn yes() -> bool {
    true
}

/// A VM's whole configuration (`VmConfig`): what `vm.create` takes and `vm.info` returns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// vCPUs.
    #[serde(default)]
    pub cpus: CpusConfig,
    /// Guest RAM.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// What to boot.
    pub payload: PayloadConfig,
    /// virtio-blk disks, in order (the first is the guest's `vda`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    /// virtio-net NICs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<NetConfig>>,
    /// The 8250 serial port (COM1).
    #[serde(default = "ConsoleConfig::serial_default")]
    pub serial: ConsoleConfig,
    /// The virtio console: hv has none, so only `Off` is accepted.
    #[serde(default = "ConsoleConfig::off")]
    pub console: ConsoleConfig,
    /// A paravirtual panic device: hv-core always has one at port 0x505.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvpanic: Option<bool>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub rate_limit_groups: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub rng: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub balloon: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub fs: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub generic_vhost_user: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub pmem: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub debug_console: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub devices: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub user_devices: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub vdpa: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub vsock: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub numa: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub iommu: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub watchdog: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub rtc: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub pci_segments: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub platform: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub tpm: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub landlock_enable: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub landlock_rules: Option<Value>,
}

/// `CpusConfig`: how many vCPUs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    /// vCPUs at boot.
    pub boot_vcpus: u32,
    /// vCPUs the VM may grow to: hv has no CPU hot-plug, so it must equal `boot_vcpus`.
    pub max_vcpus: u32,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub topology: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub kvm_hyperv: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub max_phys_bits: Option<Value>,
    /// Accepted either way: hv never exposes nested virtualization it cannot offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub affinity: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub features: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub core_scheduling: Option<Value>,
}

impl Default for CpusConfig {
    fn default() -> Self {
        Self {
            boot_vcpus: 1,
            max_vcpus: 1,
            topology: None,
            kvm_hyperv: None,
            max_phys_bits: None,
            nested: None,
            affinity: None,
            features: None,
            core_scheduling: None,
        }
    }
}

/// `MemoryConfig`: guest RAM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Bytes.
    pub size: u64,
    /// Offer the pages to KSM (`MADV_MERGEABLE`).
    #[serde(default)]
    pub mergeable: bool,
    /// Back RAM with a memfd mapped shared.
    #[serde(default)]
    pub shared: bool,
    /// Back RAM with hugetlb pages.
    #[serde(default)]
    pub hugepages: bool,
    /// The huge page size in bytes (2 MiB or 1 GiB; 2 MiB when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    /// Ask for transparent huge pages (Cloud Hypervisor's default: on).
    #[serde(default = "yes")]
    pub thp: bool,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub hotplug_size: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub hotplugged_size: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub hotplug_method: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub prefault: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub reserve: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub zones: Option<Value>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            size: 512 << 20,
            mergeable: false,
            shared: false,
            hugepages: false,
            hugepage_size: None,
            thp: true,
            hotplug_size: None,
            hotplugged_size: None,
            hotplug_method: None,
            prefault: None,
            reserve: None,
            zones: None,
        }
    }
}

/// `PayloadConfig`: the kernel to boot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// A bzImage, an ELF vmlinux or a PVH ELF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// The kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// An initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// Firmware: hv boots kernels directly, so refused when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    /// An IGVM file: refused when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub igvm: Option<PathBuf>,
    /// Confidential-computing host data: refused when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
}

/// `ImageType`: a disk's format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    /// Bytes as they are (the default: hv never probes a format from guest-writable bytes).
    #[default]
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// A fixed VHD: refused.
    FixedVhd,
    /// VHDX: refused.
    Vhdx,
    /// "Probe it": refused, since a guest can write any header into a raw disk.
    Unknown,
}

/// `DiskConfig`: a virtio-blk disk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The image file or block device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Refuse guest writes.
    #[serde(default)]
    pub readonly: bool,
    /// Bypass the host page cache (O_DIRECT).
    #[serde(default)]
    pub direct: bool,
    /// The image format (raw when absent).
    #[serde(default)]
    pub image_type: ImageType,
    /// Request queues (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u16>,
    /// Queue size: hv's device offers its own maximum and the driver picks; accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u16>,
    /// The device's name in `vm.counters` (`_disk<N>` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The GET_ID serial (the id, or `hv-disk<N>`, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub iommu: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub vhost_user: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub vhost_socket: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub rate_limiter_config: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub pci_segment: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub pci_device_id: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub rate_limit_group: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub queue_affinity: Option<Value>,
    /// Whether a qcow2 image may open its backing file (Cloud Hypervisor's field; default
    /// false). hv confines the chain: every backing file must be named in the image that uses
    /// it, lie directly in the directory of this disk's image (no `..`, symlinks resolved),
    /// with a stated format, at most [`hv_storage::block::open::MAX_CHAIN_DEPTH`] deep and
    /// without loops. When false, a qcow2 with a backing file does not open.
    #[serde(default)]
    pub backing_files: bool,
    /// Accepted either way: sparseness is the image file's business.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub lock_granularity: Option<Value>,
    /// hv's extension for a logical volume (no device-mapper: there is no `/dev/VG/LV` to
    /// open): the volume's extents, in order from disk byte 0, each a range of a physical
    /// volume (a file or block device) given by absolute path. With it, `path` is the volume's
    /// name as the host calls it (libvirt's `/dev/VG/LV` target path) and is shown in
    /// `vm.info` and logs but never opened; the format is raw. At most
    /// [`MAX_DISK_SEGMENTS`] extents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<DiskSegment>>,
}

/// The most extents a [`DiskConfig::segments`] list may have.
pub const MAX_DISK_SEGMENTS: usize = 4096;

/// One extent of a logical-volume disk ([`DiskConfig::segments`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSegment {
    /// The physical volume: an absolute path to a file or block device.
    pub path: PathBuf,
    /// Where the extent starts in the physical volume, in bytes.
    pub offset: u64,
    /// Its length in bytes (not zero).
    pub length: u64,
}

/// Cloud Hypervisor's default host address for a TAP it creates, which its own clients send.
pub const DEFAULT_TAP_IP: &str = "192.168.249.1";
/// Cloud Hypervisor's default host netmask for a TAP it creates.
pub const DEFAULT_TAP_MASK: &str = "255.255.255.0";

/// `NetConfig`: a virtio-net NIC on a host TAP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The TAP's name: opened if it exists, created otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// The guest's MAC (made up when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Queues, RX and TX counted separately (2 = one pair, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u16>,
    /// Queue size: accepted, the driver picks up to the device's maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u16>,
    /// The device's name in `vm.counters` (`_net<N>` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A host address for the TAP: hv does not configure host addresses, so only Cloud
    /// Hypervisor's default (which its clients always send) is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The TAP's host netmask; as `ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// Offloads are negotiated with the guest; accepted either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_tso: Option<bool>,
    /// As `offload_tso`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_ufo: Option<bool>,
    /// As `offload_tso`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_csum: Option<bool>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub host_mac: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub mtu: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub iommu: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub vhost_user: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub vhost_socket: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub vhost_mode: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub pci_segment: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub pci_device_id: Option<Value>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    /// Cloud Hypervisor's field of this name: refused when it asks for something.
    pub rate_limiter_config: Option<Value>,
}

/// `ConsoleMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    /// No output.
    Off,
    /// A pseudo-terminal (see [`crate::console`]); `file` then names it in `vm.info`.
    Pty,
    /// The process's standard output.
    Tty,
    /// A file.
    File,
    /// A Unix socket at `socket`, one client at a time (see [`crate::console`]).
    Socket,
    /// Output discarded.
    Null,
}

/// `SerialConfig` / `ConsoleConfig`: where a console's output goes (`Off` by default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The mode.
    pub mode: ConsoleMode,
    /// The file, for `File`; for `Pty`, the pty's terminal end (`/dev/pts/N`) once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The socket, for `Socket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Cloud Hypervisor's console fields hv does not implement, refused when set.
    #[serde(default, skip_serializing_if = "asks_nothing")]
    pub iommu: Option<Value>,
    /// Ignored: the console's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "asks_nothing")]
    #[allow(missing_docs)]
    pub pci_segment: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub pci_device_id: Option<Value>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self::off()
    }
}

impl ConsoleConfig {
    /// A console in `mode` with no file.
    pub fn mode(mode: ConsoleMode) -> Self {
        Self {
            mode,
            file: None,
            socket: None,
            iommu: None,
            id: None,
            pci_segment: None,
            pci_device_id: None,
        }
    }

    /// Cloud Hypervisor's default serial port: `Null`.
    pub fn serial_default() -> Self {
        Self::mode(ConsoleMode::Null)
    }

    /// `Off`.
    pub fn off() -> Self {
        Self::mode(ConsoleMode::Off)
    }
}

/// The most vCPUs hv-core builds.
pub const MAX_VCPUS: u32 = 254;

impl VmConfig {
    /// A configuration booting `kernel` with Cloud Hypervisor's defaults elsewhere.
    pub fn with_kernel(kernel: impl Into<PathBuf>) -> Self {
        Self {
            payload: PayloadConfig { kernel: Some(kernel.into()), ..Default::default() },
            serial: ConsoleConfig::serial_default(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<VmConfig, String> {
        serde_json::from_str::<VmConfig>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_a_cloud_hypervisor_body_and_fills_its_defaults() {
        let c = parse(
            r#"{"cpus":{"boot_vcpus":2,"max_vcpus":2},"memory":{"size":67108864},
                "payload":{"kernel":"/k","cmdline":"console=ttyS0"},
                "disks":[{"path":"/d.img","readonly":true,"image_type":"Qcow2"}],
                "net":[{"tap":"t0","mac":"52:54:00:00:00:01","ip":"192.168.249.1",
                        "mask":"255.255.255.0","num_queues":2,"queue_size":256}],
                "serial":{"mode":"File","file":"/s.log"},"console":{"mode":"Off"},
                "iommu":false,"rng":null,"fs":[],"platform":{"tdx":false,"oem_strings":[]}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.cpus.boot_vcpus, 2);
        assert!(c.memory.thp);
        assert_eq!(c.disks.as_ref().unwrap()[0].image_type, ImageType::Qcow2);
        assert_eq!(c.serial.mode, ConsoleMode::File);
        // Round trip through vm.info's form (which leaves out fields that ask for nothing).
        let shown = serde_json::to_value(&c).unwrap();
        assert!(shown.get("iommu").is_none() && shown.get("fs").is_none());
        let again: VmConfig = serde_json::from_value(shown.clone()).unwrap();
        again.validate().unwrap();
        assert_eq!(serde_json::to_value(&again).unwrap(), shown);
        let minimal = parse(r#"{"payload":{"kernel":"/k"}}"#).unwrap();
        minimal.validate().unwrap();
        assert_eq!(minimal.serial.mode, ConsoleMode::Null);
        assert_eq!(minimal.disks.unwrap_or_default().len(), 0);
    }

    #[test]
    fn backing_files_is_cloud_hypervisors_bool_off_by_default() {
        let disk = |d: &str| parse(&format!(r#"{{"payload":{{"kernel":"/k"}},"disks":[{d}]}}"#));
        let off = disk(r#"{"path":"/d","image_type":"Qcow2"}"#).unwrap();
        assert!(!off.disks.as_ref().unwrap()[0].backing_files);
        let on = disk(r#"{"path":"/d","image_type":"Qcow2","backing_files":true}"#).unwrap();
        on.validate().unwrap();
        assert!(on.disks.as_ref().unwrap()[0].backing_files);
        // vm.info shows it, as Cloud Hypervisor does, and it reads back.
        let shown = serde_json::to_value(&on).unwrap();
        assert_eq!(shown["disks"][0]["backing_files"], true);
        for bad in [r#""on""#, "1", "null", "{}"] {
            let r = disk(&format!(r#"{{"path":"/d","backing_files":{bad}}}"#));
            assert!(r.is_err(), "backing_files {bad} accepted: {r:?}");
        }
    }
}
