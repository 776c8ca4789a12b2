//! Turns a validated [`VmConfig`] into an hv-core [`VmBuilder`]: guest RAM, the payload, the
//! serial port's output, a virtio-blk device per disk (hv-storage, format explicit) and a
//! virtio-net device per NIC (hv-net, on a TAP by name).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use hv_core::snapshot::DeviceSource;
use hv_core::VmBuilder;
use hv_mem::{Backing, HugePageSize, MemoryConfig as RamConfig};
use hv_net::tap::{Tap, TapError};
use hv_net::virtio_net::{NetBackend, NetConfig as NicConfig, NetHandle, TapBackend, VirtioNet};
use hv_net::MacAddr;
use hv_storage::block::{
    open_disk, BlockBackend, BlockError, Confinement, DiskFormat, DiskOptions, SegmentDisk,
    SegmentPath,
};
use hv_storage::virtio_blk::{BlockConfig, VirtioBlock};

use crate::config::{ConsoleMode, DiskConfig, ImageType, VmConfig};

/// Why a configured device could not be made (an HTTP 500 from `vm.boot`).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A disk image could not be opened.
    #[error("disk {index} ({path}): {source}")]
    Disk {
        /// Its position in `disks`.
        index: usize,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: BlockError,
    },
    /// A TAP could not be opened or created.
    #[error("net {index} (TAP {tap}): {source}")]
    Tap {
        /// Its position in `net`.
        index: usize,
        /// The TAP's name.
        tap: String,
        /// Why.
        #[source]
        source: TapError,
    },
    /// The virtio-net device refused its configuration.
    #[error("net {index}: {reason}")]
    Nic {
        /// Its position in `net`.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The serial output file could not be opened.
    #[error("serial file {path}: {source}")]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A NIC's counters, kept while the VM runs.
pub struct NicCounters {
    /// The name in `vm.counters`.
    pub id: String,
    /// The device's handle.
    pub handle: NetHandle,
}

/// What [`builder`] made.
pub struct Machine {
    /// The VM description, ready to build.
    pub builder: VmBuilder,
    /// One per NIC.
    pub nics: Vec<NicCounters>,
}

/// The RAM description for `config.memory`.
pub fn ram_config(config: &VmConfig) -> RamConfig {
    let m = &config.memory;
    let backing = if m.hugepages {
        match m.hugepage_size {
            Some(s) if s == 1 << 30 => Backing::HugeTlb(HugePageSize::Size1G),
            _ => Backing::HugeTlb(HugePageSize::Size2M),
        }
    } else if m.shared {
        Backing::Memfd
    } else {
        Backing::Anonymous
    };
    RamConfig::new(m.size)
        .backing(backing)
        .transparent_hugepages(m.thp && !m.hugepages)
        .mergeable(m.mergeable)
}

/// The UART's output: `console`'s (a pty or socket, see [`crate::console`]) when given, else
/// what `config.serial` names.
pub type SerialOut = Option<Box<dyn Write + Send>>;

fn serial_output(
    config: &VmConfig,
    truncate: bool,
    console: SerialOut,
) -> Result<Box<dyn Write + Send>, DeviceError> {
    if let Some(out) = console {
        return Ok(out);
    }
    Ok(match (config.serial.mode, &config.serial.file) {
        (ConsoleMode::Tty, _) => Box::new(std::io::stdout()),
        (ConsoleMode::File, Some(path)) => Box::new(
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(truncate)
                .append(!truncate)
                .open(path)
                .map_err(|source| DeviceError::SerialFile { path: path.clone(), source })?,
        ),
        // Off and Null (Pty and Socket come as `console`): hv-core always has COM1, so a
        // guest probing it finds a port whose output goes nowhere.
        _ => Box::new(std::io::sink()),
    })
}

/// A locally administered unicast MAC from the process id and the NIC's position.
fn made_up_mac(index: usize) -> MacAddr {
    let pid = std::process::id().to_be_bytes();
    MacAddr([0x52, 0x54, pid[1], pid[2], pid[3], index as u8])
}

/// Gives every NIC of `config` without a MAC a locally administered one (QEMU's 52:54 prefix,
/// this process's id, the NIC's index), written into the config.
pub fn assign_macs(config: &mut VmConfig) {
    for (index, n) in config.net.iter_mut().flatten().enumerate() {
        if n.mac.is_none() {
            n.mac = Some(made_up_mac(index).to_string());
        }
    }
}

/// Opens every device of a validated `config` and describes the VM to hv-core. A serial file
/// is truncated on the first boot (`first_boot`) and appended to on reboots; `console` is the
/// UART's output for a pty or socket serial. Dirty-page tracking is on, so the VM can be
/// migrated live.
pub fn builder(
    config: &VmConfig,
    first_boot: bool,
    console: SerialOut,
) -> Result<Machine, DeviceError> {
    let payload = &config.payload;
    let mut b = VmBuilder::new()
        .memory(ram_config(config))
        .vcpus(config.cpus.boot_vcpus as usize)
        .cmdline(payload.cmdline.clone().unwrap_or_default());
    if let Some(kernel) = &payload.kernel {
        b = b.kernel(kernel);
    }
    if let Some(initramfs) = &payload.initramfs {
        b = b.initrd(initramfs);
    }
    devices(config, b, first_boot, console)
}

/// The builder for a VM that comes from elsewhere (a snapshot, a migration): the serial output
/// (appended to) and the devices of `config`, which must be those the VM was saved with.
/// Memory, vCPUs and command line come with the saved machine.
pub fn rebuild_builder(config: &VmConfig, console: SerialOut) -> Result<Machine, DeviceError> {
    devices(config, VmBuilder::new(), false, console)
}

/// What a qcow2 disk with `backing_files` on may open besides itself: the regular files
/// directly in its own directory (as a Nova or libvirt overlay sits next to, or in the pool of,
/// its base), nothing elsewhere.
fn backing_confinement(image: &Path) -> Result<Confinement, BlockError> {
    let dir = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Confinement::none()
        .allow_dir(dir)
        .map_err(|source| BlockError::Open { path: dir.to_path_buf(), source })
}

/// The format of a file disk: explicit, never probed.
fn file_format(image_type: ImageType) -> DiskFormat {
    match image_type {
        ImageType::Qcow2 => DiskFormat::Qcow2,
        _ => DiskFormat::Raw,
    }
}

/// Opens a disk image file; a qcow2 opens a backing chain only with `backing_files`, and only
/// files directly in its own directory.
fn open_file_disk(d: &DiskConfig, path: &Path) -> Result<Box<dyn BlockBackend>, BlockError> {
    let format = file_format(d.image_type);
    let confinement = if d.backing_files && format == DiskFormat::Qcow2 {
        backing_confinement(path)?
    } else {
        Confinement::none()
    };
    let opts =
        DiskOptions { read_only: d.readonly, direct: d.direct, confinement, ..Default::default() };
    open_disk(path, format, opts)
}

/// Adds the serial output and every virtio device of `config` to `b`, each with where its
/// backend is (so a snapshot records how to reopen it).
fn devices(
    config: &VmConfig,
    b: VmBuilder,
    first_boot: bool,
    console: SerialOut,
) -> Result<Machine, DeviceError> {
    let mut b = b.dirty_tracking(true).serial_output(serial_output(config, first_boot, console)?);
    for (index, d) in config.disks.iter().flatten().enumerate() {
        let path = d.path.clone().unwrap_or_default();
        let disk_err = |source| DeviceError::Disk { index, path: path.clone(), source };
        let (backend, format) = match &d.segments {
            // A logical volume: its extents, never `path`, which only names it.
            Some(segments) => {
                let extents: Vec<SegmentPath> = segments
                    .iter()
                    .map(|s| SegmentPath {
                        path: s.path.clone(),
                        file_offset: s.offset,
                        len: s.length,
                    })
                    .collect();
                let disk = SegmentDisk::open(&extents, d.readonly).map_err(disk_err)?;
                (Box::new(disk) as Box<dyn BlockBackend>, DiskFormat::Raw)
            }
            None => (open_file_disk(d, &path).map_err(disk_err)?, file_format(d.image_type)),
        };
        let serial =
            d.serial.clone().or_else(|| d.id.clone()).unwrap_or_else(|| format!("hv-disk{index}"));
        let blk =
            BlockConfig::default().with_serial(&serial).with_queues(d.num_queues.unwrap_or(1));
        log::info!(
            "disk {index}: {} ({format:?}, {} bytes{}{})",
            path.display(),
            backend.size(),
            match &d.segments {
                Some(s) => format!(", a logical volume of {} extent(s)", s.len()),
                None => String::new(),
            },
            if d.readonly { ", read-only" } else { "" }
        );
        let source = DeviceSource::Block { path: path.clone(), read_only: d.readonly };
        b = b.virtio_device_from(Box::new(VirtioBlock::new(backend, blk)), source);
    }
    let mut nics = Vec::new();
    for (index, n) in config.net.iter().flatten().enumerate() {
        let name = n.tap.clone().unwrap_or_default();
        let pairs = n.queue_pairs();
        let tap = Tap::builder(&name).queues(pairs).open().map_err(|source| DeviceError::Tap {
            index,
            tap: name.clone(),
            source,
        })?;
        let backends: Vec<Box<dyn NetBackend>> = TapBackend::per_queue(tap)
            .map_err(|source| DeviceError::Tap { index, tap: name.clone(), source })?
            .into_iter()
            .map(|b| Box::new(b) as Box<dyn NetBackend>)
            .collect();
        let mac = match &n.mac {
            Some(m) => m
                .parse()
                .map_err(|e| DeviceError::Nic { index, reason: format!("mac {m}: {e}") })?,
            None => made_up_mac(index),
        };
        let (device, handle) = VirtioNet::multi_queue(NicConfig::new(mac), backends)
            .map_err(|e| DeviceError::Nic { index, reason: e.to_string() })?;
        log::info!("net {index}: virtio-net {mac} on TAP {name}, {pairs} queue pair(s)");
        b = b.virtio_device_from(Box::new(device), DeviceSource::Tap { name, mac: Some(mac.0) });
        let id = n.id.clone().unwrap_or_else(|| format!("_net{index}"));
        nics.push(NicCounters { id, handle });
    }
    Ok(Machine { builder: b, nics })
}
