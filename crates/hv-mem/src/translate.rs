//! Guest address translation: guest virtual -> guest physical -> host.
//!
//! A [`Translator`] walks the guest's own x86_64 page tables from CR3, as the CPU would, to
//! turn a guest virtual address into a guest physical one, then asks vm-memory for the host
//! address. A debugger, a crash dumper and an instruction emulator need this.
//!
//! The page tables are guest memory and the guest controls them, so the walk trusts nothing
//! in them: every table entry is read through vm-memory's checked accessors, a table outside
//! guest RAM is an error ([`TranslateError::OutOfGuestMemory`]), and no address is ever formed
//! from an entry without masking it to the architectural physical address bits (12..51).
//!
//! Supported modes: paging off (guest virtual == guest physical) and 4-level long mode with
//! 4 KiB, 2 MiB and 1 GiB pages. 32-bit, PAE and 5-level paging are refused with
//! [`TranslateError::UnsupportedMode`]. Access rights (writable, user, NX) do not change the
//! translation and are not checked.
//!
//! ```
//! use hv_mem::translate::{PagingMode, Translator};
//! use hv_mem::vm_memory::{Bytes, GuestAddress};
//! use hv_mem::{GuestRam, MemoryConfig};
//!
//! let ram = GuestRam::new(&MemoryConfig::new(16 << 20)).unwrap();
//! let mem = ram.memory();
//! // Identity-map the first GiB with one 1 GiB page: PML4 at 0x1000, PDPT at 0x2000.
//! mem.write_obj(0x2000u64 | 0b11, GuestAddress(0x1000)).unwrap();
//! mem.write_obj(0b11u64 | 1 << 7, GuestAddress(0x2000)).unwrap();
//! mem.write_slice(b"hello", GuestAddress(0x50_0000)).unwrap();
//!
//! let t = Translator::new(mem, PagingMode::Long4Level, 0x1000).unwrap();
//! assert_eq!(t.translate(0x50_0000).unwrap().gpa, 0x50_0000);
//! let mut buf = [0u8; 5];
//! t.read(0x50_0000, &mut buf).unwrap();
//! assert_eq!(&buf, b"hello");
//! ```

use std::sync::atomic::Ordering;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::{GuestMemory, PAGE_SIZE};

/// Physical address bits of CR3 and of a page-table entry: bits 12..51.
pub const PHYS_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Entry bit 0: the entry maps something.
const PRESENT: u64 = 1 << 0;
/// Entry bit 7 in a PDPT or PD entry: the entry maps a 1 GiB or 2 MiB page (in a PTE, this bit
/// is PAT and does not change the translation).
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Bit 12 of a large-page entry is its PAT bit, not an address bit.
const LARGE_PAT: u64 = 1 << 12;

/// How the guest's vCPU translates addresses, from its control registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PagingMode {
    /// CR0.PG clear: guest virtual addresses are guest physical addresses.
    Disabled,
    /// 32-bit paging (CR0.PG set, CR4.PAE clear). Not supported.
    Protected32,
    /// PAE paging without long mode. Not supported.
    Pae,
    /// 4-level long-mode paging (EFER.LMA set, CR4.LA57 clear).
    Long4Level,
    /// 5-level long-mode paging (CR4.LA57 set). Not supported.
    Long5Level,
}

impl PagingMode {
    /// The mode a vCPU is in, from its CR0, CR4 and EFER as `KVM_GET_SREGS` returns them.
    ///
    /// ```
    /// use hv_mem::translate::PagingMode;
    /// let (cr0, cr4, efer) = (0x8000_0011, 0x20, 0x500);
    /// assert_eq!(PagingMode::from_registers(cr0, cr4, efer), PagingMode::Long4Level);
    /// assert_eq!(PagingMode::from_registers(0x11, 0, 0), PagingMode::Disabled);
    /// ```
    pub fn from_registers(cr0: u64, cr4: u64, efer: u64) -> Self {
        const CR0_PG: u64 = 1 << 31;
        const CR4_PAE: u64 = 1 << 5;
        const CR4_LA57: u64 = 1 << 12;
        const EFER_LMA: u64 = 1 << 10;
        if cr0 & CR0_PG == 0 {
            PagingMode::Disabled
        } else if efer & EFER_LMA != 0 {
            if cr4 & CR4_LA57 != 0 {
                PagingMode::Long5Level
            } else {
                PagingMode::Long4Level
            }
        } else if cr4 & CR4_PAE != 0 {
            PagingMode::Pae
        } else {
            PagingMode::Protected32
        }
    }
}

