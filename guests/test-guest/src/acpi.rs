//! Just enough ACPI: the RSDP, the XSDT (or RSDT), the MADT (CPU count and APIC IDs) and the
//! FADT (how to power off). Parsed values are copied out; no pointer into the tables is kept.

use crate::boot::MAX_APS;

/// Most CPUs recorded (the BSP plus [`MAX_APS`]).
pub const MAX_CPUS: usize = MAX_APS + 1;

/// A Generic Address Structure (ACPI 5.2.3.2).
#[derive(Clone, Copy)]
pub struct Gas {
    /// 0 = system memory, 1 = system I/O.
    pub space_id: u8,
    /// The address in that space.
    pub address: u64,
}

/// What the FADT says about powering off.
#[derive(Clone, Copy)]
pub struct Fadt {
    /// FADT flags (bit 20: HW_REDUCED_ACPI).
    pub flags: u32,
    /// PM1a control block I/O port (0 = none).
    pub pm1a_cnt: u32,
    /// PM1a event block I/O port (status, then enable; 0 = none).
    pub pm1a_evt: u32,
    /// X_SLEEP_CONTROL_REG, when the FADT is long enough to have it and it is set.
    pub sleep_control: Option<Gas>,
}

/// The enabled CPUs of the MADT.
pub struct Cpus {
    /// APIC IDs (local APIC and x2APIC entries), the first [`MAX_CPUS`] of them.
    pub apic_ids: [u32; MAX_CPUS],
    /// How many IDs are in `apic_ids`.
    pub recorded: usize,
    /// How many enabled CPUs the MADT lists (may exceed `recorded`).
    pub count: usize,
}

/// What the guest found in the ACPI tables.
pub struct Acpi {
    /// The MADT's CPUs, if there is a MADT.
    pub cpus: Option<Cpus>,
    /// The FADT, if there is one.
    pub fadt: Option<Fadt>,
}

fn read<T: Copy>(paddr: u64) -> T {
    // SAFETY: callers only pass addresses below 4 GiB (identity-mapped) from the RSDP chain or
    // the BIOS area; unaligned reads are fine on x86.
    unsafe { core::ptr::read_unaligned(paddr as *const T) }
}

fn below_4g(paddr: u64, len: u64) -> bool {
    paddr != 0 && paddr.checked_add(len).is_some_and(|end| end <= 1 << 32)
}

fn signature_at(paddr: u64, sig: &[u8]) -> bool {
    sig.iter().enumerate().all(|(i, &b)| read::<u8>(paddr + i as u64) == b)
}

fn checksum_ok(paddr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |sum, i| sum.wrapping_add(read::<u8>(paddr + i))) == 0
}

fn is_rsdp(paddr: u64) -> bool {
    below_4g(paddr, 36) && signature_at(paddr, b"RSD PTR ") && checksum_ok(paddr, 20)
}

/// Finds the RSDP: the VMM's hint first, then the BIOS area 0xe0000..0x100000.
fn find_rsdp(hint: u64) -> Option<u64> {
    if is_rsdp(hint) {
        return Some(hint);
    }
    (0xe_0000..0x10_0000u64).step_by(16).find(|&p| is_rsdp(p))
}

/// Finds and parses the tables; `None` when there is no RSDP.
pub fn find(rsdp_hint: u64) -> Option<Acpi> {
    let rsdp = find_rsdp(rsdp_hint)?;
    let mut acpi = Acpi { cpus: None, fadt: None };
    let revision = read::<u8>(rsdp + 15);
    let xsdt = if revision >= 2 { read::<u64>(rsdp + 24) } else { 0 };
    let (root, entry_size) =
        if below_4g(xsdt, 36) { (xsdt, 8) } else { (u64::from(read::<u32>(rsdp + 16)), 4) };
    if !below_4g(root, 36) {
        return Some(acpi);
    }
    let root_len = u64::from(read::<u32>(root + 4)).clamp(36, 36 + 8 * 64);
    let mut entry = root + 36;
    while entry + entry_size <= root + root_len {
        let table =
            if entry_size == 8 { read::<u64>(entry) } else { u64::from(read::<u32>(entry)) };
        entry += entry_size;
        if !below_4g(table, 36) {
            continue;
        }
        let len = u64::from(read::<u32>(table + 4));
        if !below_4g(table, len) {
            continue;
        }
        if signature_at(table, b"APIC") {
            acpi.cpus = Some(parse_madt(table, len));
        } else if signature_at(table, b"FACP") {
            acpi.fadt = Some(parse_fadt(table, len));
        }
    }
    Some(acpi)
}

fn parse_madt(table: u64, len: u64) -> Cpus {
    let mut cpus = Cpus { apic_ids: [0; MAX_CPUS], recorded: 0, count: 0 };
    // Header (36) + local APIC address (4) + flags (4), then variable-length entries.
    let mut p = table + 44;
    while p + 2 <= table + len {
        let kind = read::<u8>(p);
        let entry_len = u64::from(read::<u8>(p + 1));
        if entry_len < 2 || p + entry_len > table + len {
            break;
        }
        let enabled_id = match (kind, entry_len) {
            // Processor Local APIC: uid (1), APIC ID (1), flags (4).
            (0, 8..) if read::<u32>(p + 4) & 1 != 0 => Some(u32::from(read::<u8>(p + 3))),
            // Processor Local x2APIC: reserved (2), x2APIC ID (4), flags (4), uid (4).
            (9, 16..) if read::<u32>(p + 8) & 1 != 0 => Some(read::<u32>(p + 4)),
            _ => None,
        };
        if let Some(id) = enabled_id {
            if cpus.recorded < MAX_CPUS {
                cpus.apic_ids[cpus.recorded] = id;
                cpus.recorded += 1;
            }
            cpus.count += 1;
        }
        p += entry_len;
    }
    cpus
}

fn parse_fadt(table: u64, len: u64) -> Fadt {
    let field = |offset: u64| if offset + 4 <= len { read::<u32>(table + offset) } else { 0 };
    let sleep_control = if len >= 244 + 12 {
        let gas = Gas { space_id: read::<u8>(table + 244), address: read::<u64>(table + 248) };
        (gas.address != 0).then_some(gas)
    } else {
        None
    };
    Fadt { flags: field(112), pm1a_cnt: field(64), pm1a_evt: field(56), sleep_control }
}
