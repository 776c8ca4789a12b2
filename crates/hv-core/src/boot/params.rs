//! What the kernel reads at entry: PVH `hvm_start_info` or the Linux zero page, each with the
//! guest's memory map built from the `hv-mem` layout.

use hv_mem::{GuestMemory, MemoryLayout};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use super::layout::{CMDLINE_START, PVH_INFO_START, ZERO_PAGE_START};
use super::{Error, LoadedInitrd, Result};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const PVH_MAGIC: u32 = 0x336e_c578;
/// Linux's boot-protocol "loader type" for an unregistered boot loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `loadflags` bit: the kernel was loaded high (at 1 MiB).
const LOADED_HIGH: u8 = 0x01;
/// `loadflags` bit: the loader may use the heap (no heap here, but harmless).
const CAN_USE_HEAP: u8 = 0x80;

/// `(start, len, e820 type)` entries for the guest: usable RAM and the legacy BIOS hole.
pub fn e820_entries(layout: &MemoryLayout) -> Vec<(u64, u64, u32)> {
    let mut out: Vec<(u64, u64, u32)> =
        layout.usable_ram().iter().map(|r| (r.start, r.len, E820_RAM)).collect();
    out.push((
        hv_mem::layout::EBDA_START,
        hv_mem::layout::HIMEM_START - hv_mem::layout::EBDA_START,
        E820_RESERVED,
    ));
    out.sort_by_key(|e| e.0);
    out
}

/// Writes PVH `hvm_start_info`, the initrd module entry and the memory map.
pub fn write_pvh(
    mem: &GuestMemory,
    layout: &MemoryLayout,
    initrd: Option<LoadedInitrd>,
    rsdp: Option<u64>,
) -> Result<u64> {
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    let modlist_addr = PVH_INFO_START + std::mem::size_of::<hvm_start_info>() as u64;
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    let mut memmap_addr = modlist_addr;
    if let Some(rd) = initrd {
        let module = hvm_modlist_entry { paddr: rd.addr, size: rd.size, ..Default::default() };
        params.set_modules(&[module], GuestAddress(modlist_addr));
        info.nr_modules = 1;
        info.modlist_paddr = modlist_addr;
        memmap_addr += std::mem::size_of::<hvm_modlist_entry>() as u64;
    }
    let memmap: Vec<hvm_memmap_table_entry> = e820_entries(layout)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry { addr, size, type_, reserved: 0 })
        .collect();
    info.memmap_paddr = memmap_addr;
    info.memmap_entries = memmap.len() as u32;
    params.header = vm_memory::ByteValued::as_slice(&info).to_vec();
    params.set_sections(&memmap, GuestAddress(memmap_addr));
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem).map_err(|e| {
        Error::GuestMemory {
            what: "PVH start info",
            source: vm_memory::GuestMemoryError::IOError(std::io::Error::other(e.to_string())),
        }
    })?;
    Ok(PVH_INFO_START)
}

/// Writes the Linux zero page for a 64-bit entry.
pub fn write_zero_page(
    mem: &GuestMemory,
    layout: &MemoryLayout,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
    rsdp: Option<u64>,
) -> Result<u64> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;
    if let Some(rd) = initrd {
        params.hdr.ramdisk_image = rd.addr as u32;
        params.hdr.ramdisk_size = rd.size as u32;
        params.ext_ramdisk_image = (rd.addr >> 32) as u32;
        params.ext_ramdisk_size = (rd.size >> 32) as u32;
    }
    params.acpi_rsdp_addr = rsdp.unwrap_or(0);
    let entries = e820_entries(layout);
    for (i, (addr, size, kind)) in entries.iter().take(params.e820_table.len()).enumerate() {
        params.e820_table[i] = boot_e820_entry { addr: *addr, size: *size, r#type: *kind };
    }
    params.e820_entries = entries.len().min(params.e820_table.len()) as u8;
    let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(&bp, mem).map_err(|e| {
        Error::GuestMemory {
            what: "zero page",
            source: vm_memory::GuestMemoryError::IOError(std::io::Error::other(e.to_string())),
        }
    })?;
    Ok(ZERO_PAGE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_has_ram_and_the_bios_hole_in_order() {
        let layout = MemoryLayout::x86_64(256 << 20).unwrap();
        let e = e820_entries(&layout);
        assert_eq!(e[0], (0, 0x9fc00, E820_RAM));
        assert_eq!(e[1], (0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED));
        assert_eq!(e[2], (0x100000, (256 << 20) - 0x100000, E820_RAM));
    }
}
