//! Tests of the page walk against page tables built in real guest RAM.

use super::*;
use crate::{GuestRam, MemoryConfig};
use proptest::prelude::*;

const RAM: u64 = 16 << 20;
const CR3: u64 = 0x1000;
/// A higher-half kernel address: PML4 index 256.
const KERNEL: u64 = 0xffff_8000_0000_0000;
const P: u64 = PRESENT | 0b10; // present + writable

/// Builds 4-level page tables in guest RAM, allocating tables from 0x1000 up.
struct Tables {
    ram: GuestRam,
    next_table: u64,
}

impl Tables {
    fn new() -> Self {
        Self { ram: GuestRam::new(&MemoryConfig::new(RAM)).unwrap(), next_table: CR3 + 0x1000 }
    }

    fn mem(&self) -> &GuestMemory {
        self.ram.memory()
    }

    fn translator(&self) -> Translator<'_> {
        Translator::new(self.mem(), PagingMode::Long4Level, CR3).unwrap()
    }

    fn entry_addr(table: u64, gva: u64, level: u8) -> u64 {
        table + ((gva >> (12 + 9 * u32::from(level - 1))) & 0x1ff) * 8
    }

    fn get(&self, addr: u64) -> u64 {
        self.mem().read_obj(GuestAddress(addr)).unwrap()
    }

    fn set(&self, addr: u64, entry: u64) {
        self.mem().write_obj(entry, GuestAddress(addr)).unwrap();
    }

    /// Address of the entry for `gva` at `level`, creating the tables above it.
    fn entry(&mut self, gva: u64, level: u8) -> u64 {
        let mut table = CR3;
        for l in (level + 1..=4).rev() {
            let addr = Self::entry_addr(table, gva, l);
            let e = self.get(addr);
            table = if e & PRESENT != 0 {
                e & PHYS_ADDR_MASK
            } else {
                let new = self.next_table;
                self.next_table += 0x1000;
                self.set(addr, new | P);
                new
            };
        }
        Self::entry_addr(table, gva, level)
    }

    fn map(&mut self, gva: u64, gpa: u64, size: PageSize) {
        let (level, ps) = match size {
            PageSize::Size4K => (1, 0),
            PageSize::Size2M => (2, PAGE_SIZE_BIT),
            PageSize::Size1G => (3, PAGE_SIZE_BIT),
        };
        let addr = self.entry(gva, level);
        self.set(addr, gpa | ps | P);
    }
}

#[test]
fn four_k_pages_translate() {
    let mut t = Tables::new();
    let gva = KERNEL + (2 << 30) + (3 << 21) + (5 << 12);
    t.map(gva, 0x80_0000, PageSize::Size4K);
    t.map(gva + 0x1000, 0x20_0000, PageSize::Size4K);
    let tr = t.translator();
    assert_eq!(
        tr.translate(gva + 0x123),
        Ok(Translation { gva: gva + 0x123, gpa: 0x80_0123, page_size: PageSize::Size4K })
    );
    assert_eq!(tr.translate(gva + 0x1fff).unwrap().gpa, 0x20_0fff);
    let host = t.ram.regions()[0].2;
    assert_eq!(tr.host_address(gva + 0x123).unwrap() as u64, host + 0x80_0123);
}

#[test]
fn two_m_pages_translate() {
    let mut t = Tables::new();
    t.map(KERNEL + (4 << 21), 0x40_0000, PageSize::Size2M);
    let r = t.translator().translate(KERNEL + (4 << 21) + 0x1_2345).unwrap();
    assert_eq!((r.gpa, r.page_size), (0x41_2345, PageSize::Size2M));
}

#[test]
fn one_g_pages_translate_and_host_address_stays_in_ram() {
    let mut t = Tables::new();
    t.map(0x40_0000_0000, 0, PageSize::Size1G);
    let tr = t.translator();
    let r = tr.translate(0x40_0012_3456).unwrap();
    assert_eq!((r.gpa, r.page_size), (0x12_3456, PageSize::Size1G));
    // The page reaches past the 16 MiB of RAM: the translation is fine (it could be MMIO),
    // but there is no host address for it.
    assert_eq!(tr.translate(0x40_2000_0000).unwrap().gpa, 0x2000_0000);
    assert_eq!(
        tr.host_address(0x40_2000_0000),
        Err(TranslateError::OutOfGuestMemory { gpa: 0x2000_0000 })
    );
    let mut buf = [0u8; 8];
    assert_eq!(
        tr.read(0x40_00ff_fffc, &mut buf),
        Err(TranslateError::OutOfGuestMemory { gpa: RAM })
    );
}

#[test]
fn not_present_is_reported_at_each_level() {
    let gva = KERNEL + (1 << 30) + (1 << 21) + (1 << 12);
    for level in 1..=4u8 {
        let mut t = Tables::new();
        t.map(gva, 0x30_0000, PageSize::Size4K);
        assert!(t.translator().translate(gva).is_ok());
        let addr = t.entry(gva, level);
        let e = t.get(addr);
        t.set(addr, e & !PRESENT);
        assert_eq!(t.translator().translate(gva), Err(TranslateError::NotPresent { gva, level }));
    }
    // Fresh RAM is all zeroes: nothing is present at the top.
    let t = Tables::new();
    assert_eq!(t.translator().translate(0), Err(TranslateError::NotPresent { gva: 0, level: 4 }));
}

