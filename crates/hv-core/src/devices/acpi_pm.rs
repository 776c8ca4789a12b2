//! The ACPI sleep control and status registers of a hardware-reduced ACPI platform (the FADT's
//! `X_SLEEP_CONTROL_REG`/`X_SLEEP_STATUS_REG`), at I/O ports 0x3c0/0x3c1. Writing SLP_EN with
//! SLP_TYP 5 (S5) powers the VM off: this is how Linux's `poweroff` ends a guest.

use super::{RequestSink, VmRequest};
use crate::bus::BusDevice;

/// I/O port of the sleep control register (the status register follows it).
pub const SLEEP_CONTROL_PORT: u64 = 0x3c0;
/// Length of the port range (control + status).
pub const SLEEP_PORTS_LEN: u64 = 2;
/// SLP_TYP value for S5 (soft off), as our DSDT's `_S5` says.
pub const S5_SLP_TYP: u8 = 5;

const SLP_EN: u8 = 1 << 5;

/// The sleep registers.
pub struct AcpiSleep {
    requests: RequestSink,
}

impl AcpiSleep {
    /// Sleep registers that send power-off to `requests`.
    pub fn new(requests: RequestSink) -> Self {
        Self { requests }
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // The status register reads 0 (no wake event pending).
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if offset == 0 && v & SLP_EN != 0 && (v >> 2) & 0x7 == S5_SLP_TYP {
            (self.requests)(VmRequest::PowerOff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn s5_powers_off_and_nothing_else_does() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut dev = AcpiSleep::new(Arc::new(move |r| s.lock().unwrap().push(r)));
        dev.write(0, &[(3 << 2) | SLP_EN]);
        dev.write(1, &[(5 << 2) | SLP_EN]);
        dev.write(0, &[5 << 2]);
        dev.write(0, &[]);
        assert!(seen.lock().unwrap().is_empty());
        dev.write(0, &[(5 << 2) | SLP_EN]);
        assert_eq!(*seen.lock().unwrap(), vec![VmRequest::PowerOff]);
    }
}
