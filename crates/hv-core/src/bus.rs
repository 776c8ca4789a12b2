//! The PIO and MMIO buses: address ranges mapped to devices.
//!
//! A vCPU exit for port I/O or MMIO is looked up here and handed to the device that owns the
//! address, with the offset into its range. Accesses nobody owns read as all ones and are
//! dropped on write, as on real hardware; they are counted for diagnostics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A device on a bus. Offsets are relative to the start of the range it was inserted at.
/// `data` is the access: its length is the access width (1, 2, 4 or 8 bytes, or more for
/// string MMIO), chosen by the guest.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors inserting devices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The range is empty or wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The range overlaps one already taken.
    #[error("bus range {base:#x}+{len:#x} overlaps a device at {other:#x}")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
        /// Start of the range it overlaps.
        other: u64,
    },
}

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// An address space of devices (the I/O port space or the MMIO space).
#[derive(Default)]
pub struct Bus {
    devices: RwLock<BTreeMap<u64, Entry>>,
    unhandled: AtomicU64,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let ranges: Vec<_> = devices.iter().map(|(b, e)| (*b, e.len)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `base..base+len`.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), Error> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(Error::InvalidRange { base, len });
        }
        let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
        if let Some((&other, e)) = devices.range(..base + len).next_back() {
            if other + e.len > base {
                return Err(Error::Overlap { base, len, other });
            }
        }
        devices.insert(base, Entry { len, device });
        Ok(())
    }

    /// Unmaps the device at `base`; returns it if there was one.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
        devices.remove(&base).map(|e| e.device)
    }

    fn find(&self, addr: u64, len: usize) -> Option<(SharedDevice, u64)> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let (&base, e) = devices.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        if offset.checked_add(len as u64)? <= e.len {
            Some((e.device.clone(), offset))
        } else {
            None
        }
    }

    /// Dispatches a read; returns false (and fills `data` with ones) when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((dev, offset)) => {
                dev.lock().unwrap_or_else(|e| e.into_inner()).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.unhandled.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Dispatches a write; returns false when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((dev, offset)) => {
                dev.lock().unwrap_or_else(|e| e.into_inner()).write(offset, data);
                true
            }
            None => {
                self.unhandled.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// How many accesses hit no device.
    pub fn unhandled_accesses(&self) -> u64 {
        self.unhandled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatches_by_range_and_refuses_overlaps() {
        let bus = Bus::new();
        bus.insert(0x10, 8, Arc::new(Mutex::new(Reg(1)))).unwrap();
        bus.insert(0x18, 8, Arc::new(Mutex::new(Reg(100)))).unwrap();
        assert_eq!(
            bus.insert(0x14, 2, Arc::new(Mutex::new(Reg(0)))),
            Err(Error::Overlap { base: 0x14, len: 2, other: 0x10 })
        );
        assert!(matches!(
            bus.insert(u64::MAX, 2, Arc::new(Mutex::new(Reg(0)))),
            Err(Error::InvalidRange { .. })
        ));
        let mut b = [0u8; 1];
        assert!(bus.read(0x12, &mut b));
        assert_eq!(b[0], 3);
        assert!(bus.write(0x18, &[7]));
        assert!(bus.read(0x19, &mut b));
        assert_eq!(b[0], 8);
        // An access straddling the end of a range is not the device's.
        let mut w = [0u8; 4];
        assert!(!bus.read(0x1e, &mut w));
        assert_eq!(w, [0xff; 4]);
        assert!(!bus.write(0x40, &[1]));
        assert_eq!(bus.unhandled_accesses(), 2);
        assert!(bus.remove(0x10).is_some());
        assert!(!bus.read(0x10, &mut b));
    }
}