/// Size of the page a translation went through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageSize {
    /// A 4 KiB page (also what paging off reports).
    Size4K,
    /// A 2 MiB page, mapped by a page-directory entry.
    Size2M,
    /// A 1 GiB page, mapped by a page-directory-pointer-table entry.
    Size1G,
}

impl PageSize {
    /// The page size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 4 << 10,
            PageSize::Size2M => 2 << 20,
            PageSize::Size1G => 1 << 30,
        }
    }
}

/// Where a guest virtual address leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The guest virtual address translated.
    pub gva: u64,
    /// The guest physical address it maps to. It may be outside guest RAM (an MMIO page);
    /// [`Translator::host_address`] and the reads and writes refuse those.
    pub gpa: u64,
    /// The size of the page that maps it.
    pub page_size: PageSize,
}

/// Why an address could not be translated or accessed.
///
/// Levels count as the CPU's walk does: 4 is the PML4, 3 the page-directory-pointer table,
/// 2 the page directory, 1 the page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// The entry at `level` that the walk for `gva` reached has its present bit clear.
    #[error("guest virtual address {gva:#x} is not mapped: entry at level {level} not present")]
    NotPresent {
        /// The address being translated.
        gva: u64,
        /// The table level (4..1) whose entry is not present.
        level: u8,
    },
    /// The address is not canonical: bits 63..47 are not all equal.
    #[error("guest virtual address {gva:#x} is not canonical")]
    NonCanonical {
        /// The address being translated.
        gva: u64,
    },
    /// A page table, or the memory to access, is at a guest physical address outside RAM.
    #[error("guest physical address {gpa:#x} is outside guest RAM")]
    OutOfGuestMemory {
        /// The first guest physical address that is not RAM.
        gpa: u64,
    },
    /// An entry has bits set that the architecture reserves (a page-size bit in a PML4 entry,
    /// or address bits below a large page's alignment); the CPU would fault too.
    #[error("entry {entry:#x} at level {level} for {gva:#x} has reserved bits set")]
    ReservedBits {
        /// The address being translated.
        gva: u64,
        /// The table level of the entry.
        level: u8,
        /// The entry as read from guest memory.
        entry: u64,
    },
    /// The paging mode is one this module does not walk.
    #[error("cannot translate in paging mode {mode:?}: only paging off and 4-level are supported")]
    UnsupportedMode {
        /// The mode asked for.
        mode: PagingMode,
    },
    /// A read or write of `len` bytes at `gva` would wrap past the end of the address space.
    #[error("access of {len} bytes at {gva:#x} wraps the guest virtual address space")]
    AddressOverflow {
        /// The first guest virtual address of the access.
        gva: u64,
        /// The access length.
        len: usize,
    },
}

/// Host address of the guest physical address `gpa`, or
/// [`TranslateError::OutOfGuestMemory`] when it is not in guest RAM.
///
/// The pointer stays valid as long as `memory`'s regions are mapped.
pub fn gpa_to_host(memory: &GuestMemory, gpa: u64) -> Result<*mut u8, TranslateError> {
    memory.get_host_address(GuestAddress(gpa)).map_err(|_| TranslateError::OutOfGuestMemory { gpa })
}

/// Translates guest virtual addresses of one vCPU state (paging mode and CR3) over a guest's
/// memory. Cheap to build; build a new one when the vCPU's CR3 or mode changes.
#[derive(Clone, Copy, Debug)]
pub struct Translator<'a> {
    memory: &'a GuestMemory,
    mode: PagingMode,
    cr3: u64,
}

impl<'a> Translator<'a> {
    /// A translator for `mode` with the page tables rooted at `cr3` (its PCID and flag bits
    /// are ignored). Refuses the modes this module does not walk.
    pub fn new(
        memory: &'a GuestMemory,
        mode: PagingMode,
        cr3: u64,
    ) -> Result<Self, TranslateError> {
        match mode {
            PagingMode::Disabled | PagingMode::Long4Level => Ok(Self { memory, mode, cr3 }),
            PagingMode::Protected32 | PagingMode::Pae | PagingMode::Long5Level => {
                Err(TranslateError::UnsupportedMode { mode })
            }
        }
    }

    /// The paging mode this translator walks.
    pub fn mode(&self) -> PagingMode {
        self.mode
    }

