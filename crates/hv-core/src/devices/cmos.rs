//! The CMOS real-time clock and NVRAM (MC146818) at I/O ports 0x70/0x71: enough for Linux's
//! `rtc_cmos` and its boot-time clock read. Time is the host's UTC clock, read on every access,
//! in BCD and 24-hour mode, as PC firmware sets it up.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;

/// The CMOS index port (the data port follows it).
pub const CMOS_BASE: u64 = 0x70;
/// Length of the port range.
pub const CMOS_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Register B: 24-hour mode, BCD (DM bit clear).
const REG_B_24H: u8 = 0x02;
const REG_B_BINARY: u8 = 0x04;
/// Register D: valid RAM and time.
const REG_D_VRT: u8 = 0x80;
/// Register A: 32.768 kHz divider, 1024 Hz periodic rate; UIP clear.
const REG_A_DEFAULT: u8 = 0x26;

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, e.g. 2026.
    pub year: u32,
    /// Month 1..=12.
    pub month: u32,
    /// Day of month 1..=31.
    pub day: u32,
    /// Hour 0..=23.
    pub hour: u32,
    /// Minute 0..=59.
    pub minute: u32,
    /// Second 0..=59.
    pub second: u32,
    /// Day of week, 1 = Sunday.
    pub weekday: u32,
}

impl DateTime {
    /// Converts seconds since the Unix epoch (civil-from-days, proleptic Gregorian).
    pub fn from_unix(secs: u64) -> Self {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        // 1970-01-01 was a Thursday (weekday 5 with Sunday = 1).
        let weekday = ((days + 4).rem_euclid(7) + 1) as u32;
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
            weekday,
        }
    }
}

/// The CMOS registers a snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmosState {
    /// The selected register.
    pub index: u8,
    /// The 128 bytes of NVRAM (register values).
    pub nvram: Vec<u8>,
}

/// The CMOS device.
pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    clock: fn() -> u64,
}

fn host_clock() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl Cmos {
    /// A CMOS reading the host's clock.
    pub fn new() -> Self {
        Self::with_clock(host_clock)
    }

    /// A CMOS reading time from `clock` (seconds since the epoch), for tests.
    pub fn with_clock(clock: fn() -> u64) -> Self {
        let mut nvram = [0u8; 128];
        nvram[REG_A as usize] = REG_A_DEFAULT;
        nvram[REG_B as usize] = REG_B_24H;
        nvram[REG_D as usize] = REG_D_VRT;
        Self { index: 0, nvram, clock }
    }

    /// The index register and NVRAM, for a snapshot (the clock follows the host's).
    pub fn save(&self) -> CmosState {
        CmosState { index: self.index, nvram: self.nvram.to_vec() }
    }

    /// Restores a snapshot's state; false (and nothing changed) unless it holds 128 bytes.
    pub fn restore(&mut self, state: &CmosState) -> bool {
        match <[u8; 128]>::try_from(state.nvram.as_slice()) {
            Ok(nvram) => {
                self.nvram = nvram;
                self.index = state.index & 0x7f;
                true
            }
            Err(_) => false,
        }
    }

    fn encode(&self, v: u32) -> u8 {
        let v = (v % 100) as u8;
        if self.nvram[REG_B as usize] & REG_B_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn read_reg(&mut self, reg: u8) -> u8 {
        let t = DateTime::from_unix((self.clock)());
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode(t.hour),
            REG_WEEKDAY => self.encode(t.weekday),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year % 100),
            REG_CENTURY => self.encode(t.year / 100),
            REG_C => {
                // Reading C acknowledges pending interrupt flags.
                let v = self.nvram[REG_C as usize];
                self.nvram[REG_C as usize] = 0;
                v
            }
            r => self.nvram[usize::from(r & 0x7f)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(b) = data.first_mut() else { return };
        *b = match offset {
            0 => self.index,
            1 => self.read_reg(self.index),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            // Bit 7 of the index port is the NMI mask; the index is 7 bits.
            0 => self.index = v & 0x7f,
            1 => match self.index {
                // The clock follows the host; time writes and read-only registers are ignored.
                REG_SECONDS..=REG_YEAR | REG_C | REG_D | REG_CENTURY => {}
                // Keep 24-hour mode: Linux expects what it set, but we only honour DM (binary).
                REG_B => self.nvram[REG_B as usize] = (v & REG_B_BINARY) | REG_B_24H,
                i => self.nvram[usize::from(i)] = v,
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> u64 {
        // 2026-11-25 07:30:39 UTC, a Wednesday.
        1_795_591_839
    }

    fn reg(c: &mut Cmos, r: u8) -> u8 {
        c.write(0, &[r]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn converts_unix_time() {
        let t = DateTime::from_unix(fixed());
        assert_eq!((t.year, t.month, t.day), (2026, 11, 25));
        assert_eq!((t.hour, t.minute, t.second), (7, 30, 39));
        assert_eq!(t.weekday, 4);
        assert_eq!(DateTime::from_unix(0).weekday, 5);
        let leap = DateTime::from_unix(951_782_400); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    #[test]
    fn reads_bcd_time_and_binary_after_mode_switch() {
        let mut c = Cmos::with_clock(fixed);
        assert_eq!(reg(&mut c, REG_YEAR), 0x26);
        assert_eq!(reg(&mut c, REG_MONTH), 0x11);
        assert_eq!(reg(&mut c, REG_DAY), 0x25);
        assert_eq!(reg(&mut c, REG_HOURS), 0x07);
        assert_eq!(reg(&mut c, REG_SECONDS), 0x39);
        assert_eq!(reg(&mut c, REG_CENTURY), 0x20);
        assert_eq!(reg(&mut c, REG_D), REG_D_VRT);
        assert_eq!(reg(&mut c, REG_A) & 0x80, 0, "update-in-progress must read clear");
        c.write(0, &[REG_B]);
        c.write(1, &[REG_B_BINARY]);
        assert_eq!(reg(&mut c, REG_SECONDS), 39);
        // NVRAM keeps what is written; the NMI bit does not change the index.
        c.write(0, &[0x80 | 0x40]);
        c.write(1, &[0xab]);
        assert_eq!(reg(&mut c, 0x40), 0xab);
    }
}
