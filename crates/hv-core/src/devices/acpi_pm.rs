//! ACPI fixed hardware: the PM1a event and control blocks and the PM timer, at I/O ports
//! 0x600..0x60c, as the FADT describes them.
//!
//! - PM1a_CNT: writing SLP_EN with SLP_TYP 5 (S5, as our DSDT's `_S5` says) powers the VM off,
//!   which is how Linux's `poweroff` ends a guest. SCI_EN reads as set (ACPI mode is always on).
//! - PM1a_EVT: the fixed power button. [`AcpiPm::press_power_button`] sets PWRBTN_STS and,
//!   when the guest has enabled it, raises the SCI: a graceful shutdown request.
//! - PM_TMR: the 3.579545 MHz ACPI PM timer (32 bits), a clock reference the guest kernel
//!   calibrates its TSC and local APIC timer against.
//!
//! A full (not hardware-reduced) FADT also keeps Linux on the PIT and the 8259/IOAPIC
//! timer path, which works whether or not the guest can learn the TSC frequency.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{IrqLine, RequestSink, VmRequest};
use crate::bus::BusDevice;

/// First port of the block (PM1a_EVT_BLK).
pub const PM_BASE: u64 = 0x600;
/// PM1a_EVT_BLK: status (2 bytes) then enable (2 bytes).
pub const PM1A_EVT: u64 = PM_BASE;
/// PM1a_CNT_BLK (2 bytes).
pub const PM1A_CNT: u64 = PM_BASE + 4;
/// PM_TMR_BLK (4 bytes).
pub const PM_TMR: u64 = PM_BASE + 8;
/// Length of the whole block.
pub const PM_LEN: u64 = 12;
/// The SCI's interrupt line.
pub const SCI_IRQ: u32 = 9;
/// SLP_TYP value for S5 (soft off), as our DSDT's `_S5` says.
pub const S5_SLP_TYP: u8 = 5;
/// The PM timer's frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;

const PWRBTN_STS: u16 = 1 << 8;
const PWRBTN_EN: u16 = 1 << 8;
const SCI_EN: u16 = 1;
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;

/// The ACPI PM registers a snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {
    /// PM1a status.
    pub status: u16,
    /// PM1a enable.
    pub enable: u16,
    /// PM1a control.
    pub control: u16,
    /// Nanoseconds the PM timer had counted.
    pub timer_ns: u64,
}

/// The ACPI PM register block.
pub struct AcpiPm {
    requests: RequestSink,
    sci: IrqLine,
    status: u16,
    enable: u16,
    control: u16,
    start: Instant,
}

impl AcpiPm {
    /// A PM block raising `sci` and sending power-off to `requests`.
    pub fn new(requests: RequestSink, sci: IrqLine) -> Self {
        Self { requests, sci, status: 0, enable: 0, control: SCI_EN, start: Instant::now() }
    }

    /// Presses the power button: the guest sees a fixed power-button event (if it enabled it).
    /// Returns whether an interrupt was raised.
    pub fn press_power_button(&mut self) -> bool {
        self.status |= PWRBTN_STS;
        if self.enable & PWRBTN_EN != 0 {
            let _ = self.sci.eventfd().write(1);
            true
        } else {
            false
        }
    }

