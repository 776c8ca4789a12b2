//! The i8042 keyboard controller, enough for the guest to reset the machine (write 0xfe to
//! port 0x64), as Linux does on `reboot` without ACPI.

use vm_superio::{I8042Device, Trigger};

use super::{RequestSink, VmRequest};
use crate::bus::BusDevice;

/// The i8042's I/O base (ports 0x60..0x65; the command port is 0x64).
pub const I8042_BASE: u64 = 0x60;
/// Length of the i8042's port range.
pub const I8042_LEN: u64 = 5;

struct ResetTrigger(RequestSink);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        (self.0)(VmRequest::Reset);
        Ok(())
    }
}

/// An i8042 whose reset pulse asks the VM to reset.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// An i8042 sending its reset to `requests`.
    pub fn new(requests: RequestSink) -> Self {
        Self { dev: I8042Device::new(ResetTrigger(requests)) }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.dev.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            let _ = self.dev.write(off, b);
        }
    }
}
