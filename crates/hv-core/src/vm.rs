//! Building, running and stopping a VM.
//!
//! The lifecycle is an explicit state machine ([`VmState`], in [`crate::lifecycle`]):
//! `Created` -> `Running` <-> `Paused` -> `Stopped`. Every operation checks the current state in
//! [`VmState::allows`]; a wrong call is an [`Error::InvalidState`], never undefined behaviour.
//! However a VM stops, [`Vm::wait`] returns an [`ExitReason`]: powered off, reset, halted,
//! crashed (with the vCPU state), killed, or failed.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hv_mem::{GuestRam, MemoryConfig};
use kvm_bindings::{
    kvm_pit_config, kvm_regs, kvm_sregs, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, AcpiConfig};
use crate::boot::{self, EntryPoint};
use crate::bus::{self, Bus, SharedDevice};
use crate::devices::acpi_pm::{AcpiPm, PM_BASE, PM_LEN, SCI_IRQ};
use crate::devices::cmos::{Cmos, CMOS_BASE, CMOS_LEN};
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::pvpanic::{PvPanic, PVPANIC_PORT};
use crate::devices::serial::{SerialPort, COM1_BASE, COM1_IRQ};
use crate::devices::{IrqLine, RequestSink, VmRequest};
use crate::kvm::{self, HostKind, Hypervisor};
use crate::lifecycle::{Control, ControlState};
pub use crate::lifecycle::{CrashInfo, CrashReason, ExitReason, Op, VmState};
use crate::quirks::Quirks;
use crate::seccomp::{self, Filters, SeccompMode, ThreadKind};
use crate::snapshot::restore::Restoring;
use crate::snapshot::{DeviceSource, MemorySource};
use crate::vcpu::{self, Kicker, Vcpu};
use crate::virtio::device_thread::{DeviceThread, StartError};
use crate::virtio::mmio::{QUEUE_NOTIFY, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use crate::virtio::{MmioTransport, VirtioDevice};

/// Errors building or operating a VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// KVM could not be opened.
    #[error(transparent)]
    Kvm(#[from] kvm::Error),
    /// The machine description is invalid.
    #[error("invalid VM configuration: {field}: {reason}")]
    InvalidConfig {
        /// Which setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] hv_mem::Error),
    /// The kernel, initrd or command line could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// The ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    /// A vCPU could not be configured.
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    /// A device could not be placed on a bus.
    #[error(transparent)]
    Bus(#[from] bus::Error),
    /// A VM-level KVM ioctl failed.
    #[error("{what} failed: {source}")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A host resource (thread, eventfd) could not be created.
    #[error("cannot create {what}: {source}")]
    Host {
        /// What was being created.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
    /// Saving or restoring VM state failed.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    /// The operation is not allowed in the VM's current state.
    #[error("cannot {op} a VM that is {state}")]
    InvalidState {
        /// The operation.
        op: &'static str,
        /// The state the VM was in.
        state: VmState,
    },
}

/// Result type of VM operations.
pub type Result<T> = std::result::Result<T, Error>;

fn ioctl(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Ioctl { what, source }
}

/// What vCPU threads share: the buses, the run state, the host quirks.
pub(crate) struct Context {
    /// Registers of each vCPU as of its last park (pause).
    pub(crate) snapshots: Mutex<Vec<Option<(kvm_regs, kvm_sregs)>>>,
    /// The full state of each vCPU as of its last park, for a snapshot.
    pub(crate) vcpu_states: Mutex<Vec<Option<VcpuCapture>>>,
    /// The MSRs KVM reports, saved with each vCPU.
    pub(crate) msr_list: Vec<u32>,
    /// Whether the in-kernel irqchip is used.
    pub(crate) irqchip: bool,
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) control: Control,
    pub(crate) quirks: Quirks,
}

/// A vCPU's state read at its last park, or why it could not be read.
pub(crate) type VcpuCapture =
    std::result::Result<crate::snapshot::VcpuState, crate::snapshot::VcpuStateError>;

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
fn apply_kvm_state(
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

/// A VM: its memory, devices and vCPUs. Every operation takes `&self`, so one thread may
/// [`wait`](Vm::wait) while another pauses or kills (share it in an `Arc`).
pub struct Vm {
    host: HostKind,
    /// Declared before `ram`: the VM (and its memslots) goes before the memory they map.
    vm_fd: VmFd,
    ram: GuestRam,
    pub(crate) ctx: Arc<Context>,
    pub(crate) serial: Arc<Mutex<SerialPort>>,
    pub(crate) pm: Arc<Mutex<AcpiPm>>,
    pub(crate) cmos: Arc<Mutex<Cmos>>,
    pub(crate) transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub(crate) sources: Vec<Option<DeviceSource>>,
    pub(crate) vcpu_count: usize,
    pub(crate) memory_source: MemorySource,
    pending: Mutex<Vec<Vcpu>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    vcpu_filters: Filters,
    cmdline: String,
    entry: EntryPoint,
    pub(crate) dirty_tracking: bool,
}

impl Vm {
    /// Puts a built, never started VM in a checked saved `state` (a migration's destination
    /// builds the machine while memory streams in, then applies the state that ends the
    /// stream).
    pub(crate) fn apply_state(&self, state: &crate::snapshot::MachineState) -> Result<()> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() != self.vcpu_count {
            return Err(Error::InvalidState { op: "restore the state of", state: self.state() });
        }
        self.serial.lock().unwrap_or_else(|e| e.into_inner()).restore(&state.serial);
        self.cmos.lock().unwrap_or_else(|e| e.into_inner()).restore(&state.cmos);
        self.pm.lock().unwrap_or_else(|e| e.into_inner()).restore(&state.acpi_pm);
        apply_kvm_state(&self.vm_fd, &pending, &self.transports, state)
    }
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("host", &self.host)
            .field("state", &self.state())
            .field("cmdline", &self.cmdline)
            .finish()
    }
}

impl Vm {
    /// The current lifecycle state.
    pub fn state(&self) -> VmState {
        self.ctx.control.lock().state
    }

    /// The host kind the VM runs on.
    pub fn host(&self) -> HostKind {
        self.host
    }

    /// The command line the guest was given (with any quirk additions).
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// How the kernel is entered.
    pub fn entry(&self) -> EntryPoint {
        self.entry
    }

    /// The guest's RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The KVM VM fd (for devices that register ioeventfds and irqfds), borrowed from the VM
    /// so it cannot outlive the guest RAM its memslots map.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Pages written since the last call: KVM's log of guest writes merged with the VMM's own
    /// writes (device DMA), read and cleared. Needs [`VmBuilder::dirty_tracking`].
    pub fn dirty_log(&self) -> Result<hv_mem::DirtyBitmap> {
        if !self.dirty_tracking {
            return Err(Error::InvalidConfig {
                field: "dirty_tracking",
                reason: "the VM was built without dirty-page tracking".into(),
            });
        }
        let mut slots = Vec::new();
        for (slot, (gpa, len, _)) in self.ram.regions().into_iter().enumerate() {
            let words = self
                .vm_fd
                .get_dirty_log(slot as u32, len as usize)
                .map_err(ioctl("KVM_GET_DIRTY_LOG"))?;
            slots.push((gpa, len, words));
        }
        let mut bitmap = hv_mem::DirtyBitmap::from_kvm_logs(slots)
            .map_err(|e| Error::InvalidConfig { field: "dirty_tracking", reason: e.to_string() })?;
        let vmm = self.ram.take_vmm_dirty();
        bitmap
            .merge(&vmm)
            .map_err(|e| Error::InvalidConfig { field: "dirty_tracking", reason: e.to_string() })?;
        Ok(bitmap)
    }

    /// Feeds bytes to the serial console's input; returns how many were queued.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        self.serial.lock().unwrap_or_else(|e| e.into_inner()).enqueue_input(bytes)
    }

    /// Checks `op` against the state table and moves the VM to the state it names; returns
    /// the guard with the state already moved.
    fn transition(&self, op: Op, opname: &'static str) -> Result<MutexGuard<'_, ControlState>> {
        let mut g = self.ctx.control.lock();
        match g.state.next(op) {
            Some(next) if op != Op::Kill && op != Op::End => {
                g.state = next;
                Ok(g)
            }
            Some(_) => Ok(g),
            None => Err(Error::InvalidState { op: opname, state: g.state }),
        }
    }

    /// Starts one host thread per vCPU, each confined by the vCPU seccomp filter.
    pub fn start(&self) -> Result<()> {
        self.start_in(VmState::Running)
    }

    /// Starts the vCPU threads parked, as [`pause`](Self::pause) leaves them (a restored VM
    /// starts so); [`resume`](Self::resume) runs them.
    pub fn start_paused(&self) -> Result<()> {
        self.start_in(VmState::Paused)?;
        let mut g = self.ctx.control.lock();
        while g.parked < g.alive && g.outcome.is_none() {
            g = self.ctx.control.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        Ok(())
    }

    fn start_in(&self, state: VmState) -> Result<()> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut g = self.transition(Op::Start, "start")?;
            g.state = state;
            g.alive = pending.len();
        }
        crate::signal::install();
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut failure = None;
        for v in pending.drain(..) {
            let name = format!("hv-vcpu{}", v.id);
            let (filters, ready) = (self.vcpu_filters.clone(), ready_tx.clone());
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                let installed = filters.install(ThreadKind::Vcpu);
                let ok = installed.is_ok();
                let _ = ready.send(installed);
                vcpu::run(v, ok);
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(source) => {
                    failure = Some(Error::Host { what: "vCPU thread", source });
                    break;
                }
            }
        }
        drop(ready_tx);
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = failure.or(Some(Error::Seccomp(e))),
                Err(_) => break,
            }
        }
        if let Some(e) = failure {
            // The vCPUs not started count as exited so waiting still ends.
            self.ctx.control.end(Op::Kill, ExitReason::Killed);
            self.ctx.control.lock().alive = threads.len();
            self.ctx.control.cond.notify_all();
            return Err(e);
        }
        Ok(())
    }

    /// Parks every vCPU outside KVM_RUN; returns once none is running guest code.
    pub fn pause(&self) -> Result<()> {
        drop(self.transition(Op::Pause, "pause")?);
        self.ctx.control.kick_all();
        let mut g = self.ctx.control.lock();
        while g.parked < g.alive && g.outcome.is_none() {
            g = self.ctx.control.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        Ok(())
    }

    /// The registers of every vCPU while the VM is paused (for debugging a stuck guest).
    pub fn vcpu_registers(&self) -> Result<Vec<Option<(kvm_regs, kvm_sregs)>>> {
        let state = self.state();
        if state != VmState::Paused {
            return Err(Error::InvalidState { op: "read the registers of", state });
        }
        Ok(self.ctx.snapshots.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) -> Result<()> {
        let _g = self.transition(Op::Resume, "resume")?;
        self.ctx.control.cond.notify_all();
        Ok(())
    }

    /// Asks the guest to shut down gracefully by pressing the ACPI power button. The guest
    /// decides what to do (Linux's ACPI button driver reports it to user space, whose init
    /// powers off); [`wait`](Vm::wait) reports the outcome. Returns whether the guest had
    /// enabled the power-button event, i.e. whether it can hear the request at all.
    pub fn shutdown(&self) -> Result<bool> {
        drop(self.transition(Op::Shutdown, "shut down")?);
        Ok(self.pm.lock().unwrap_or_else(|e| e.into_inner()).press_power_button())
    }

    /// Stops the VM at once; [`wait`](Vm::wait) then returns [`ExitReason::Killed`].
    pub fn kill(&self) -> Result<()> {
        drop(self.transition(Op::Kill, "kill")?);
        self.ctx.control.end(Op::Kill, ExitReason::Killed);
        Ok(())
    }

    /// Waits for the VM to stop (every vCPU thread ended) and returns why. Other threads may
    /// pause, resume or kill the VM meanwhile. Waiting for a VM that was never started (nor
    /// killed) is an [`Error::InvalidState`]: it could never stop.
    pub fn wait(&self) -> Result<ExitReason> {
        loop {
            if let Some(r) = self.wait_timeout(Duration::from_secs(3600)) {
                return Ok(r);
            }
            let state = self.state();
            if state == VmState::Created {
                return Err(Error::InvalidState { op: "wait for", state });
            }
        }
    }

    /// Waits at most `timeout` for the VM to stop; `None` if it has not (a VM never started
    /// does not stop).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        let deadline = Instant::now() + timeout;
        let outcome = {
            let mut g = self.ctx.control.lock();
            loop {
                if g.state == VmState::Created {
                    return None;
                }
                if let (VmState::Stopped, 0, Some(outcome)) = (g.state, g.alive, &g.outcome) {
                    break outcome.clone();
                }
                let now = Instant::now();
                if now >= deadline {
                    return None;
                }
                g = self
                    .ctx
                    .control
                    .cond
                    .wait_timeout(g, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        // Every vCPU thread has left its loop; reap them.
        for t in self.threads.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = t.join();
        }
        Some(outcome)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let threads = std::mem::take(self.threads.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !threads.is_empty() {
            self.ctx.control.end(Op::Kill, ExitReason::Killed);
            for t in threads {
                let _ = t.join();
            }
        }
    }
}
