//! The boot CPU's state at kernel entry: GDT, identity page tables, segment and control
//! registers for PVH (32-bit, paging off) or the Linux 64-bit entry (long mode).

use hv_mem::GuestMemory;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{BOOT_STACK_TOP, GDT_START, IDT_START, PML4_START};
use super::{EntryPoint, Error, Result};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT selectors of the boot GDT.
pub const SEL_CODE32: u16 = 0x08;
/// Flat data segment.
pub const SEL_DATA: u16 = 0x10;
/// 64-bit code segment.
pub const SEL_CODE64: u16 = 0x18;
/// The task state segment.
pub const SEL_TSS: u16 = 0x20;

/// The boot GDT: null, 32-bit code, data, 64-bit code, TSS.
const GDT: [u64; 5] =
    [0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x00af_9b00_0000_ffff, 0x0000_8b00_0000_0067];

/// Builds a `kvm_segment` from a GDT descriptor.
fn segment(selector: u16, desc: u64) -> kvm_segment {
    let base = ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24);
    let limit_raw = (desc & 0xffff) | (((desc >> 48) & 0xf) << 16);
    let g = ((desc >> 55) & 1) as u8;
    let limit = if g == 1 { (limit_raw << 12) | 0xfff } else { limit_raw };
    kvm_segment {
        base,
        limit: limit as u32,
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        present: ((desc >> 47) & 1) as u8,
        dpl: ((desc >> 45) & 3) as u8,
        db: ((desc >> 54) & 1) as u8,
        s: ((desc >> 44) & 1) as u8,
        l: ((desc >> 53) & 1) as u8,
        g,
        avl: ((desc >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

fn mem_err(what: &'static str) -> impl Fn(vm_memory::GuestMemoryError) -> Error {
    move |source| Error::GuestMemory { what, source }
}

/// Writes the GDT, an empty IDT, and identity page tables for the first 4 GiB (2 MiB pages).
pub fn write_tables(mem: &GuestMemory) -> Result<()> {
    for (i, d) in GDT.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_START + i as u64 * 8)).map_err(mem_err("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START)).map_err(mem_err("IDT"))?;
    let pdpt = PML4_START + 0x1000;
    let pd0 = PML4_START + 0x2000;
    mem.write_obj(pdpt | 0x03, GuestAddress(PML4_START)).map_err(mem_err("page tables"))?;
    for g in 0..4u64 {
        let pd = pd0 + g * 0x1000;
        mem.write_obj(pd | 0x03, GuestAddress(pdpt + g * 8)).map_err(mem_err("page tables"))?;
        for i in 0..512u64 {
            let addr = (g << 30) | (i << 21);
            // Present, writable, 2 MiB page.
            mem.write_obj(addr | 0x83, GuestAddress(pd + i * 8)).map_err(mem_err("page tables"))?;
        }
    }
    Ok(())
}

/// Fills the segment and control registers for `entry`, starting from the vCPU's current
/// `sregs` (so KVM's defaults for the rest are kept).
pub fn setup_sregs(sregs: &mut kvm_sregs, entry: &EntryPoint) {
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    let data = segment(SEL_DATA, GDT[2]);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(SEL_TSS, GDT[4]);
    sregs.tr.type_ = 0xb; // busy TSS, as VM entry requires
    match entry {
        EntryPoint::Pvh(_) => {
            sregs.cs = segment(SEL_CODE32, GDT[1]);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryPoint::Linux64 { .. } => {
            sregs.cs = segment(SEL_CODE64, GDT[3]);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
}

/// The general registers at entry.
pub fn entry_regs(entry: &EntryPoint, boot_info: u64) -> kvm_regs {
    match *entry {
        EntryPoint::Pvh(rip) => kvm_regs { rip, rbx: boot_info, rflags: 0x2, ..Default::default() },
        EntryPoint::Linux64 { entry, .. } => kvm_regs {
            rip: entry,
            rsi: boot_info,
            rsp: BOOT_STACK_TOP,
            rbp: BOOT_STACK_TOP,
            rflags: 0x2,
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_descriptors_decode_to_flat_segments() {
        let cs = segment(SEL_CODE64, GDT[3]);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.type_, cs.present),
            (0, u32::MAX, 1, 0, 0xb, 1)
        );
        let cs32 = segment(SEL_CODE32, GDT[1]);
        assert_eq!((cs32.l, cs32.db, cs32.g), (0, 1, 1));
        let ds = segment(SEL_DATA, GDT[2]);
        assert_eq!((ds.type_, ds.s, ds.limit), (3, 1, u32::MAX));
        let tr = segment(SEL_TSS, GDT[4]);
        assert_eq!((tr.limit, tr.s, tr.present), (0x67, 0, 1));
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let ram = hv_mem::GuestRam::new(&hv_mem::MemoryConfig::new(64 << 20)).unwrap();
        write_tables(ram.memory()).unwrap();
        let m = ram.memory();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        let pdpt = pml4 & !0xfff;
        let pd3: u64 = m.read_obj(GuestAddress(pdpt + 3 * 8)).unwrap();
        let last: u64 = m.read_obj(GuestAddress((pd3 & !0xfff) + 511 * 8)).unwrap();
        assert_eq!(last & !0xfff, 0xffe0_0000);
        assert_eq!(last & 0x83, 0x83);
    }
}
