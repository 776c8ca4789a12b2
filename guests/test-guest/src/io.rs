//! Port I/O, MMIO and a few privileged instructions.

use core::arch::asm;

/// Writes a byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the guest runs at CPL0.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes 16 bits to an I/O port.
#[inline(always)]
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads 16 bits from an I/O port.
#[inline(always)]
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as for `inb`.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes 32 bits to an I/O port.
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads 32 bits from an I/O port.
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// A 32-bit write to a physical address (identity-mapped below 4 GiB).
#[inline(always)]
pub fn mmio_write32(paddr: u64, value: u32) {
    // SAFETY: the first 4 GiB are identity-mapped; the target is device memory or RAM the guest
    // owns, and a volatile write is exactly one 32-bit access.
    unsafe { core::ptr::write_volatile(paddr as *mut u32, value) }
}

/// A 32-bit read from a physical address (identity-mapped below 4 GiB).
#[inline(always)]
pub fn mmio_read32(paddr: u64) -> u32 {
    // SAFETY: as for `mmio_write32`.
    unsafe { core::ptr::read_volatile(paddr as *const u32) }
}

/// An 8-bit write to a physical address (identity-mapped below 4 GiB).
#[inline(always)]
pub fn mmio_write8(paddr: u64, value: u8) {
    // SAFETY: as for `mmio_write32`.
    unsafe { core::ptr::write_volatile(paddr as *mut u8, value) }
}

/// The time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The faulting address of the last page fault.
#[inline(always)]
pub fn cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects at CPL0.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Disables interrupts and halts forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli/hlt only stop this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// A short delay: `n` reads of port 0x61 (each one a VM exit, like a PC's I/O delay).
pub fn io_delay(n: u32) {
    for _ in 0..n {
        inb(0x61);
    }
}
