//! Saving a paused [`Vm`] and rebuilding one ([`VmBuilder::restore`]).

use std::fs::File;
use std::path::Path;

use hv_mem::{GuestRam, MemoryConfig};
use kvm_bindings::{
    kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::{
    load_json, write_file, write_json, DeviceRecord, EntryRecord, Error, KvmVmState, MachineState,
    MemorySource, Result, SnapshotConfig, CONFIG_FILE, MEMORY_FILE, SNAPSHOT_VERSION, STATE_FILE,
};
use crate::boot::EntryPoint;
use crate::devices::serial::SERIAL_FIFO;
use crate::vm::{Vm, VmBuilder, VmState};

fn vm_ioctl(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |e| Error::Ioctl { what, errno: e.errno() }
}

fn get_chip(fd: &VmFd, id: u32, what: &'static str) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip { chip_id: id, ..Default::default() };
    fd.get_irqchip(&mut chip).map_err(vm_ioctl(what))?;
    Ok(chip)
}

/// Reads the irqchip, PIT and clock.
pub(crate) fn save_vm(fd: &VmFd) -> Result<KvmVmState> {
    Ok(KvmVmState {
        pic_master: get_chip(fd, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
        pic_slave: get_chip(fd, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
        ioapic: get_chip(fd, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
        pit: fd.get_pit2().map_err(vm_ioctl("KVM_GET_PIT2"))?,
        clock: fd.get_clock().map_err(vm_ioctl("KVM_GET_CLOCK"))?,
    })
}

/// Writes the irqchip, PIT and clock into a fresh VM (irqchip and PIT created).
pub(crate) fn apply_vm(fd: &VmFd, s: &KvmVmState) -> Result<()> {
    for (chip, id, what) in [
        (&s.pic_master, KVM_IRQCHIP_PIC_MASTER, "KVM_SET_IRQCHIP (PIC master)"),
        (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE, "KVM_SET_IRQCHIP (PIC slave)"),
        (&s.ioapic, KVM_IRQCHIP_IOAPIC, "KVM_SET_IRQCHIP (IOAPIC)"),
    ] {
        if chip.chip_id != id {
            return Err(Error::BadDeviceState {
                device: "irqchip",
                reason: format!("chip id {} where {id} belongs", chip.chip_id),
            });
        }
        fd.set_irqchip(chip).map_err(vm_ioctl(what))?;
    }
    fd.set_pit2(&s.pit).map_err(vm_ioctl("KVM_SET_PIT2"))?;
    // The clock goes on from the saved value; flags describing the old host's clock source
    // (TSC_STABLE, REALTIME) are not for KVM_SET_CLOCK to take.
    let clock = kvm_bindings::kvm_clock_data { flags: 0, ..s.clock };
    fd.set_clock(&clock).map_err(vm_ioctl("KVM_SET_CLOCK"))?;
    Ok(())
}

/// What the builder needs to rebuild a saved machine instead of booting one.
pub(crate) struct Restoring {
    pub(crate) ram: Option<GuestRam>,
    /// The state to put the machine in at build; `None` for a machine whose state comes
    /// later ([`Vm::apply_state`](crate::Vm), a migration's destination).
    pub(crate) state: Option<MachineState>,
    pub(crate) entry: EntryPoint,
    pub(crate) source: MemorySource,
}

impl Vm {
    /// How to rebuild this VM (`config.json` of a snapshot, the opening of a migration).
    pub fn snapshot_config(&self) -> SnapshotConfig {
        let cfg = self.ram().config();
        SnapshotConfig {
            version: SNAPSHOT_VERSION,
            memory_bytes: self.ram().layout().ram_bytes(),
            transparent_hugepages: cfg.transparent_hugepages,
            mergeable: cfg.mergeable,
            vcpus: self.vcpu_count,
            dirty_tracking: self.dirty_tracking,
            cmdline: self.cmdline().to_owned(),
            entry: match self.entry() {
                EntryPoint::Pvh(addr) => EntryRecord::Pvh { addr },
                EntryPoint::Linux64 { entry, .. } => EntryRecord::Linux64 { addr: entry },
            },
            devices: self
                .transports
                .iter()
                .zip(&self.sources)
                .map(|(t, source)| {
                    let (device_type, queue_max_sizes) =
                        t.lock().unwrap_or_else(|e| e.into_inner()).shape();
                    DeviceRecord { device_type, queue_max_sizes, source: source.clone() }
                })
                .collect(),
        }
    }

    /// Where this VM's RAM came from (a restored VM's is its snapshot's memory file, mapped
    /// private and read on demand).
    pub fn memory_source(&self) -> &MemorySource {
        &self.memory_source
    }

    /// Saves the paused VM to `dir` (created if missing): `config.json`, `state.json` and
    /// `memory.bin` (see [`crate::snapshot`]). The VM stays paused; [`Vm::resume`] goes on.
    pub fn snapshot(&self, dir: &Path) -> crate::vm::Result<()> {
        let state = self.save_state()?;
        let result = self.write_snapshot(dir, &state);
        self.resume_devices(&state);
        result.map_err(crate::Error::from)
    }

    fn write_snapshot(&self, dir: &Path, state: &MachineState) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|source| Error::Io { path: dir.to_owned(), source })?;
        write_file(dir, MEMORY_FILE, |f| self.write_memory(f))?;
        write_json(dir, STATE_FILE, state)?;
        write_json(dir, CONFIG_FILE, &self.snapshot_config())?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Writes guest RAM, ranges back to back. Pages never populated and all-zero pages are
    /// left as holes (the file is sparse where the guest never wrote); runs of pages with
    /// data go out in one write each.
    fn write_memory(&self, f: &mut File) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        // File offset of each region: ranges back to back.
        let mut regions = Vec::new();
        let mut offset = 0u64;
        for region in self.ram().memory().iter() {
            regions.push((region.start_addr().0, region.len(), offset));
            offset += region.len();
        }
        f.set_len(offset)?;
        let outside = |gpa: u64, _| std::io::Error::other(format!("{gpa:#x} is not guest RAM"));
        self.ram().for_each_nonzero_run(1 << 20, outside, |gpa, data| {
            let at = regions
                .iter()
                .find(|&&(start, len, _)| gpa >= start && gpa - start < len)
                .map(|&(start, _, off)| off + (gpa - start))
                .ok_or_else(|| outside(gpa, data.len()))?;
            f.write_all_at(data, at)
        })
    }

    /// Reads everything the paused VM is, apart from RAM. Virtio devices are left quiesced:
    /// [`resume_devices`](Self::resume_devices) starts them again.
    pub(crate) fn save_state(&self) -> crate::vm::Result<MachineState> {
        let state = self.state();
        if state != VmState::Paused {
            return Err(crate::Error::InvalidState { op: "snapshot", state });
        }
        if !self.ctx.irqchip {
            return Err(Error::NoIrqchip.into());
        }
        let mut vcpus = Vec::with_capacity(self.vcpu_count);
        {
            let saved = self.ctx.vcpu_states.lock().unwrap_or_else(|e| e.into_inner());
            for i in 0..self.vcpu_count {
                match saved.get(i) {
                    Some(Some(Ok(s))) => vcpus.push(s.clone()),
                    Some(Some(Err(e))) => return Err(Error::Vcpu(e.clone()).into()),
                    _ => return Err(Error::VcpuMissing(i).into()),
                }
            }
        }
        let vm = save_vm(self.vm_fd())?;
        let mut virtio = Vec::with_capacity(self.transports.len());
        for t in &self.transports {
            match t.lock().unwrap_or_else(|e| e.into_inner()).save() {
                Ok(s) => virtio.push(s),
                Err(e) => {
                    // Start the devices already quiesced again: the VM must go on as it was.
                    for (t, s) in self.transports.iter().zip(&virtio) {
                        t.lock().unwrap_or_else(|e| e.into_inner()).resume_after_save(s);
                    }
                    return Err(Error::Device(e).into());
                }
            }
        }
        Ok(MachineState {
            version: SNAPSHOT_VERSION,
            vm,
            vcpus,
            serial: self.serial.lock().unwrap_or_else(|e| e.into_inner()).save(),
            cmos: self.cmos.lock().unwrap_or_else(|e| e.into_inner()).save(),
            i8042: super::Stateless,
            acpi_pm: self.pm.lock().unwrap_or_else(|e| e.into_inner()).save(),
            pvpanic: super::Stateless,
            virtio,
        })
    }

    /// Starts the virtio devices [`save_state`](Self::save_state) quiesced.
    pub(crate) fn resume_devices(&self, state: &MachineState) {
        for (t, s) in self.transports.iter().zip(&state.virtio) {
            if !t.lock().unwrap_or_else(|e| e.into_inner()).resume_after_save(s) {
                log::warn!("virtio device type {} did not start again after a save", s.device_type);
            }
        }
    }
}

/// Checks that this host can build the config's machine.
pub(crate) fn check_host(config: &SnapshotConfig) -> Result<()> {
    let hv = crate::kvm::Hypervisor::open()
        .map_err(|e| Error::Unsatisfiable { what: "KVM", reason: e.to_string() })?;
    if config.vcpus == 0 || config.vcpus > hv.max_vcpus().min(254) {
        return Err(Error::Unsatisfiable {
            what: "vcpus",
            reason: format!(
                "{} vCPUs, this host allows 1..={}",
                config.vcpus,
                hv.max_vcpus().min(254)
            ),
        });
    }
    // KVM_SET_XSAVE reads the vCPU's whole XSAVE buffer: hv saves the 4 KiB legacy area, so
    // a host whose buffer is larger (AMX) cannot take it.
    let xsave2 = hv.kvm().check_extension_int(kvm_ioctls::Cap::Xsave2);
    if xsave2 > 4096 {
        return Err(Error::Unsatisfiable {
            what: "XSAVE",
            reason: format!("this host's XSAVE area is {xsave2} bytes, snapshots hold 4096"),
        });
    }
    Ok(())
}

/// Checks that a config and a state belong together and that this host can build them.
pub(crate) fn check(config: &SnapshotConfig, state: &MachineState) -> Result<()> {
    check_host(config)?;
    if state.vcpus.len() != config.vcpus {
        return Err(Error::Inconsistent(format!(
            "{} vCPU states for {} vCPUs",
            state.vcpus.len(),
            config.vcpus
        )));
    }
    if state.virtio.len() != config.devices.len() {
        return Err(Error::Inconsistent(format!(
            "{} virtio states for {} devices",
            state.virtio.len(),
            config.devices.len()
        )));
    }
    for (i, v) in state.vcpus.iter().enumerate() {
        if usize::from(v.id) != i {
            return Err(Error::Inconsistent(format!("vCPU state {i} is for vCPU {}", v.id)));
        }
    }
    if state.serial.in_buffer.len() > SERIAL_FIFO {
        return Err(Error::BadDeviceState {
            device: "serial port",
            reason: format!(
                "{} bytes of input in a {SERIAL_FIFO}-byte FIFO",
                state.serial.in_buffer.len()
            ),
        });
    }
    if state.cmos.nvram.len() != 128 {
        return Err(Error::BadDeviceState {
            device: "CMOS",
            reason: format!("{} bytes of NVRAM, not 128", state.cmos.nvram.len()),
        });
    }
    Ok(())
}

impl VmBuilder {
    /// Rebuilds the VM saved in the snapshot directory `dir` (see [`crate::snapshot`]): RAM is
    /// its memory file mapped private (faulting in on demand), every vCPU, the irqchip, PIT,
    /// clock and devices as they were. The VM is returned **paused** (its vCPU threads
    /// started and parked); [`Vm::resume`] runs it.
    ///
    /// The builder supplies what is not in the snapshot: the serial output, and the virtio
    /// devices rebuilt from [`SnapshotConfig::devices`] in the same order (same types and
    /// queues). Memory size, vCPUs and command line come from the snapshot; a kernel is
    /// not needed. Every check (versions, sizes, devices, host limits) happens before any
    /// vCPU runs.
    pub fn restore(self, dir: &Path) -> crate::vm::Result<Vm> {
        let config: SnapshotConfig = load_json(&dir.join(CONFIG_FILE))?;
        let state: MachineState = load_json(&dir.join(STATE_FILE))?;
        check(&config, &state)?;
        let path = dir.join(MEMORY_FILE);
        let file = File::open(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let mem = memory_config(&config);
        let ram = GuestRam::from_file(&mem, file).map_err(|e| match e {
            hv_mem::Error::ImageSize { expected, actual } => {
                Error::MemorySize { path: path.clone(), expected, actual }
            }
            other => Error::Unsatisfiable { what: "memory", reason: other.to_string() },
        })?;
        let vm = self.rebuild(&config, Some(state), ram, MemorySource::MappedFile(path))?;
        vm.start_paused()?;
        Ok(vm)
    }

    /// Builds a machine from a checked config and state and RAM that already holds the
    /// guest's memory. The VM is created, not started. Without a state (a migration's
    /// destination, which builds while memory still streams in), the caller applies it
    /// with [`Vm::apply_state`] once it has arrived and been checked.
    pub(crate) fn rebuild(
        mut self,
        config: &SnapshotConfig,
        state: Option<MachineState>,
        ram: GuestRam,
        source: MemorySource,
    ) -> crate::vm::Result<Vm> {
        let given = self.virtio_shapes();
        if given.len() != config.devices.len() {
            return Err(Error::DeviceMismatch {
                index: given.len().min(config.devices.len()),
                reason: format!(
                    "the snapshot has {} virtio devices, the builder {}",
                    config.devices.len(),
                    given.len()
                ),
            }
            .into());
        }
        for (index, ((ty, sizes), rec)) in given.iter().zip(&config.devices).enumerate() {
            if *ty != rec.device_type || *sizes != rec.queue_max_sizes {
                return Err(Error::DeviceMismatch {
                    index,
                    reason: format!(
                        "snapshot has type {} with queues {:?}, the builder type {ty} with {sizes:?}",
                        rec.device_type, rec.queue_max_sizes
                    ),
                }
                .into());
            }
        }
        self = self.vcpus(config.vcpus).memory(memory_config(config)).irqchip(true);
        let dirty = self.is_dirty_tracking() || config.dirty_tracking;
        self = self.dirty_tracking(dirty);
        let entry = match config.entry {
            EntryRecord::Pvh { addr } => EntryPoint::Pvh(addr),
            EntryRecord::Linux64 { addr } => EntryPoint::Linux64 { entry: addr, header: None },
        };
        self.restoring(Restoring { ram: Some(ram), state, entry, source }, config.cmdline.clone())
            .build()
    }
}

/// The RAM a snapshot's config describes.
pub(crate) fn memory_config(config: &SnapshotConfig) -> MemoryConfig {
    MemoryConfig::new(config.memory_bytes)
        .transparent_hugepages(config.transparent_hugepages)
        .mergeable(config.mergeable)
}
