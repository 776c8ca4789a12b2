//! VM state: saving a paused VM to a snapshot directory and rebuilding it from one.
//!
//! A snapshot directory holds three files, each written to a temporary name, synced and then
//! renamed into place, the config last (a directory with a config is a whole snapshot):
//!
//! | file | content |
//! |---|---|
//! | `config.json` | [`SnapshotConfig`]: how to rebuild the machine (RAM size, vCPUs, the virtio devices and where their backends are) |
//! | `state.json` | [`MachineState`]: every vCPU ([`vcpu::VcpuState`]), the in-kernel irqchip (PIC master and slave, IOAPIC), the PIT, kvmclock, the legacy devices, each virtio-mmio transport ([`virtio::TransportState`]) with its device's own state |
//! | `memory.bin` | guest RAM, its ranges back to back, exactly [`hv_mem::MemoryLayout::ram_bytes`] long |
//!
//! Both JSON files carry a `version` ([`SNAPSHOT_VERSION`]); another version, a truncated or
//! malformed file, a memory file of the wrong size or a machine this host cannot build are
//! typed [`Error`]s, all found before any vCPU runs.
//!
//! [`Vm::snapshot`](crate::Vm::snapshot) saves a paused VM (virtio devices are quiesced for the
//! save and started again afterwards: see [`virtio`] for what that means for in-flight
//! requests). [`VmBuilder::restore`](crate::VmBuilder::restore) rebuilds it: RAM is the memory
//! file mapped `MAP_PRIVATE` ([`hv_mem::GuestRam::from_file`]), so pages are read from the
//! file when the guest first touches them rather than all up front, as Firecracker restores;
//! [`Vm::memory_source`](crate::Vm::memory_source) reports it. The restored VM is paused;
//! [`Vm::resume`](crate::Vm::resume) goes on.
//!
//! ```no_run
//! # fn main() -> Result<(), hv_core::Error> {
//! use hv_core::VmBuilder;
//! # let vm: hv_core::Vm = todo!();
//! vm.pause()?;
//! vm.snapshot(std::path::Path::new("/var/lib/hv/snap"))?;
//! // Later, in this or another process (virtio devices are rebuilt by the caller from
//! // `SnapshotConfig::load(dir)?.devices` and added to the builder in the same order):
//! let restored = VmBuilder::new().restore(std::path::Path::new("/var/lib/hv/snap"))?;
//! restored.resume()?;
//! # Ok(()) }
//! ```

pub(crate) mod restore;
pub mod vcpu;
pub mod virtio;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::devices::acpi_pm::AcpiPmState;
use crate::devices::cmos::CmosState;
use crate::devices::serial::SerialSnapshot;
pub use vcpu::{VcpuState, VcpuStateError};
pub use virtio::TransportState;

/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// The machine description.
pub const CONFIG_FILE: &str = "config.json";
/// The device and vCPU state.
pub const STATE_FILE: &str = "state.json";
/// Guest RAM.
pub const MEMORY_FILE: &str = "memory.bin";

/// Errors saving or restoring VM state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A snapshot file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot file ends early (cut off while written or copied).
    #[error("{}: truncated ({reason})", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where it ended.
        reason: String,
    },
    /// A snapshot file is not what this version writes.
    #[error("{}: malformed: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A snapshot file of another format version.
    #[error("{}: snapshot format version {found}, this hv reads version {supported}", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it has.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The memory file does not have the size of the snapshot's RAM.
    #[error("{}: {actual} bytes, the snapshot's RAM needs exactly {expected}", path.display())]
    MemorySize {
        /// The memory file.
        path: PathBuf,
        /// Bytes the RAM needs.
        expected: u64,
        /// Bytes in the file.
        actual: u64,
    },
    /// The snapshot describes a machine this host cannot build.
    #[error("this host cannot build the snapshot's machine: {what}: {reason}")]
    Unsatisfiable {
        /// The setting.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The virtio devices given to the builder do not match the snapshot's.
    #[error("virtio device {index}: {reason}")]
    DeviceMismatch {
        /// The device's position.
        index: usize,
        /// What differs.
        reason: String,
    },
    /// The state and the config of a snapshot disagree.
    #[error("snapshot state does not match its config: {0}")]
    Inconsistent(String),
    /// Only a VM with KVM's in-kernel irqchip can be saved.
    #[error("a VM without the in-kernel irqchip cannot be snapshotted")]
    NoIrqchip,
    /// A vCPU's state could not be read or written.
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
    /// A vCPU did not record its state when it parked.
    #[error("vCPU {0} has no saved state (it never ran or has ended)")]
    VcpuMissing(usize),
    /// A VM-level state ioctl failed.
    #[error("{what} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// The errno.
        errno: i32,
    },
    /// A virtio device could not save or restore its state.
    #[error(transparent)]
    Device(#[from] crate::virtio::StateError),
    /// A legacy device's saved state is invalid.
    #[error("bad saved state of the {device}: {reason}")]
    BadDeviceState {
        /// The device.
        device: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// How the kernel was entered (kept so a restored VM reports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryRecord {
    /// PVH at this 32-bit entry.
    Pvh {
        /// The entry address.
        addr: u64,
    },
    /// The Linux 64-bit boot protocol at this entry.
    Linux64 {
        /// The entry address.
        addr: u64,
    },
}

/// Where a virtio device's backend is, so the caller can rebuild it for a restore: disks are
/// reopened by path, TAPs by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceSource {
    /// A virtio-blk disk.
    Block {
        /// The image file or block device.
        path: PathBuf,
        /// Whether the guest may write it.
        read_only: bool,
    },
    /// A virtio-net device on a TAP.
    Tap {
        /// The TAP's name.
        name: String,
        /// The MAC address given to the guest.
        mac: Option<[u8; 6]>,
    },
}

