//! ACPI tables for a hardware-reduced x86 platform, on the `acpi_tables` crate: RSDP, XSDT,
//! FADT (with the sleep registers that power the VM off), MADT (one local APIC per vCPU and
//! the IOAPIC, so a stock kernel brings every CPU up), and a DSDT describing the serial port,
//! `_S5`, and any devices the VM adds (virtio-mmio devices as `LNRO0005`).
//!
//! The tables sit in the BIOS area at 0xe0000, where Linux also finds the RSDP by scanning.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use hv_mem::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::acpi_pm::{S5_SLP_TYP, SLEEP_CONTROL_PORT};
use crate::devices::serial::{COM1_BASE, COM1_IRQ};

const OEM_ID: [u8; 6] = *b"HVVMM ";
const OEM_TABLE_ID: [u8; 8] = *b"HVTABLES";
const OEM_REVISION: u32 = 1;

/// Where the RSDP goes; the other tables follow it.
pub const RSDP_ADDR: u64 = hv_mem::layout::BIOS_AREA_START;
/// End of the area the tables may use.
pub const TABLES_END: u64 = 0x10_0000;

/// Errors building the tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tables do not fit in the BIOS area.
    #[error("ACPI tables need {need} bytes but only {have} fit below 1 MiB")]
    TooLarge {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// More vCPUs than the MADT's 8-bit APIC IDs can name.
    #[error("{0} vCPUs do not fit in xAPIC IDs (at most 254)")]
    TooManyCpus(usize),
    /// Writing into guest memory failed.
    #[error("cannot write ACPI tables into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// What the tables describe.
#[derive(Clone, Debug, Default)]
pub struct AcpiConfig {
    /// Number of vCPUs (APIC IDs 0..n).
    pub vcpus: usize,
    /// Extra AML definition blocks placed in the DSDT (e.g. `Scope(\_SB) { Device(...) }`).
    pub dsdt_aml: Vec<Vec<u8>>,
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Builds the DSDT body (without its header).
fn dsdt_body(extra: &[Vec<u8>]) -> Vec<u8> {
    let io = aml::IO::new(COM1_BASE as u16, COM1_BASE as u16, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new("_SB_.COM1".into(), vec![&hid, &uid, &crs]);
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &aml::ZERO, &aml::ZERO]),
    );
    let mut body = bytes(&com1);
    body.extend(bytes(&s5));
    for blob in extra {
        body.extend_from_slice(blob);
    }
    body
}

/// Writes all tables into guest memory; returns the RSDP address.
pub fn write_tables(mem: &GuestMemory, config: &AcpiConfig) -> Result<u64, Error> {
    if config.vcpus == 0 || config.vcpus > 254 {
        return Err(Error::TooManyCpus(config.vcpus));
    }
    let align = |a: u64| (a + 15) & !15;
    let xsdt_addr = align(RSDP_ADDR + Rsdp::len() as u64);

    // DSDT.
    let body = dsdt_body(&config.dsdt_aml);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt.update_checksum();

    // MADT.
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(hv_mem::layout::LAPIC_START as u32),
    );
    for id in 0..config.vcpus {
        madt.add_structure(ProcessorLocalApic::new(id as u8, id as u8, EnabledStatus::Enabled));
    }
    // The IOAPIC gets an ID no CPU uses.
    madt.add_structure(IoApic::new(config.vcpus as u8, hv_mem::layout::IOAPIC_START as u32, 0));
    let madt = bytes(&madt);

    // Lay out: RSDP, XSDT, FADT, MADT, DSDT.
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align(xsdt_addr + xsdt_len);
    let madt_addr = align(fadt_addr + fadt_len);
    let dsdt_addr = align(madt_addr + madt.len() as u64);
    let end = dsdt_addr + dsdt.len() as u64;
    if end > TABLES_END {
        return Err(Error::TooLarge { need: end - RSDP_ADDR, have: TABLES_END - RSDP_ADDR });
    }

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    fadt.sleep_control_reg =
        GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg =
        GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, SLEEP_CONTROL_PORT + 1);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"HVVMM\0\0\0").into();
    let fadt = bytes(&fadt.finalize());

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes(&xsdt);
    debug_assert_eq!(xsdt.len() as u64, xsdt_len);
    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    mem.write_slice(&rsdp, GuestAddress(RSDP_ADDR))?;
    mem.write_slice(&xsdt, GuestAddress(xsdt_addr))?;
    mem.write_slice(&fadt, GuestAddress(fadt_addr))?;
    mem.write_slice(&madt, GuestAddress(madt_addr))?;
    mem.write_slice(dsdt.as_slice(), GuestAddress(dsdt_addr))?;
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(mem: &GuestMemory, addr: u64, len: usize) -> bool {
        let mut b = vec![0u8; len];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn tables_chain_from_rsdp_with_valid_checksums() {
        let ram = hv_mem::GuestRam::new(&hv_mem::MemoryConfig::new(64 << 20)).unwrap();
        let mem = ram.memory();
        let rsdp = write_tables(mem, &AcpiConfig { vcpus: 4, dsdt_aml: vec![] }).unwrap();
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(rsdp)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        assert!(checksum_ok(mem, rsdp, 20));
        assert!(checksum_ok(mem, rsdp, 36));
        let xsdt: u64 = mem.read_obj(GuestAddress(rsdp + 24)).unwrap();
        let xlen: u32 = mem.read_obj(GuestAddress(xsdt + 4)).unwrap();
        assert!(checksum_ok(mem, xsdt, xlen as usize));
        let mut found = Vec::new();
        for i in 0..(xlen as u64 - 36) / 8 {
            let t: u64 = mem.read_obj(GuestAddress(xsdt + 36 + i * 8)).unwrap();
            let mut s = [0u8; 4];
            mem.read_slice(&mut s, GuestAddress(t)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(t + 4)).unwrap();
            assert!(checksum_ok(mem, t, len as usize), "{:?}", std::str::from_utf8(&s));
            found.push((s, t, len));
        }
        let madt = found.iter().find(|f| &f.0 == b"APIC").unwrap();
        // 44-byte header, 4 local APICs of 8 bytes, one IOAPIC of 12.
        assert_eq!(madt.2, 44 + 4 * 8 + 12);
        let fadt = found.iter().find(|f| &f.0 == b"FACP").unwrap();
        let flags: u32 = mem.read_obj(GuestAddress(fadt.1 + 112)).unwrap();
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
        let sleep: u64 = mem.read_obj(GuestAddress(fadt.1 + 244 + 4)).unwrap();
        assert_eq!(sleep, SLEEP_CONTROL_PORT);
        let dsdt: u64 = mem.read_obj(GuestAddress(fadt.1 + 140)).unwrap();
        let dlen: u32 = mem.read_obj(GuestAddress(dsdt + 4)).unwrap();
        assert!(checksum_ok(mem, dsdt, dlen as usize));
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        let ram = hv_mem::GuestRam::new(&hv_mem::MemoryConfig::new(64 << 20)).unwrap();
        assert!(matches!(
            write_tables(ram.memory(), &AcpiConfig { vcpus: 300, dsdt_aml: vec![] }),
            Err(Error::TooManyCpus(300))
        ));
    }
}
