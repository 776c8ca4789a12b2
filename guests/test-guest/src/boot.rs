//! The PVH entry, the switch to long mode (BSP and APs), the static GDT and page tables, the AP
//! real-mode trampoline, the stacks and the exception stubs.
//!
//! Layout facts the rest of the guest relies on:
//! - the first 4 GiB are identity-mapped with 2 MiB pages (3..4 GiB, the MMIO hole with the
//!   LAPIC and IOAPIC, uncached); nothing above 4 GiB is mapped;
//! - GDT selectors: 0x08 64-bit code, 0x10 data, 0x18 32-bit code;
//! - `rust_main(start_info_paddr)` runs on the BSP stack with interrupts off, CR4.OSFXSR set.

use core::arch::global_asm;

/// Size of each application processor's stack.
pub const AP_STACK_SIZE: usize = 16 * 1024;
/// The most application processors the guest brings up (the rest of the MADT is ignored).
pub const MAX_APS: usize = 63;
/// Where the AP trampoline is copied to; the SIPI vector is this address >> 12.
pub const TRAMPOLINE_ADDR: usize = 0x8000;

/// One 4 KiB page-table page.
#[repr(C, align(4096))]
pub struct PageTable([u64; 512]);

/// Present, writable, 2 MiB page.
const PDE_LARGE: u64 = 0x83;
/// Write-through and cache-disable, for the MMIO hole.
const PDE_UNCACHED: u64 = 0x18;
/// Start of the MMIO hole (LAPIC, IOAPIC, PCI and virtio-mmio windows).
const MMIO_HOLE: u64 = 0xc000_0000;

const fn identity_pds() -> [PageTable; 4] {
    let mut pds =
        [PageTable([0; 512]), PageTable([0; 512]), PageTable([0; 512]), PageTable([0; 512])];
    let mut i = 0;
    while i < 2048 {
        let addr = (i as u64) << 21;
        let flags = if addr >= MMIO_HOLE { PDE_LARGE | PDE_UNCACHED } else { PDE_LARGE };
        pds[i / 512].0[i % 512] = addr | flags;
        i += 1;
    }
    pds
}

/// The page directories for 0..4 GiB, built at compile time (loaded with the image, so the
/// boot path does not spend emulated instructions filling them).
#[no_mangle]
#[link_section = ".data.pagetables"]
static mut HV_PD: [PageTable; 4] = identity_pds();
/// PML4 and PDPT: in .data (not .bss) so they are zero before the entry code links them.
#[no_mangle]
#[link_section = ".data.pagetables"]
static mut HV_PML4: PageTable = PageTable([0; 512]);
#[no_mangle]
#[link_section = ".data.pagetables"]
static mut HV_PDPT: PageTable = PageTable([0; 512]);

extern "C" {
    static hv_trampoline_start: u8;
    static hv_trampoline_end: u8;
    /// Addresses of the 32 exception stubs.
    pub static hv_isr_table: [u64; 32];
}