    /// Translates `gva` to a guest physical address by walking the page tables.
    pub fn translate(&self, gva: u64) -> Result<Translation, TranslateError> {
        match self.mode {
            PagingMode::Long4Level => self.walk_4level(gva),
            PagingMode::Disabled => Ok(Translation { gva, gpa: gva, page_size: PageSize::Size4K }),
            // `new` admits no other mode.
            mode => Err(TranslateError::UnsupportedMode { mode }),
        }
    }

    fn walk_4level(&self, gva: u64) -> Result<Translation, TranslateError> {
        let top = (gva as i64) >> 47;
        if top != 0 && top != -1 {
            return Err(TranslateError::NonCanonical { gva });
        }
        let mut table = self.cr3 & PHYS_ADDR_MASK;
        for level in (1..=4u8).rev() {
            let shift = 12 + 9 * u32::from(level - 1);
            let index = (gva >> shift) & 0x1ff;
            // `table` is below 2^52, so this cannot overflow.
            let entry_gpa = table + index * 8;
            let entry: u64 = self
                .memory
                .load(GuestAddress(entry_gpa), Ordering::Relaxed)
                .map_err(|_| TranslateError::OutOfGuestMemory { gpa: entry_gpa })?;
            if entry & PRESENT == 0 {
                return Err(TranslateError::NotPresent { gva, level });
            }
            let large = entry & PAGE_SIZE_BIT != 0;
            if large && level == 4 {
                return Err(TranslateError::ReservedBits { gva, level, entry });
            }
            if large && level > 1 {
                let page_size = if level == 3 { PageSize::Size1G } else { PageSize::Size2M };
                let offset_mask = page_size.bytes() - 1;
                if entry & PHYS_ADDR_MASK & offset_mask & !LARGE_PAT != 0 {
                    return Err(TranslateError::ReservedBits { gva, level, entry });
                }
                let gpa = (entry & PHYS_ADDR_MASK & !offset_mask) | (gva & offset_mask);
                return Ok(Translation { gva, gpa, page_size });
            }
            table = entry & PHYS_ADDR_MASK;
        }
        Ok(Translation { gva, gpa: table | (gva & (PAGE_SIZE - 1)), page_size: PageSize::Size4K })
    }

    /// Host address of `gva`: its translation, which must be in guest RAM.
    pub fn host_address(&self, gva: u64) -> Result<*mut u8, TranslateError> {
        gpa_to_host(self.memory, self.translate(gva)?.gpa)
    }

    /// Calls `f(done, gpa, len)` for each piece of `[gva, gva + len)` that lies in one 4 KiB
    /// guest virtual page, each page translated separately.
    fn for_each_page(
        &self,
        gva: u64,
        len: usize,
        mut f: impl FnMut(usize, u64, usize) -> Result<(), TranslateError>,
    ) -> Result<(), TranslateError> {
        if len == 0 {
            return Ok(());
        }
        let overflow = TranslateError::AddressOverflow { gva, len };
        u64::try_from(len - 1).ok().and_then(|l| gva.checked_add(l)).ok_or(overflow)?;
        let mut done = 0usize;
        while done < len {
            // No wrap: gva + len - 1 fits, checked above.
            let at = gva + done as u64;
            let in_page = (PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize;
            let chunk = in_page.min(len - done);
            let gpa = self.translate(at)?.gpa;
            f(done, gpa, chunk)?;
            done += chunk;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `gva`, translating each page on its own, so the bytes may
    /// come from scattered guest physical pages. On error `buf` may be partly filled.
    pub fn read(&self, gva: u64, buf: &mut [u8]) -> Result<(), TranslateError> {
        let memory = self.memory;
        self.for_each_page(gva, buf.len(), |done, gpa, chunk| {
            memory
                .read_slice(&mut buf[done..done + chunk], GuestAddress(gpa))
                .map_err(|_| TranslateError::OutOfGuestMemory { gpa })
        })
    }

    /// Writes `buf` at `gva`, translating each page on its own. On error a prefix of `buf`
    /// may have been written. The write is recorded in the VMM dirty bitmap like any other.
    pub fn write(&self, gva: u64, buf: &[u8]) -> Result<(), TranslateError> {
        let memory = self.memory;
        self.for_each_page(gva, buf.len(), |done, gpa, chunk| {
            memory
                .write_slice(&buf[done..done + chunk], GuestAddress(gpa))
                .map_err(|_| TranslateError::OutOfGuestMemory { gpa })
        })
    }

    /// Reads a plain value at `gva` (it may straddle pages).
    pub fn read_obj<T: ByteValued>(&self, gva: u64) -> Result<T, TranslateError> {
        let mut value = T::zeroed();
        self.read(gva, value.as_mut_slice())?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests;
