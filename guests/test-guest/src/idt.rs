//! The interrupt descriptor table: the 32 exception vectors, each reporting on the serial port
//! and powering off (a page fault prints its address).

use core::arch::asm;

use crate::boot::hv_isr_table;
use crate::serial::Line;

#[repr(C, align(16))]
struct Idt([u64; 64]);

static mut IDT: Idt = Idt([0; 64]);

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

/// Fills the IDT with the exception stubs and loads it on this CPU.
pub fn install() {
    // SAFETY: hv_isr_table is immutable data defined in boot.rs.
    let table = unsafe { &hv_isr_table };
    for (vector, &handler) in table.iter().enumerate() {
        // A 64-bit interrupt gate: selector 0x08, present, DPL 0, type 0xe.
        let low =
            (handler & 0xffff) | (0x08 << 16) | (0x8e << 40) | ((handler >> 16) & 0xffff) << 48;
        // SAFETY: only the BSP writes the IDT, before any AP runs or any exception is expected.
        unsafe {
            let idt = &raw mut IDT;
            (*idt).0[vector * 2] = low;
            (*idt).0[vector * 2 + 1] = handler >> 32;
        }
    }
    load();
}

/// Loads the (already filled) IDT on this CPU.
pub fn load() {
    let pointer = Pointer { limit: (32 * 16 - 1) as u16, base: (&raw const IDT) as u64 };
    // SAFETY: the IDT is static and filled with valid gates.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) }
}

/// Loads an empty IDT (limit 0): the next exception triple-faults.
pub fn load_empty() {
    let pointer = Pointer { limit: 0, base: 0 };
    // SAFETY: an empty IDT is valid to load; it only makes exceptions fatal.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) }
}

/// Called by the stubs with the frame `[vector, error, rip, cs, rflags, rsp, ss]`.
#[no_mangle]
extern "C" fn rust_exception(frame: *const u64) -> ! {
    // SAFETY: the stub passes its stack pointer, under which the CPU and the stub pushed 7 words.
    let [vector, error, rip] = unsafe { [*frame, *frame.add(1), *frame.add(2)] };
    if vector == 14 {
        Line::new().s("page fault at ").hex(crate::io::cr2(), 1).print();
    } else {
        Line::new()
            .s("exception ")
            .dec(vector)
            .s(" error ")
            .hex(error, 1)
            .s(" at rip ")
            .hex(rip, 1)
            .print();
    }
    crate::power::power_off()
}
