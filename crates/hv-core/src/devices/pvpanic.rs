//! The pvpanic device (QEMU's `QEMU0001`, I/O port 0x505): a guest kernel with the pvpanic
//! driver writes here from its panic notifier, so a guest panic becomes a crash the VMM sees at
//! once, with the vCPU state, instead of a silent hang or an ambiguous reboot.

use super::{RequestSink, VmRequest};
use crate::bus::BusDevice;

/// The pvpanic I/O port.
pub const PVPANIC_PORT: u64 = 0x505;
/// The guest panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// The guest loaded a crash kernel (kdump) and goes on into it.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The device: reading tells the guest which events we support.
pub struct PvPanic {
    requests: RequestSink,
}

impl PvPanic {
    /// A pvpanic device reporting to `requests`.
    pub fn new(requests: RequestSink) -> Self {
        Self { requests }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        // A crash kernel taking over is not the end of the VM; a panic is.
        if data.first().is_some_and(|b| b & PVPANIC_PANICKED != 0) {
            (self.requests)(VmRequest::GuestPanic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_panic_write_is_reported_and_crash_loaded_is_not() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut dev = PvPanic::new(Arc::new(move |r| s.lock().unwrap().push(r)));
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], 3);
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        dev.write(0, &[]);
        assert!(seen.lock().unwrap().is_empty());
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(*seen.lock().unwrap(), vec![VmRequest::GuestPanic]);
    }
}