/// A virtio device of the snapshot's machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    /// The virtio device ID.
    pub device_type: u32,
    /// The device's queues' maximum sizes.
    pub queue_max_sizes: Vec<u16>,
    /// Its backend, when the builder was told ([`crate::VmBuilder::virtio_device_from`]).
    pub source: Option<DeviceSource>,
}

/// How to rebuild the snapshot's machine (`config.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Whether RAM asked for transparent huge pages.
    pub transparent_hugepages: bool,
    /// Whether RAM was offered to KSM.
    pub mergeable: bool,
    /// vCPU count.
    pub vcpus: usize,
    /// Whether dirty-page tracking was on.
    pub dirty_tracking: bool,
    /// The command line the guest booted with.
    pub cmdline: String,
    /// How the kernel was entered.
    pub entry: EntryRecord,
    /// The virtio devices, in the order they were added.
    pub devices: Vec<DeviceRecord>,
}

impl SnapshotConfig {
    /// Reads `config.json` from a snapshot directory (version and shape checked).
    pub fn load(dir: &Path) -> Result<Self> {
        load_json(&dir.join(CONFIG_FILE))
    }
}

/// The JSON text of a config, as `config.json` holds it.
pub fn config_json(config: &SnapshotConfig) -> Vec<u8> {
    // A struct of plain fields always serializes.
    serde_json::to_vec(config).unwrap_or_default()
}

/// A device with no state to save (the i8042 answers constants; pvpanic only reports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stateless;

/// The VM-wide KVM state: the in-kernel irqchip, the PIT and kvmclock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KvmVmState {
    /// The master 8259 PIC.
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

/// Everything a paused VM is, apart from RAM (`state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineState {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Irqchip, PIT, clock.
    pub vm: KvmVmState,
    /// Each vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialSnapshot,
    /// The CMOS RTC/NVRAM.
    pub cmos: CmosState,
    /// The i8042.
    pub i8042: Stateless,
    /// The ACPI PM block.
    pub acpi_pm: AcpiPmState,
    /// pvpanic.
    pub pvpanic: Stateless,
    /// Each virtio-mmio transport, in device order.
    pub virtio: Vec<TransportState>,
}

/// Where a VM's RAM came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemorySource {
    /// Allocated at build (a booted VM, or a migration's destination).
    Allocated,
    /// A snapshot's memory file mapped private: pages fault in from it on first touch.
    MappedFile(PathBuf),
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

fn json_error(path: &Path, e: serde_json::Error) -> Error {
    if e.is_eof() {
        Error::Truncated { path: path.to_owned(), reason: e.to_string() }
    } else {
        Error::Malformed { path: path.to_owned(), reason: e.to_string() }
    }
}

/// Parses a versioned JSON document: the version first, so another version's file is a
/// [`Error::Version`] rather than a confusing field error.
pub(crate) fn parse_versioned<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    let v: VersionOnly = serde_json::from_slice(bytes).map_err(|e| json_error(path, e))?;
    if v.version != SNAPSHOT_VERSION {
        return Err(Error::Version {
            path: path.to_owned(),
            found: v.version,
            supported: SNAPSHOT_VERSION,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| json_error(path, e))
}

pub(crate) fn load_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes =
        std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    parse_versioned(path, &bytes)
}

/// Writes `dir/name` crash-safely: a temporary file, synced, renamed into place.
pub(crate) fn write_file(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |source| Error::Io { path: path.clone(), source };
    let mut f = File::create(&tmp).map_err(io)?;
    fill(&mut f).map_err(io)?;
    f.flush().map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(())
}

/// Serializes `value` as JSON into `dir/name` crash-safely.
pub(crate) fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Malformed {
        path: dir.join(name),
        reason: format!("cannot serialize: {e}"),
    })?;
    write_file(dir, name, |f| f.write_all(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_truncation_are_typed() {
        let p = Path::new("x.json");
        let cfg = SnapshotConfig {
            version: SNAPSHOT_VERSION,
            memory_bytes: 1 << 20,
            transparent_hugepages: false,
            mergeable: false,
            vcpus: 1,
            dirty_tracking: false,
            cmdline: String::new(),
            entry: EntryRecord::Pvh { addr: 0x100000 },
            devices: vec![DeviceRecord {
                device_type: 2,
                queue_max_sizes: vec![256],
                source: Some(DeviceSource::Block { path: "/d.img".into(), read_only: false }),
            }],
        };
        let bytes = serde_json::to_vec(&cfg).unwrap();
        assert_eq!(parse_versioned::<SnapshotConfig>(p, &bytes).unwrap(), cfg);
        assert!(matches!(
            parse_versioned::<SnapshotConfig>(p, &bytes[..bytes.len() / 2]),
            Err(Error::Truncated { .. })
        ));
        let other = serde_json::to_vec(&SnapshotConfig { version: 99, ..cfg.clone() }).unwrap();
        assert!(matches!(
            parse_versioned::<SnapshotConfig>(p, &other),
            Err(Error::Version { found: 99, supported: SNAPSHOT_VERSION, .. })
        ));
        assert!(matches!(
            parse_versioned::<SnapshotConfig>(p, b"{\"version\":1,\"memory_bytes\":\"x\"}"),
            Err(Error::Malformed { .. })
        ));
    }
}
