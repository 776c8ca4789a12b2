//! [`VmBuilder`]: what a VM is made of, validated and put together into a [`Vm`] (memory,
//! KVM's VM and vCPUs, the legacy devices, virtio-mmio transports, ACPI tables, a restored
//! state when the VM comes from a snapshot or a migration).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hv_mem::{GuestRam, MemoryConfig};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, AcpiConfig};
use crate::boot::{self, EntryPoint};
use crate::bus::{Bus, SharedDevice};
use crate::devices::acpi_pm::{AcpiPm, PM_BASE, PM_LEN, SCI_IRQ};
use crate::devices::cmos::{Cmos, CMOS_BASE, CMOS_LEN};
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::pvpanic::{PvPanic, PVPANIC_PORT};
use crate::devices::serial::{SerialPort, COM1_BASE, COM1_IRQ};
use crate::devices::{IrqLine, RequestSink, VmRequest};
use crate::kvm::Hypervisor;
use crate::lifecycle::Control;
pub use crate::lifecycle::{CrashInfo, CrashReason, ExitReason};
use crate::quirks::Quirks;
use crate::seccomp::{Filters, SeccompMode, ThreadKind};
use crate::snapshot::restore::Restoring;
use crate::snapshot::{DeviceSource, MemorySource};
use crate::vcpu::{self, Kicker, Vcpu};
use crate::virtio::device_thread::{DeviceThread, StartError};
use crate::virtio::mmio::{QUEUE_NOTIFY, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use crate::virtio::{MmioTransport, VirtioDevice};

use super::{ioctl, Context, Error, Result, Vm};

/// A device to place on a bus at build time.
struct ExtraDevice {
    mmio: bool,
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// Interrupt lines given to virtio-mmio devices, in order (free ISA lines, then IOAPIC-only).
const VIRTIO_IRQS: [u32; 16] = [5, 6, 7, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];

/// Window base and interrupt of the `i`th virtio-mmio device.
fn virtio_slot(i: usize) -> (u64, u32) {
    (VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE, VIRTIO_IRQS[i])
}

/// Describes a VM; [`build`](VmBuilder::build) validates it and makes a [`Vm`].
pub struct VmBuilder {
    memory: MemoryConfig,
    /// A size asked for with `memory_mib`, checked at build.
    memory_mib: Option<u64>,
    seccomp: SeccompMode,
    vcpus: usize,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: String,
    serial_out: Option<Box<dyn Write + Send>>,
    irqchip: bool,
    quirks: bool,
    dirty_tracking: bool,
    devices: Vec<ExtraDevice>,
    dsdt_aml: Vec<Vec<u8>>,
    virtio: Vec<Box<dyn VirtioDevice>>,
    virtio_sources: Vec<Option<DeviceSource>>,
    virtio_cmdline: bool,
    restoring: Option<Box<Restoring>>,
}

impl Default for VmBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl VmBuilder {
    /// A VM with 1 vCPU and 128 MiB, no kernel yet.
    pub fn new() -> Self {
        Self {
            memory: MemoryConfig::new(128 << 20),
            memory_mib: None,
            seccomp: SeccompMode::default(),
            vcpus: 1,
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            serial_out: None,
            irqchip: true,
            quirks: true,
            dirty_tracking: false,
            devices: Vec::new(),
            dsdt_aml: Vec::new(),
            virtio: Vec::new(),
            virtio_sources: Vec::new(),
            virtio_cmdline: true,
            restoring: None,
        }
    }

    /// Guest RAM in MiB (anonymous backing).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = Some(mib);
        self
    }

    /// Full control of guest RAM: size, backing, THP, KSM.
    pub fn memory(mut self, config: MemoryConfig) -> Self {
        self.memory = config;
        self.memory_mib = None;
        self
    }

    /// How the VM's vCPU and device threads are confined (default [`SeccompMode::Trap`]: each
    /// kind of thread may make only the system calls it needs, and a forbidden call ends the
    /// VM as crashed, naming the call). [`SeccompMode::Off`] is for debugging.
    pub fn seccomp(mut self, mode: SeccompMode) -> Self {
        self.seccomp = mode;
        self
    }

    /// Number of vCPUs (may exceed the host's cores).
    pub fn vcpus(mut self, n: usize) -> Self {
        self.vcpus = n;
        self
    }

    /// The kernel: a bzImage, an ELF vmlinux, or a PVH ELF.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// An initrd/initramfs.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    /// The kernel command line.
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cmdline = cmdline.into();
        self
    }

    /// Where the serial console's output goes (default: discarded).
    pub fn serial_output(mut self, out: impl Write + Send + 'static) -> Self {
        self.serial_out = Some(Box::new(out));
        self
    }

    /// Use KVM's in-kernel LAPIC/IOAPIC/PIC and PIT (default on). Without it, `hlt` exits to
    /// the VMM and only one vCPU is useful.
    pub fn irqchip(mut self, on: bool) -> Self {
        self.irqchip = on;
        self
    }

    /// Apply host quirks (default on; see [`crate::quirks`]).
    pub fn host_quirks(mut self, on: bool) -> Self {
        self.quirks = on;
        self
    }

    /// Log guest writes to RAM for [`Vm::dirty_log`].
    pub fn dirty_tracking(mut self, on: bool) -> Self {
        self.dirty_tracking = on;
        self
    }

    /// Places a device on the port I/O bus.
    pub fn pio_device(mut self, base: u16, len: u16, device: SharedDevice) -> Self {
        self.devices.push(ExtraDevice { mmio: false, base: base.into(), len: len.into(), device });
        self
    }

    /// Places a device on the MMIO bus.
    pub fn mmio_device(mut self, base: u64, len: u64, device: SharedDevice) -> Self {
        self.devices.push(ExtraDevice { mmio: true, base, len, device });
        self
    }

    /// Adds an AML definition block to the DSDT (to describe a device to the guest).
    pub fn dsdt_aml(mut self, aml: Vec<u8>) -> Self {
        self.dsdt_aml.push(aml);
        self
    }

    /// Adds a virtio device on its own virtio-mmio window and interrupt line; it is described
    /// in the DSDT and (unless turned off) on the command line.
    pub fn virtio_device(mut self, device: Box<dyn VirtioDevice>) -> Self {
        self.virtio.push(device);
        self.virtio_sources.push(None);
        self
    }

    /// Adds a virtio device as [`virtio_device`](Self::virtio_device) does, recording where
    /// its backend is so a snapshot's config says how to rebuild it.
    pub fn virtio_device_from(
        mut self,
        device: Box<dyn VirtioDevice>,
        source: DeviceSource,
    ) -> Self {
        self.virtio.push(device);
        self.virtio_sources.push(Some(source));
        self
    }

    /// The type and queue sizes of each virtio device added so far.
    pub(crate) fn virtio_shapes(&self) -> Vec<(u32, Vec<u16>)> {
        self.virtio.iter().map(|d| (d.device_type(), d.queue_max_sizes())).collect()
    }

    pub(crate) fn is_dirty_tracking(&self) -> bool {
        self.dirty_tracking
    }

    /// Makes [`build`](Self::build) rebuild a saved machine instead of booting a kernel.
    pub(crate) fn restoring(mut self, r: Restoring, cmdline: String) -> Self {
        self.restoring = Some(Box::new(r));
        self.cmdline = cmdline;
        self.virtio_cmdline = false;
        self.quirks = false;
        self
    }

    /// Whether to announce virtio-mmio devices with `virtio_mmio.device=` on the command line
    /// (default on; needed by kernels without ACPI virtio-mmio discovery).
    pub fn virtio_mmio_cmdline(mut self, on: bool) -> Self {
        self.virtio_cmdline = on;
        self
    }

    fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidConfig { field, reason: reason.into() }
    }

    /// Validates the description and builds the VM (kernel loaded, vCPUs created, not running).
    pub fn build(mut self) -> Result<Vm> {
        let restoring = self.restoring.take();
        let kernel = match (&restoring, self.kernel.clone()) {
            (Some(_), _) => PathBuf::new(),
            (None, Some(k)) => k,
            (None, None) => return Err(Self::invalid("kernel", "no kernel given")),
        };
        // Probe the kernel before touching KVM: a corrupt file is a typed error up front.
        if restoring.is_none() {
            boot::probe_format(&kernel)?;
        }
        if let Some(initrd) = self.initrd.as_ref().filter(|_| restoring.is_none()) {
            std::fs::metadata(initrd).map_err(|source| {
                Error::Boot(boot::Error::InitrdFile { path: initrd.clone(), source })
            })?;
        }
        if let Some(mib) = self.memory_mib {
            self.memory.size = mib.checked_mul(1 << 20).ok_or_else(|| {
                Self::invalid("memory_mib", format!("{mib} MiB does not fit in 64 bits of bytes"))
            })?;
        }
        let vcpu_filters = Filters::new(ThreadKind::Vcpu, self.seccomp, &[])?;
        let device_filters = Filters::new(ThreadKind::DeviceWorker, self.seccomp, &[])?;
        if self.vcpus == 0 || self.vcpus > 254 {
            return Err(Self::invalid("vcpus", format!("{} is not in 1..=254", self.vcpus)));
        }
        if self.virtio.len() > VIRTIO_IRQS.len() {
            return Err(Self::invalid(
                "virtio devices",
                format!("{} devices, at most {} fit", self.virtio.len(), VIRTIO_IRQS.len()),
            ));
        }
        if !self.virtio.is_empty() && !self.irqchip {
            return Err(Self::invalid("virtio devices", "virtio needs the in-kernel irqchip"));
        }
        if !self.irqchip && self.vcpus > 1 {
            return Err(Self::invalid("vcpus", "more than one vCPU needs the in-kernel irqchip"));
        }
        let hv = Hypervisor::open()?;
        if self.vcpus > hv.max_vcpus() {
            return Err(Self::invalid(
                "vcpus",
                format!("{} exceeds this host's KVM limit of {}", self.vcpus, hv.max_vcpus()),
            ));
        }
        let quirks = if self.quirks { Quirks::for_host(hv.host()) } else { Quirks::none() };
        let mut cmdline = self.cmdline.trim().to_owned();
        let extra = quirks.cmdline_additions();
        if !extra.is_empty() {
            if !cmdline.is_empty() {
                cmdline.push(' ');
            }
            cmdline.push_str(extra);
        }
        if self.virtio_cmdline {
            for i in 0..self.virtio.len() {
                let (base, irq) = virtio_slot(i);
                if !cmdline.is_empty() {
                    cmdline.push(' ');
                }
                cmdline.push_str(&format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
            }
        }
        if cmdline.len() >= boot::layout::CMDLINE_MAX {
            return Err(Error::Boot(boot::Error::Cmdline("longer than 2047 bytes")));
        }

        let (ram, mut restoring, memory_source) = match restoring {
            Some(mut r) => match r.ram.take() {
                Some(ram) => {
                    let source = r.source.clone();
                    (ram, Some(r), source)
                }
                None => return Err(Self::invalid("restore", "the saved machine has no RAM")),
            },
            None => (GuestRam::new(&self.memory)?, None, MemorySource::Allocated),
        };
        let vm_fd = hv.kvm().create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        let flags = if self.dirty_tracking { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        for (slot, (gpa, len, hva)) in ram.regions().into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags,
                guest_phys_addr: gpa,
                memory_size: len,
                userspace_addr: hva,
            };
            // SAFETY: the region is a live mapping owned by `ram`, which the Vm keeps for as
            // long as the VM fd (and so the memslot) exists.
            unsafe { vm_fd.set_user_memory_region(region) }
                .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        vm_fd.set_tss_address(0xfffb_d000).map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        if self.irqchip {
            vm_fd.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
            vm_fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
        }

        // virtio devices: a window, an interrupt and an ioeventfd per queue each.
        let mut transports = Vec::new();
        let mut dsdt_aml = self.dsdt_aml.clone();
        for (i, dev) in std::mem::take(&mut self.virtio).into_iter().enumerate() {
            let (base, irq) = virtio_slot(i);
            let irq_line = self.irq_line(&vm_fd, irq)?;
            let mut notify = Vec::new();
            for q in 0..dev.queue_max_sizes().len() {
                let evt = EventFd::new(libc::EFD_NONBLOCK)
                    .map_err(|source| Error::Host { what: "eventfd", source })?;
                vm_fd
                    .register_ioevent(&evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), q as u32)
                    .map_err(ioctl("KVM_IOEVENTFD"))?;
                notify.push(evt);
            }
            let t = MmioTransport::new(dev, ram.memory().clone(), irq_line, notify)
                .map_err(|source| Error::Host { what: "virtio transport", source })?;
            dsdt_aml.push(acpi::virtio_mmio_aml(i, base, VIRTIO_MMIO_SIZE, irq));
            transports.push((base, Arc::new(Mutex::new(t))));
        }

        // Boot data (a restored machine has it in its RAM already).
        let (entry, boot_info) = if let Some(r) = &restoring {
            (r.entry, 0)
        } else {
            let mem = ram.memory();
            let loaded = boot::load_kernel(mem, &kernel)?;
            let initrd = match &self.initrd {
                Some(p) => {
                    let max = match loaded.entry {
                        EntryPoint::Linux64 { header: Some(h), .. } if h.initrd_addr_max != 0 => {
                            u64::from(h.initrd_addr_max)
                        }
                        _ => u64::from(u32::MAX),
                    };
                    Some(boot::load_initrd(mem, p, loaded.end, max)?)
                }
                None => None,
            };
            boot::write_cmdline(mem, &cmdline)?;
            crate::boot::regs::write_tables(mem)?;
            let rsdp = acpi::write_tables(mem, &AcpiConfig { vcpus: self.vcpus, dsdt_aml })?;
            let boot_info = match loaded.entry {
                EntryPoint::Pvh(_) => {
                    boot::params::write_pvh(mem, ram.layout(), initrd, Some(rsdp))?
                }
                EntryPoint::Linux64 { header, .. } => boot::params::write_zero_page(
                    mem,
                    ram.layout(),
                    header,
                    cmdline.len(),
                    initrd,
                    Some(rsdp),
                )?,
            };
            (loaded.entry, boot_info)
        };

        // Devices.
        let ctx = Arc::new(Context {
            snapshots: Mutex::new(vec![None; self.vcpus]),
            vcpu_states: Mutex::new(vec![None; self.vcpus]),
            msr_list: hv
                .kvm()
                .get_msr_index_list()
                .map(|l| l.as_slice().to_vec())
                .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?,
            irqchip: self.irqchip,
            pio: Bus::new(),
            mmio: Bus::new(),
            control: Control::new(self.vcpus),
            quirks,
        });
        let weak = Arc::downgrade(&ctx);
        let requests: RequestSink = Arc::new(move |req| {
            if let Some(ctx) = weak.upgrade() {
                ctx.control.finish(match req {
                    VmRequest::PowerOff => ExitReason::PoweredOff,
                    VmRequest::Reset => ExitReason::Reset,
                    VmRequest::GuestPanic => ExitReason::Crashed(Box::new(CrashInfo {
                        vcpu: None,
                        reason: CrashReason::GuestPanic,
                        regs: None,
                        sregs: None,
                    })),
                });
            }
        });
        let serial_irq = self.irq_line(&vm_fd, COM1_IRQ)?;
        let sci = self.irq_line(&vm_fd, SCI_IRQ)?;
        let out = self.serial_out.unwrap_or_else(|| Box::new(std::io::sink()));
        let saved = restoring.as_ref().and_then(|r| r.state.as_ref());
        let serial = Arc::new(Mutex::new(match saved {
            Some(state) => SerialPort::from_state(serial_irq, out, &state.serial),
            None => SerialPort::new(serial_irq, out),
        }));
        ctx.pio.insert(COM1_BASE, 8, serial.clone())?;
        ctx.pio.insert(
            I8042_BASE,
            I8042_LEN,
            Arc::new(Mutex::new(I8042::new(requests.clone()))),
        )?;
        let cmos = Arc::new(Mutex::new(Cmos::new()));
        ctx.pio.insert(CMOS_BASE, CMOS_LEN, cmos.clone())?;
        let pm = Arc::new(Mutex::new(AcpiPm::new(requests.clone(), sci)));
        if let Some(state) = saved {
            cmos.lock().unwrap_or_else(|e| e.into_inner()).restore(&state.cmos);
            pm.lock().unwrap_or_else(|e| e.into_inner()).restore(&state.acpi_pm);
        }
        ctx.pio.insert(PM_BASE, PM_LEN, pm.clone())?;
        ctx.pio.insert(PVPANIC_PORT, 1, Arc::new(Mutex::new(PvPanic::new(requests.clone()))))?;
        let device_thread = if transports.is_empty() {
            None
        } else {
            let t = DeviceThread::spawn("hv-devices", device_filters, Arc::downgrade(&ctx))
                .map_err(|e| match e {
                    StartError::Spawn(source) => Error::Host { what: "device thread", source },
                    StartError::Seccomp(e) => Error::Seccomp(e),
                })?;
            Some(t)
        };
        for (base, t) in &transports {
            if let Some(runner) = &device_thread {
                t.lock().unwrap_or_else(|e| e.into_inner()).set_runner(runner.clone());
            }
            ctx.mmio.insert(*base, VIRTIO_MMIO_SIZE, t.clone())?;
        }
        for d in self.devices {
            if d.mmio {
                ctx.mmio.insert(d.base, d.len, d.device)?;
            } else {
                ctx.pio.insert(d.base, d.len, d.device)?;
            }
        }

        // vCPUs.
        let base_cpuid = hv
            .kvm()
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::with_capacity(self.vcpus);
        for id in 0..self.vcpus {
            let fd = vm_fd.create_vcpu(id as u64).map_err(ioctl("KVM_CREATE_VCPU"))?;
            let mut cpuid = base_cpuid.clone();
            crate::cpuid::fixup(&mut cpuid, id as u8, self.vcpus as u8);
            vcpu::configure(&fd, id as u8, &cpuid, self.irqchip)?;
            if id == 0 && restoring.is_none() {
                vcpu::set_boot_state(&fd, &entry, boot_info)?;
            }
            vcpus.push(Vcpu {
                id: id as u8,
                fd,
                ctx: ctx.clone(),
                kicker: Arc::new(Kicker::default()),
            });
        }
        *ctx.control.kickers.lock().unwrap_or_else(|e| e.into_inner()) =
            vcpus.iter().map(|v| v.kicker.clone()).collect();
        let transports: Vec<_> = transports.into_iter().map(|(_, t)| t).collect();
        if let Some(state) = restoring.take().and_then(|r| r.state) {
            apply_kvm_state(&vm_fd, &vcpus, &transports, &state)?;
        }

        Ok(Vm {
            host: hv.host(),
            vm_fd,
            ram,
            ctx,
            serial,
            pm,
            cmos,
            transports,
            sources: self.virtio_sources,
            vcpu_count: self.vcpus,
            memory_source,
            pending: Mutex::new(vcpus),
            threads: Mutex::new(Vec::new()),
            vcpu_filters,
            cmdline,
            entry,
            dirty_tracking: self.dirty_tracking,
        })
    }

    fn irq_line(&self, vm_fd: &VmFd, gsi: u32) -> Result<IrqLine> {
        let evt = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| Error::Host { what: "eventfd", source })?;
        if self.irqchip {
            vm_fd.register_irqfd(&evt, gsi).map_err(ioctl("KVM_IRQFD"))?;
        }
        Ok(IrqLine::new(evt))
    }
}

/// Puts the VM-wide KVM state, each vCPU and each virtio transport in their saved state.
pub(super) fn apply_kvm_state(
    vm_fd: &VmFd,
    vcpus: &[Vcpu],
    transports: &[Arc<Mutex<MmioTransport>>],
    state: &crate::snapshot::MachineState,
) -> Result<()> {
    crate::snapshot::restore::apply_vm(vm_fd, &state.vm)?;
    for (v, s) in vcpus.iter().zip(&state.vcpus) {
        crate::snapshot::vcpu::apply(&v.fd, s).map_err(crate::snapshot::Error::from)?;
    }
    for (t, s) in transports.iter().zip(&state.virtio) {
        t.lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(s)
            .map_err(crate::snapshot::Error::from)?;
    }
    Ok(())
}