    /// The registers and the PM timer's elapsed time, for a snapshot.
    pub fn save(&self) -> AcpiPmState {
        AcpiPmState {
            status: self.status,
            enable: self.enable,
            control: self.control,
            timer_ns: u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Restores a snapshot's registers; the PM timer goes on from where it was.
    pub fn restore(&mut self, state: &AcpiPmState) {
        self.status = state.status;
        self.enable = state.enable;
        self.control = state.control | SCI_EN;
        let now = Instant::now();
        self.start = now.checked_sub(Duration::from_nanos(state.timer_ns)).unwrap_or(now);
    }

    fn timer(&self) -> u32 {
        let ns = self.start.elapsed().as_nanos();
        ((ns * u128::from(PM_TIMER_HZ) / 1_000_000_000) & 0xffff_ffff) as u32
    }

    fn reg_bytes(&self, reg: u64) -> [u8; 4] {
        match reg {
            0 => u32::from(self.status).to_le_bytes(),
            2 => u32::from(self.enable).to_le_bytes(),
            4 => u32::from(self.control).to_le_bytes(),
            8 => self.timer().to_le_bytes(),
            _ => [0; 4],
        }
    }
}

fn le16(data: &[u8]) -> u16 {
    match data {
        [a] => u16::from(*a),
        [a, b, ..] => u16::from_le_bytes([*a, *b]),
        [] => 0,
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // Registers are 16-bit (the timer 32-bit); byte reads of a register's high half work.
        let (reg, skip) = match offset {
            0..=1 => (0, offset),
            2..=3 => (2, offset - 2),
            4..=5 => (4, offset - 4),
            8..=11 => (8, offset - 8),
            _ => return,
        };
        let bytes = self.reg_bytes(reg);
        for (i, d) in data.iter_mut().enumerate() {
            if let Some(b) = bytes.get(skip as usize + i) {
                *d = *b;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let v = le16(data);
        match offset {
            // Status bits are write-one-to-clear.
            0 => self.status &= !v,
            2 => self.enable = v,
            4 => {
                if v & SLP_EN != 0 && (v >> SLP_TYP_SHIFT) & 0x7 == u16::from(S5_SLP_TYP) {
                    (self.requests)(VmRequest::PowerOff);
                }
                self.control = (v & !SLP_EN) | SCI_EN;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn pm() -> (AcpiPm, Arc<Mutex<Vec<VmRequest>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let dev = AcpiPm::new(
            Arc::new(move |r| s.lock().unwrap().push(r)),
            IrqLine::disconnected().unwrap(),
        );
        (dev, seen)
    }

    #[test]
    fn s5_powers_off_and_nothing_else_does() {
        let (mut dev, seen) = pm();
        dev.write(4, &((3 << 10) | SLP_EN).to_le_bytes());
        dev.write(4, &(5u16 << 10).to_le_bytes());
        dev.write(0, &[]);
        assert!(seen.lock().unwrap().is_empty());
        let mut b = [0u8; 2];
        dev.read(4, &mut b);
        assert_eq!(u16::from_le_bytes(b) & SCI_EN, SCI_EN, "ACPI mode reads as enabled");
        dev.write(4, &((5 << 10) | SLP_EN).to_le_bytes());
        assert_eq!(*seen.lock().unwrap(), vec![VmRequest::PowerOff]);
    }

    #[test]
    fn power_button_sets_status_and_raises_sci_only_when_enabled() {
        let (mut dev, _) = pm();
        assert!(!dev.press_power_button());
        let mut b = [0u8; 2];
        dev.read(0, &mut b);
        assert_eq!(u16::from_le_bytes(b), PWRBTN_STS);
        dev.write(0, &PWRBTN_STS.to_le_bytes());
        dev.read(0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0, "write-one-to-clear");
        dev.write(2, &PWRBTN_EN.to_le_bytes());
        assert!(dev.press_power_button());
        assert_eq!(dev.sci.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz() {
        let (mut dev, _) = pm();
        let mut a = [0u8; 4];
        let mut b = [0u8; 4];
        dev.read(8, &mut a);
        std::thread::sleep(std::time::Duration::from_millis(20));
        dev.read(8, &mut b);
        let ticks = u32::from_le_bytes(b).wrapping_sub(u32::from_le_bytes(a));
        // At least 20 ms worth; scheduling may make it more.
        assert!(ticks >= 71_000, "{ticks}");
        let mut odd = [0u8; 3];
        dev.read(9, &mut odd);
        dev.read(100, &mut odd);
        assert_eq!(odd, [0, 0, 0]);
    }
}
