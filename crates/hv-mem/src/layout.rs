//! The x86_64 guest physical address map.
//!
//! ```text
//! 0x0000_0000 .. 0x0009_fc00  low RAM: boot data (GDT, page tables, boot params, cmdline)
//! 0x0009_fc00 .. 0x0010_0000  reserved: EBDA, VGA hole, BIOS area (ACPI RSDP at 0xe0000)
//! 0x0010_0000 .. hole start   RAM (kernel at 1 MiB)
//! 0xc000_0000 .. 0xfec0_0000  32-bit MMIO hole: virtio-mmio and other device windows
//! 0xfec0_0000 .. 0xfec0_1000  IOAPIC
//! 0xfee0_0000 .. 0xfee0_1000  local APIC
//! 0x1_0000_0000 ..            RAM above 4 GiB when the guest has more than fits below
//! ```
//!
//! RAM regions are what KVM memslots cover; the low reserved range is still RAM in the memslot
//! (firmware tables live there) but marked reserved in the e820 map the guest sees.

use crate::{Error, Result, PAGE_SIZE};

/// Start of the 32-bit MMIO hole: RAM below 4 GiB stops here.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Where device MMIO windows (virtio-mmio, test devices) are allocated from.
pub const DEVICE_MMIO_START: u64 = 0xd000_0000;
/// Size of the device MMIO window.
pub const DEVICE_MMIO_SIZE: u64 = 0x1000_0000;
/// The IOAPIC's MMIO page.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO page.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// End of conventional low memory (start of the EBDA).
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of the BIOS read-only area where the ACPI RSDP is found by a legacy search.
pub const BIOS_AREA_START: u64 = 0xe_0000;
/// The high-memory start: the kernel is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Largest guest RAM we lay out (1 TiB): beyond that the address width of common hosts ends.
pub const MAX_RAM: u64 = 1 << 40;

/// A range of guest RAM, backed by host memory and covered by one KVM memslot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// Guest physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl RamRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// What a reserved guest physical range is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReservedKind {
    /// EBDA, VGA hole and BIOS area below 1 MiB (ACPI tables live in the BIOS area).
    LegacyBios,
    /// Device MMIO windows in the 32-bit hole.
    DeviceMmio,
    /// The IOAPIC page.
    Ioapic,
    /// The local APIC page.
    Lapic,
}

/// A guest physical range that is not ordinary RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedRange {
    /// Guest physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it is for.
    pub kind: ReservedKind,
}

/// The guest physical memory map of one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    ram: Vec<RamRange>,
    reserved: Vec<ReservedRange>,
}

impl MemoryLayout {
    /// Lays out `ram_bytes` of RAM for an x86_64 guest: below the MMIO hole first, the rest
    /// from 4 GiB up.
    pub fn x86_64(ram_bytes: u64) -> Result<Self> {
        if ram_bytes == 0 {
            return Err(Error::InvalidSize {
                size: ram_bytes,
                reason: "guest RAM cannot be empty",
            });
        }
        if !ram_bytes.is_multiple_of(PAGE_SIZE) {
            return Err(Error::InvalidSize {
                size: ram_bytes,
                reason: "guest RAM must be a multiple of 4 KiB",
            });
        }
        if ram_bytes < 2 * HIMEM_START {
            return Err(Error::InvalidSize {
                size: ram_bytes,
                reason: "guest RAM must be at least 2 MiB",
            });
        }
        if ram_bytes > MAX_RAM {
            return Err(Error::InvalidSize { size: ram_bytes, reason: "guest RAM above 1 TiB" });
        }
        let low = ram_bytes.min(MMIO_HOLE_START);
        let mut ram = vec![RamRange { start: 0, len: low }];
        if ram_bytes > low {
            ram.push(RamRange { start: MMIO_HOLE_END, len: ram_bytes - low });
        }
        let reserved = vec![
            ReservedRange {
                start: EBDA_START,
                len: HIMEM_START - EBDA_START,
                kind: ReservedKind::LegacyBios,
            },
            ReservedRange {
                start: DEVICE_MMIO_START,
                len: DEVICE_MMIO_SIZE,
                kind: ReservedKind::DeviceMmio,
            },
            ReservedRange { start: IOAPIC_START, len: 0x1000, kind: ReservedKind::Ioapic },
            ReservedRange { start: LAPIC_START, len: 0x1000, kind: ReservedKind::Lapic },
        ];
        Ok(Self { ram, reserved })
    }

    /// The RAM ranges, in address order.
    pub fn ram(&self) -> &[RamRange] {
        &self.ram
    }

    /// The reserved ranges, in address order.
    pub fn reserved(&self) -> &[ReservedRange] {
        &self.reserved
    }

    /// Total RAM in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.ram.iter().map(|r| r.len).sum()
    }

    /// One past the highest RAM address.
    pub fn ram_end(&self) -> u64 {
        self.ram.last().map_or(0, RamRange::end)
    }

    /// Usable RAM as the guest should see it in an e820 map: RAM ranges with the legacy BIOS
    /// area cut out. Returned as `(start, len)`.
    pub fn usable_ram(&self) -> Vec<RamRange> {
        let mut out = Vec::new();
        for r in &self.ram {
            if r.start < EBDA_START && r.end() > HIMEM_START {
                out.push(RamRange { start: r.start, len: EBDA_START - r.start });
                out.push(RamRange { start: HIMEM_START, len: r.end() - HIMEM_START });
            } else if r.start < EBDA_START {
                out.push(RamRange { start: r.start, len: r.len.min(EBDA_START - r.start) });
            } else {
                out.push(*r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_sits_below_the_hole() {
        let l = MemoryLayout::x86_64(256 << 20).unwrap();
        assert_eq!(l.ram(), &[RamRange { start: 0, len: 256 << 20 }]);
        assert_eq!(l.ram_end(), 256 << 20);
        let usable = l.usable_ram();
        assert_eq!(usable[0], RamRange { start: 0, len: EBDA_START });
        assert_eq!(usable[1], RamRange { start: HIMEM_START, len: (256 << 20) - HIMEM_START });
    }

    #[test]
    fn large_ram_splits_around_the_hole() {
        let l = MemoryLayout::x86_64(4 << 30).unwrap();
        assert_eq!(
            l.ram(),
            &[
                RamRange { start: 0, len: MMIO_HOLE_START },
                RamRange { start: MMIO_HOLE_END, len: (4 << 30) - MMIO_HOLE_START },
            ]
        );
        assert_eq!(l.ram_bytes(), 4 << 30);
        for r in l.reserved().iter().filter(|r| r.kind != ReservedKind::LegacyBios) {
            for ram in l.ram() {
                assert!(
                    r.start + r.len <= ram.start || r.start >= ram.end(),
                    "{r:?} overlaps {ram:?}"
                );
            }
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(MemoryLayout::x86_64(0), Err(Error::InvalidSize { .. })));
        assert!(matches!(MemoryLayout::x86_64(4097), Err(Error::InvalidSize { .. })));
        assert!(matches!(MemoryLayout::x86_64(4096), Err(Error::InvalidSize { .. })));
        assert!(matches!(MemoryLayout::x86_64(2 << 40), Err(Error::InvalidSize { .. })));
    }
}