/// The AP trampoline's code (position-dependent: it must run at [`TRAMPOLINE_ADDR`]).
pub fn trampoline() -> &'static [u8] {
    // SAFETY: both symbols are defined in the global_asm below, in one section, start <= end;
    // the bytes between them are immutable code.
    unsafe {
        let start = &raw const hv_trampoline_start;
        let end = &raw const hv_trampoline_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .balign 4
    .long 4                 /* namesz: "Xen\0" */
    .long 8                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32       /* 8 bytes: QEMU reads a 64-bit value, linux-loader the low 32 */

    .section .data.gdt, "aw"
    .balign 16
hv_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code (accessed bit preset: no GDT writes) */
    .quad 0x00cf93000000ffff    /* 0x10: flat data */
    .quad 0x00cf9b000000ffff    /* 0x18: flat 32-bit code (AP trampoline) */
hv_gdt_end:
    .balign 8
hv_gdt_ptr:
    .word hv_gdt_end - hv_gdt - 1
    .quad hv_gdt
    .balign 4
hv_ap_next:
    .long 0

    .section .rodata.boot, "a"
hv_boot_msg:
    .asciz "hvtest: boot\n"

    .section .stacks, "aw", @nobits
    .balign 4096
    .skip 65536
hv_bsp_stack_top:
    .global hv_ap_stacks
hv_ap_stacks:
    .skip {ap_stack} * {max_aps}

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
/* PVH entry: 32-bit protected mode, paging off, ebx = hvm_start_info. */
pvh_start32:
    cli
    cld
    mov %ebx, %esi
    /* The very first output, before anything else: "hvtest: boot". */
    mov $hv_boot_msg, %edi
1:  movzbl (%edi), %ecx
    test %ecx, %ecx
    jz 3f
    mov $0x3fd, %dx
2:  in %dx, %al
    test $0x20, %al
    jz 2b
    mov $0x3f8, %dx
    mov %cl, %al
    out %al, %dx
    inc %edi
    jmp 1b
3:  /* Link PML4[0] -> PDPT, PDPT[0..4] -> the four static page directories. */
    mov $HV_PDPT + 3, %eax
    mov %eax, HV_PML4
    mov $HV_PD + 3, %eax
    mov %eax, HV_PDPT
    add $0x1000, %eax
    mov %eax, HV_PDPT + 8
    add $0x1000, %eax
    mov %eax, HV_PDPT + 16
    add $0x1000, %eax
    mov %eax, HV_PDPT + 24
    xor %edi, %edi          /* edi = 0: the BSP */

/* Common to BSP and APs: 32-bit flat mode -> long mode. In: esi = start_info, edi = 0 BSP/1 AP. */
hv_long32:
    mov $HV_PML4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x620, %eax         /* PAE | OSFXSR | OSXMMEXCPT */
    mov %eax, %cr4
    mov $0xc0000080, %ecx   /* EFER */
    rdmsr
    or $0x100, %eax         /* LME */
    wrmsr
    mov %cr0, %eax
    and $0xfffffffb, %eax   /* clear EM */
    or $0x80000003, %eax    /* PG | MP | PE */
    mov %eax, %cr0
    lgdt hv_gdt_ptr
    ljmp $0x08, $hv_start64

/* APs arrive here from the trampoline, in flat 32-bit mode. */
hv_ap32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $1, %edi
    jmp hv_long32

    .code64
hv_start64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    test %edi, %edi
    jnz hv_ap64
    mov $hv_bsp_stack_top, %rsp
    /* Zero .bss (the loader may not have). */
    mov $__bss_start, %rdi
    mov $__bss_end, %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb
    mov %esi, %edi          /* rust_main(start_info paddr), zero-extended */
    call rust_main
4:  cli
    hlt
    jmp 4b

hv_ap64:
    mov $1, %eax
    lock xadd %eax, hv_ap_next(%rip)
    cmp ${max_aps}, %eax
    jae 4b                  /* more APs than stacks: park it */
    mov %eax, %edi          /* rust_ap_main(index) */
    lea 1(%rax), %rcx
    imul ${ap_stack}, %rcx
    add $hv_ap_stacks, %rcx
    mov %rcx, %rsp
    call rust_ap_main
    jmp 4b

/* Exception stubs: push a zero error code where the CPU pushes none, then the vector. */
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
hv_isr\n:
    push $0
    push $\n
    jmp hv_isr_common
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
hv_isr\n:
    push $\n
    jmp hv_isr_common
    .endr
hv_isr_common:
    mov %rsp, %rdi          /* rust_exception(&[vector, error, rip, cs, rflags, rsp, ss]) */
    and $-16, %rsp
    call rust_exception
5:  cli
    hlt
    jmp 5b

    .section .rodata.isr, "a"
    .balign 8
    .global hv_isr_table
hv_isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad hv_isr\n
    .endr

/* The AP trampoline, copied to 0x8000 and entered by SIPI vector 0x08 (cs = 0x800, ip = 0). */
    .section .text.boot, "ax"
    .code16
    .global hv_trampoline_start
hv_trampoline_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl {tramp} + (hv_tramp_gdtp - hv_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $hv_ap32
    .balign 8
hv_tramp_gdtp:
    .word hv_gdt_end - hv_gdt - 1
    .long hv_gdt
    .global hv_trampoline_end
hv_trampoline_end:
    .code64
"#,
    ap_stack = const AP_STACK_SIZE,
    max_aps = const MAX_APS,
    tramp = const TRAMPOLINE_ADDR,
    options(att_syntax)
);
