//! Running a device loop at CPL3 (user mode), which PVM hosts run natively (CPL0 is emulated
//! there at ~4 MIPS): [`run_at_cpl3`] calls `f(arg)` at CPL3 and returns when it is done.
//!
//! How: a copy of the boot GDT with a user data segment, a 64-bit user code segment and a TSS
//! (RSP0 = a fresh kernel stack); a copy of the IDT whose vector 3 is a DPL3 gate to
//! `hv_ring3_return`; the user bit on every level of the identity map. `hv_ring3_enter` saves
//! the callee-saved registers and the stack pointer and `iretq`s to the function on a user
//! stack; the function ends with `int3`, whose handler restores the saved stack and returns.
//! Interrupts stay off. Device registers are reached by MMIO (an `out` at CPL3 would fault:
//! `iretq` leaves IOPL 0), and nothing at CPL3 prints. Everything is undone afterwards except
//! the TSS (`ltr` marks it busy, so the set-up is done once per boot).

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::alloc;

/// User data (RPL 3) and 64-bit user code (RPL 3) selectors in the extended GDT; the boot GDT
/// has four entries (null, code64, data, code32), so these follow it.
const USER_DS: u64 = 0x20 | 3;
const USER_CS: u64 = 0x28 | 3;
const TSS_SEL: u16 = 0x30;
/// Page-table bit: user accessible.
const PTE_USER: u64 = 1 << 2;
const PTE_PRESENT: u64 = 1;
const PTE_LARGE: u64 = 1 << 7;
const STACK: u64 = 64 * 1024;

/// The kernel stack pointer `hv_ring3_enter` saved (read by `hv_ring3_return`).
#[no_mangle]
static HV_RING3_KERNEL_RSP: AtomicU64 = AtomicU64::new(0);
static TSS_LOADED: AtomicBool = AtomicBool::new(false);
static GDT_PTR: AtomicU64 = AtomicU64::new(0);

extern "C" {
    fn hv_ring3_enter(entry: u64, arg: u64, user_rsp: u64, user_cs: u64, user_ds: u64);
    fn hv_ring3_return();
}

global_asm!(
    r#"
    .section .text.hv_ring3, "ax"
    .global hv_ring3_enter
hv_ring3_enter:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + {saved}], rsp
    push r8                 /* SS */
    push rdx                /* RSP */
    pushfq                  /* RFLAGS (IF stays clear) */
    push rcx                /* CS */
    push rdi                /* RIP */
    mov rdi, rsi            /* the function's argument */
    iretq

    .global hv_ring3_return
hv_ring3_return:            /* int3 from CPL3: on the TSS's RSP0 stack, CPL0 */
    mov rsp, [rip + {saved}]
    mov ax, 0x10
    mov ss, ax
    mov ds, ax
    mov es, ax
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
    "#,
    saved = sym HV_RING3_KERNEL_RSP,
);

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

fn sgdt() -> (u64, u16) {
    let mut p = Pointer { limit: 0, base: 0 };
    // SAFETY: sgdt stores 10 bytes into `p`.
    unsafe { asm!("sgdt [{}]", in(reg) &raw mut p, options(nostack, preserves_flags)) };
    (p.base, p.limit)
}

fn sidt() -> (u64, u16) {
    let mut p = Pointer { limit: 0, base: 0 };
    // SAFETY: sidt stores 10 bytes into `p`.
    unsafe { asm!("sidt [{}]", in(reg) &raw mut p, options(nostack, preserves_flags)) };
    (p.base, p.limit)
}

fn lidt(base: u64, limit: u16) {
    let p = Pointer { limit, base };
    // SAFETY: callers pass a table of valid gates.
    unsafe { asm!("lidt [{}]", in(reg) &p, options(readonly, nostack, preserves_flags)) }
}

fn rd(addr: u64) -> u64 {
    // SAFETY: addresses of descriptor and page tables, identity-mapped.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

fn wr(addr: u64, v: u64) {
    // SAFETY: as for `rd`; the tables are the guest's own.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}

/// Sets (or clears) the user bit on the PML4 entry 0, its four PDPT entries and their PDEs
/// (the identity map of 0..4 GiB), then flushes the TLB.
fn user_map(on: bool) {
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects at CPL0.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    let set = |addr: u64| {
        let v = rd(addr);
        if v & PTE_PRESENT != 0 {
            wr(addr, if on { v | PTE_USER } else { v & !PTE_USER });
        }
    };
    let mask = !0xfffu64 & ((1 << 52) - 1);
    let pml4 = cr3 & mask;
    set(pml4);
    let pdpt = rd(pml4) & mask;
    for i in 0..4 {
        set(pdpt + 8 * i);
        let pdpte = rd(pdpt + 8 * i);
        if pdpte & PTE_PRESENT == 0 || pdpte & PTE_LARGE != 0 {
            continue;
        }
        let pd = pdpte & mask;
        for j in 0..512 {
            set(pd + 8 * j);
        }
    }
    // SAFETY: reloading CR3 with its own value only flushes the TLB.
    unsafe { asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags)) };
}