#[test]
fn tables_outside_ram_are_refused() {
    let mut t = Tables::new();
    let gva = KERNEL + 0x5000;
    // The PML4 entry points at a PDPT at 64 GiB.
    let addr = t.entry(gva, 4);
    t.set(addr, 0x10_0000_0000 | P);
    assert_eq!(
        t.translator().translate(gva),
        Err(TranslateError::OutOfGuestMemory { gpa: 0x10_0000_0000 })
    );
    // A page table right at the end of RAM.
    let mut t = Tables::new();
    let addr = t.entry(gva, 2);
    t.set(addr, RAM | P);
    assert_eq!(
        t.translator().translate(gva),
        Err(TranslateError::OutOfGuestMemory { gpa: RAM + 5 * 8 })
    );
    // CR3 itself outside RAM (and the highest table address an entry can hold).
    let t = Tables::new();
    let tr = Translator::new(t.mem(), PagingMode::Long4Level, PHYS_ADDR_MASK).unwrap();
    assert_eq!(
        tr.translate(KERNEL),
        Err(TranslateError::OutOfGuestMemory { gpa: PHYS_ADDR_MASK + 256 * 8 })
    );
}

#[test]
fn non_canonical_addresses_are_refused() {
    let t = Tables::new();
    let tr = t.translator();
    for gva in [0x0000_8000_0000_0000, 0xffff_7fff_ffff_ffff, 0x0001_0000_0000_0000, 1 << 63] {
        assert_eq!(tr.translate(gva), Err(TranslateError::NonCanonical { gva }));
    }
    let mut buf = [0u8; 2];
    assert_eq!(
        tr.read(0x0000_7fff_ffff_ffff, &mut buf),
        Err(TranslateError::NotPresent { gva: 0x0000_7fff_ffff_ffff, level: 4 })
    );
}

#[test]
fn reserved_and_ignored_bits() {
    let gva = KERNEL + (7 << 21) + 0x42;
    // Page-size bit in a PML4 entry is reserved.
    let mut t = Tables::new();
    let addr = t.entry(gva, 4);
    t.set(addr, 0x2000 | P | PAGE_SIZE_BIT);
    assert!(matches!(
        t.translator().translate(gva),
        Err(TranslateError::ReservedBits { level: 4, .. })
    ));
    // Address bits below 2 MiB alignment in a 2 MiB entry are reserved; bit 12 is PAT.
    let mut t = Tables::new();
    let addr = t.entry(gva, 2);
    t.set(addr, 0x20_0000 | 1 << 13 | P | PAGE_SIZE_BIT);
    assert!(matches!(
        t.translator().translate(gva),
        Err(TranslateError::ReservedBits { level: 2, .. })
    ));
    t.set(addr, 0x20_0000 | LARGE_PAT | P | PAGE_SIZE_BIT);
    assert_eq!(t.translator().translate(gva).unwrap().gpa, 0x20_0042);
    // Same for a 1 GiB entry, whose alignment covers bits 13..29.
    let addr = t.entry(gva, 3);
    t.set(addr, 1 << 20 | P | PAGE_SIZE_BIT);
    assert!(matches!(
        t.translator().translate(gva),
        Err(TranslateError::ReservedBits { level: 3, .. })
    ));
    // NX, the available bits 52..62 and a PTE's PAT bit (bit 7) do not change the address;
    // CR3's PCID bits and bit 63 are ignored.
    let mut t = Tables::new();
    let gva = KERNEL + 0x3000;
    t.map(gva, 0x60_0000, PageSize::Size4K);
    let addr = t.entry(gva, 1);
    t.set(addr, 0x60_0000 | P | PAGE_SIZE_BIT | 0x7ff0_0000_0000_0000 | 1 << 63);
    let tr = Translator::new(t.mem(), PagingMode::Long4Level, CR3 | 0xabc | 1 << 63).unwrap();
    assert_eq!(
        tr.translate(gva + 1),
        Ok(Translation { gva: gva + 1, gpa: 0x60_0001, page_size: PageSize::Size4K })
    );
}

