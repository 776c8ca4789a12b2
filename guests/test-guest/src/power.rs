//! Powering off (ACPI S5) and resetting.
//!
//! Order tried by [`power_off`]: the FADT's X_SLEEP_CONTROL_REG when the FADT is HW-reduced,
//! then PM1a_CNT_BLK, then the i8042 reset line, then `cli; hlt` forever.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::acpi::Fadt;
use crate::io::{halt_forever, inw, io_delay, mmio_write8, outb, outw};

/// FADT flags bit 20.
const HW_REDUCED_ACPI: u32 = 1 << 20;
/// SLP_TYP = 5 (S5) in bits 2..5 of the sleep control register, SLP_EN in bit 5.
const SLEEP_CONTROL_S5: u8 = (5 << 2) | (1 << 5);
/// SLP_TYP = 5 in bits 10..13 of PM1_CNT, SLP_EN in bit 13.
const PM1_CNT_S5: u16 = (5 << 10) | (1 << 13);

const SPACE_NONE: u8 = 0xff;
static SLEEP_SPACE: AtomicU8 = AtomicU8::new(SPACE_NONE);
static SLEEP_ADDR: AtomicU64 = AtomicU64::new(0);
static PM1A_CNT: AtomicU32 = AtomicU32::new(0);
static PM1A_EVT: AtomicU32 = AtomicU32::new(0);

/// PWRBTN_STS in PM1 status, PWRBTN_EN in PM1 enable.
const PWRBTN: u16 = 1 << 8;

/// Remembers how to power off, from the FADT.
pub fn init(fadt: Option<&Fadt>) {
    let Some(fadt) = fadt else { return };
    if fadt.flags & HW_REDUCED_ACPI != 0 {
        if let Some(gas) = fadt.sleep_control {
            SLEEP_ADDR.store(gas.address, Ordering::Relaxed);
            SLEEP_SPACE.store(gas.space_id, Ordering::Relaxed);
        }
    }
    PM1A_CNT.store(fadt.pm1a_cnt, Ordering::Relaxed);
    PM1A_EVT.store(fadt.pm1a_evt, Ordering::Relaxed);
}

/// Enables the ACPI fixed power-button event and polls for it (the way an OS would take it
/// from the SCI), then acknowledges it. False when the FADT has no PM1a event block.
pub fn wait_power_button() -> bool {
    let evt = PM1A_EVT.load(Ordering::Relaxed);
    if evt == 0 || evt > 0xfffd {
        return false;
    }
    let (status, enable) = (evt as u16, evt as u16 + 2);
    outw(enable, PWRBTN);
    loop {
        if inw(status) & PWRBTN != 0 {
            outw(status, PWRBTN); // write one to clear
            return true;
        }
        io_delay(100);
    }
}

/// Resets through the i8042 controller (port 0x64, command 0xfe).
pub fn reset() {
    outb(0x64, 0xfe);
}

/// Powers the VM off; never returns.
pub fn power_off() -> ! {
    let addr = SLEEP_ADDR.load(Ordering::Relaxed);
    match SLEEP_SPACE.load(Ordering::Relaxed) {
        0 if addr < 1 << 32 => mmio_write8(addr, SLEEP_CONTROL_S5),
        1 if addr <= 0xffff => outb(addr as u16, SLEEP_CONTROL_S5),
        _ => {}
    }
    // A VMM may stop the vCPU only after the write returns: give it a few exits to do so.
    io_delay(100);
    let pm1a = PM1A_CNT.load(Ordering::Relaxed);
    if pm1a != 0 && pm1a <= 0xffff {
        outw(pm1a as u16, PM1_CNT_S5);
        io_delay(100);
    }
    reset();
    io_delay(100);
    halt_forever()
}
