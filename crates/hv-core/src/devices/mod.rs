//! Legacy platform devices: the 8250 serial port, the i8042 reset line, the CMOS RTC, and the
//! ACPI PM block that powers the VM off, and pvpanic.

pub mod acpi_pm;
pub mod cmos;
pub mod i8042;
pub mod pvpanic;
pub mod serial;

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Raises a guest interrupt by writing an eventfd registered as a KVM irqfd.
#[derive(Clone, Debug)]
pub struct IrqLine(Arc<EventFd>);

impl IrqLine {
    /// Wraps an eventfd (already registered with KVM, or a dummy when there is no irqchip).
    pub fn new(evt: EventFd) -> Self {
        Self(Arc::new(evt))
    }

    /// An interrupt line connected to nothing.
    pub fn disconnected() -> std::io::Result<Self> {
        Ok(Self::new(EventFd::new(libc::EFD_NONBLOCK)?))
    }

    /// The eventfd behind the line.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// What a device asks of the VM as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VmRequest {
    /// Power the machine off.
    PowerOff,
    /// Reset the machine.
    Reset,
    /// The guest kernel panicked.
    GuestPanic,
}

/// A device's handle to ask the VM to power off or reset.
pub type RequestSink = Arc<dyn Fn(VmRequest) + Send + Sync>;