#[test]
fn modes() {
    let t = Tables::new();
    for mode in [PagingMode::Protected32, PagingMode::Pae, PagingMode::Long5Level] {
        assert_eq!(
            Translator::new(t.mem(), mode, CR3).unwrap_err(),
            TranslateError::UnsupportedMode { mode }
        );
    }
    let off = Translator::new(t.mem(), PagingMode::Disabled, 0).unwrap();
    assert_eq!(off.mode(), PagingMode::Disabled);
    assert_eq!(off.translate(0xb8000).unwrap().gpa, 0xb8000);
    t.mem().write_obj(0x1234_5678u32, GuestAddress(0x7ffe)).unwrap();
    assert_eq!(off.read_obj::<u32>(0x7ffe), Ok(0x1234_5678));
    assert_eq!(
        off.host_address(0xfee0_0000),
        Err(TranslateError::OutOfGuestMemory { gpa: 0xfee0_0000 })
    );
    assert_eq!(PagingMode::from_registers(1 << 31, 1 << 5, 0), PagingMode::Pae);
    assert_eq!(PagingMode::from_registers(1 << 31, 0, 0), PagingMode::Protected32);
    assert_eq!(
        PagingMode::from_registers(1 << 31, 1 << 5 | 1 << 12, 1 << 10),
        PagingMode::Long5Level
    );
}

#[test]
fn reads_and_writes_cross_pages_translated_separately() {
    let mut t = Tables::new();
    let gva = KERNEL + 0x10_0000;
    // Two virtually adjacent pages backed by physical pages in the opposite order.
    t.map(gva, 0x90_0000, PageSize::Size4K);
    t.map(gva + 0x1000, 0x70_0000, PageSize::Size4K);
    let tr = t.translator();
    tr.write(gva + 0xffc, b"abcdefgh").unwrap();
    let mut tail = [0u8; 4];
    t.mem().read_slice(&mut tail, GuestAddress(0x90_0ffc)).unwrap();
    assert_eq!(&tail, b"abcd");
    t.mem().read_slice(&mut tail, GuestAddress(0x70_0000)).unwrap();
    assert_eq!(&tail, b"efgh");
    let mut buf = [0u8; 8];
    tr.read(gva + 0xffc, &mut buf).unwrap();
    assert_eq!(&buf, b"abcdefgh");
    assert_eq!(tr.read_obj::<u64>(gva + 0xffc), Ok(u64::from_le_bytes(*b"abcdefgh")));
    // A third page is not mapped.
    let mut big = [0u8; 0x1008];
    assert_eq!(
        tr.read(gva + 0x1000, &mut big),
        Err(TranslateError::NotPresent { gva: gva + 0x2000, level: 1 })
    );
    tr.read(gva, &mut []).unwrap();
    assert_eq!(
        tr.read(u64::MAX - 2, &mut buf),
        Err(TranslateError::AddressOverflow { gva: u64::MAX - 2, len: 8 })
    );
    // The last bytes of the address space do not count as a wrap.
    assert_eq!(
        tr.read(u64::MAX - 7, &mut buf),
        Err(TranslateError::NotPresent { gva: u64::MAX - 7, level: 4 })
    );
}

/// Page frames the random tables live in: 0x1000..0x5000.
const FRAMES: u64 = 4;

fn entry_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        // Anything at all.
        any::<u64>(),
        // An entry pointing at one of the table frames, random low flags and high bits.
        (1..=FRAMES, any::<u16>(), any::<u16>())
            .prop_map(|(f, low, high)| f << 12 | u64::from(low & 0xfff) | u64::from(high) << 48),
        // A present entry pointing anywhere in RAM or just past it, maybe a large page.
        (0..(RAM * 2) >> 12, any::<bool>())
            .prop_map(|(pfn, large)| { pfn << 12 | P | if large { PAGE_SIZE_BIT } else { 0 } }),
    ]
}

fn gva_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        // Canonical: sign-extend 48 bits.
        any::<u64>().prop_map(|v| (((v << 16) as i64) >> 16) as u64),
    ]
}

fn cr3_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        (1..=FRAMES, any::<u16>()).prop_map(|(f, low)| f << 12 | u64::from(low & 0xfff)),
        any::<u64>()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_tables_never_panic_nor_escape_ram(
        entries in proptest::collection::vec(entry_strategy(), (FRAMES * 512) as usize),
        cr3 in cr3_strategy(),
        gvas in proptest::collection::vec(gva_strategy(), 16),
        len in 0usize..10_000,
    ) {
        let ram = GuestRam::new(&MemoryConfig::new(RAM)).unwrap();
        let mem = ram.memory();
        for (i, e) in entries.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(0x1000 + i as u64 * 8)).unwrap();
        }
        let regions = ram.regions();
        let tr = Translator::new(mem, PagingMode::Long4Level, cr3).unwrap();
        let mut buf = vec![0u8; len];
        for &gva in &gvas {
            if let Ok(t) = tr.translate(gva) {
                prop_assert_eq!(t.gva, gva);
                prop_assert_eq!(t.gpa & (PAGE_SIZE - 1), gva & (PAGE_SIZE - 1));
                prop_assert!(t.gpa <= PHYS_ADDR_MASK | 0xfff);
            }
            if let Ok(host) = tr.host_address(gva) {
                let host = host as u64;
                let gpa = tr.translate(gva).unwrap().gpa;
                let inside = regions.iter().any(|&(base, size, h)| {
                    host >= h && host < h + size && host - h == gpa - base
                });
                prop_assert!(inside, "host {host:#x} for gpa {gpa:#x} outside {regions:x?}");
            }
            let _ = tr.read(gva, &mut buf);
        }
    }
}