/// Loads the GDT with user segments and the TSS, once per boot.
fn load_gdt_and_tss() -> bool {
    if TSS_LOADED.load(Ordering::Relaxed) {
        return true;
    }
    let (old, limit) = sgdt();
    if limit != 31 {
        return false; // not the boot GDT this module extends
    }
    let (Some(gdt), Some(tss), Some(kstack)) = (alloc(64, 16), alloc(104, 16), alloc(STACK, 16))
    else {
        return false;
    };
    for i in 0..4 {
        wr(gdt + 8 * i, rd(old + 8 * i));
    }
    // Accessed bits preset, as in the boot GDT (no descriptor writes by the CPU).
    wr(gdt + 0x20, 0x00cf_f300_0000_ffff); // user data, DPL 3
    wr(gdt + 0x28, 0x00af_fb00_0000_ffff); // 64-bit user code, DPL 3
    super::zero(tss, 104);
    wr(tss + 4, kstack + STACK); // RSP0 (unaligned field, as the TSS lays it out)
                                 // SAFETY: the I/O map base field of the TSS we own: past the limit, so no I/O bitmap.
    unsafe { core::ptr::write_volatile((tss + 102) as *mut u16, 104) };
    let tss_limit = 103u64;
    let low = (tss_limit & 0xffff)
        | ((tss & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((tss_limit >> 16) & 0xf) << 48)
        | (((tss >> 24) & 0xff) << 56);
    wr(gdt + 0x30, low);
    wr(gdt + 0x38, tss >> 32);
    let p = Pointer { limit: 63, base: gdt };
    // SAFETY: the new GDT keeps the boot selectors (CS 0x08, data 0x10) at the same places,
    // so the loaded segment registers stay valid; the TSS descriptor points at our TSS.
    unsafe {
        asm!("lgdt [{}]", in(reg) &p, options(readonly, nostack, preserves_flags));
        asm!("ltr {0:x}", in(reg) TSS_SEL, options(nostack, preserves_flags));
    }
    GDT_PTR.store(gdt, Ordering::Relaxed);
    TSS_LOADED.store(true, Ordering::Relaxed);
    true
}

/// Runs `f(arg)` at CPL3 on a fresh user stack; `f` must end with `int3` (see [`finish`]).
/// Returns false (without running it) when the set-up is impossible here.
pub fn run_at_cpl3(f: extern "C" fn(u64) -> !, arg: u64) -> bool {
    if !load_gdt_and_tss() {
        return false;
    }
    let (old_idt, idt_limit) = sidt();
    let Some(idt) = alloc(u64::from(idt_limit) + 1, 16) else { return false };
    for i in 0..(u64::from(idt_limit) + 1) / 8 {
        wr(idt + 8 * i, rd(old_idt + 8 * i));
    }
    // Vector 3: an interrupt gate, DPL 3 (reachable by int3 from CPL3), to hv_ring3_return.
    let handler = hv_ring3_return as *const () as u64;
    let low = (handler & 0xffff) | (0x08 << 16) | (0xee << 40) | ((handler >> 16) & 0xffff) << 48;
    wr(idt + 3 * 16, low);
    wr(idt + 3 * 16 + 8, handler >> 32);
    let Some(ustack) = alloc(STACK, 16) else { return false };
    user_map(true);
    lidt(idt, idt_limit);
    // SAFETY: enters `f` at CPL3 with a valid user stack (the -8 mimics a call's return
    // address slot for the ABI's alignment); `f` comes back only through int3, whose handler
    // restores this stack and the callee-saved registers and returns here.
    unsafe { hv_ring3_enter(f as *const () as u64, arg, ustack + STACK - 8, USER_CS, USER_DS) };
    lidt(old_idt, idt_limit);
    user_map(false);
    true
}

/// Ends a CPL3 function: back to [`run_at_cpl3`]'s caller at CPL0.
pub fn finish() -> ! {
    loop {
        // SAFETY: int3 goes to the DPL3 gate `run_at_cpl3` installed, which never returns
        // here.
        unsafe { asm!("int3", options(nostack)) }
    }
}
