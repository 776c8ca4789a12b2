//! Bringing up the other CPUs of the MADT with INIT-SIPI-SIPI through the xAPIC.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::acpi::Cpus;
use crate::boot::{trampoline, MAX_APS, TRAMPOLINE_ADDR};
use crate::io::{io_delay, mmio_read32, mmio_write32, rdtsc};
use crate::serial::Line;

const LAPIC: u64 = 0xfee0_0000;
const LAPIC_ID: u64 = 0x20;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_ICR_LOW: u64 = 0x300;
const LAPIC_ICR_HIGH: u64 = 0x310;
const ICR_PENDING: u32 = 1 << 12;
/// INIT, level assert.
const ICR_INIT: u32 = 0x0000_4500;
/// Start-up, level assert; the vector is the trampoline page.
const ICR_SIPI: u32 = 0x0000_4600 | (TRAMPOLINE_ADDR >> 12) as u32;
/// How long the BSP waits for the APs, in TSC ticks (some seconds at any plausible rate).
const AP_WAIT_TSC: u64 = 30_000_000_000;

/// APs that reached `rust_ap_main`.
static APS_UP: AtomicU32 = AtomicU32::new(0);

/// This CPU's xAPIC ID.
pub fn apic_id() -> u32 {
    mmio_read32(LAPIC + LAPIC_ID) >> 24
}

fn send_ipi(dest: u32, command: u32) {
    mmio_write32(LAPIC + LAPIC_ICR_HIGH, dest << 24);
    mmio_write32(LAPIC + LAPIC_ICR_LOW, command);
    for _ in 0..100_000 {
        if mmio_read32(LAPIC + LAPIC_ICR_LOW) & ICR_PENDING == 0 {
            break;
        }
        core::hint::spin_loop();
    }
}

/// Starts every other enabled CPU and waits for them; returns how many CPUs run (with the BSP).
pub fn start_aps(cpus: Option<&Cpus>) -> u32 {
    let Some(cpus) = cpus else { return 1 };
    let tramp = trampoline();
    // SAFETY: 0x8000..0x9000 is guest RAM that nothing uses any more (the start info, command
    // line and ACPI tables were copied out at boot); the trampoline is far smaller than a page.
    unsafe {
        core::ptr::copy_nonoverlapping(tramp.as_ptr(), TRAMPOLINE_ADDR as *mut u8, tramp.len())
    };
    // Software-enable the local APIC (spurious vector 0xff).
    mmio_write32(LAPIC + LAPIC_SVR, 0x1ff);
    let me = apic_id();
    let mut started = 0u32;
    for &id in &cpus.apic_ids[..cpus.recorded] {
        if id == me {
            continue;
        }
        if id >= 0xff || started as usize >= MAX_APS {
            Line::new()
                .s("cpu ")
                .dec(u64::from(id))
                .s(" skipped (xAPIC ID or stack limit)")
                .print();
            continue;
        }
        send_ipi(id, ICR_INIT);
        io_delay(100);
        send_ipi(id, ICR_SIPI);
        io_delay(30);
        send_ipi(id, ICR_SIPI);
        started += 1;
    }
    let start = rdtsc();
    while APS_UP.load(Ordering::Acquire) < started {
        if rdtsc().wrapping_sub(start) > AP_WAIT_TSC {
            Line::new()
                .s("smp timeout: ")
                .dec(u64::from(APS_UP.load(Ordering::Acquire)))
                .s(" of ")
                .dec(u64::from(started))
                .s(" APs came up")
                .print();
            break;
        }
        core::hint::spin_loop();
    }
    1 + APS_UP.load(Ordering::Acquire)
}

/// Where each AP lands in Rust, on its own stack, after the trampoline and long mode.
#[no_mangle]
extern "C" fn rust_ap_main(_index: u32) -> ! {
    crate::idt::load();
    Line::new().s("cpu ").dec(u64::from(apic_id())).s(" up").print();
    APS_UP.fetch_add(1, Ordering::Release);
    crate::io::halt_forever()
}
