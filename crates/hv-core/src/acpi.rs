//! ACPI tables on the `acpi_tables` crate: RSDP, XSDT, FADT (the PM1a event/control blocks
//! that power the VM off and carry the power button, and the PM timer), MADT (one local APIC
//! per vCPU, the IOAPIC, and the SCI's interrupt override, so a stock kernel brings every CPU
//! up), and a DSDT describing the serial port, pvpanic, `_S5`, and any devices the VM adds
//! (virtio-mmio devices as `LNRO0005`).
//!
//! The FADT is a full one, not hardware-reduced: a hardware-reduced FADT makes Linux drop the
//! PIT and the 8259, leaving it no timer until it knows the TSC frequency, which a guest on a
//! PVM host cannot learn (its CPUID is the host's, with no TSC leaf).
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
use zerocopy::{Immutable, IntoBytes};

use crate::devices::acpi_pm::{PM1A_CNT, PM1A_EVT, PM_TMR, S5_SLP_TYP, SCI_IRQ};
use crate::devices::pvpanic::PVPANIC_PORT;
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
#[non_exhaustive]
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

/// MADT Interrupt Source Override (type 2), which `acpi_tables` does not provide.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

impl InterruptSourceOverride {
    fn new(source: u8, gsi: u32, flags: u16) -> Self {
        Self { kind: 2, length: 10, bus: 0, source, gsi: gsi.to_le(), flags: flags.to_le() }
    }
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(self.as_bytes());
    }
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
    let pv_io = aml::IO::new(PVPANIC_PORT as u16, PVPANIC_PORT as u16, 1, 1);
    let pv_crs = aml::ResourceTemplate::new(vec![&pv_io]);
    let pv_hid = aml::Name::new("_HID".into(), &"QEMU0001");
    let pv_crs = aml::Name::new("_CRS".into(), &pv_crs);
    let pvpanic = aml::Device::new("_SB_.PEVT".into(), vec![&pv_hid, &pv_crs]);
    let mut body = bytes(&com1);
    body.extend(bytes(&pvpanic));
    body.extend(bytes(&s5));
    for blob in extra {
        body.extend_from_slice(blob);
    }
    body
}

/// The DSDT entry for virtio-mmio device `index`: `\_SB.VRxx`, `_HID "LNRO0005"`, its window
/// and interrupt, as Linux's virtio_mmio ACPI driver expects.
pub fn virtio_mmio_aml(index: usize, base: u64, len: u64, irq: u32) -> Vec<u8> {
    let name = format!("_SB_.VR{index:02X}");
    let mem = aml::Memory32Fixed::new(true, base as u32, len as u32);
    let int = aml::Interrupt::new(true, true, false, false, irq);
    let crs = aml::ResourceTemplate::new(vec![&mem, &int]);
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let uid = aml::Name::new("_UID".into(), &(index as u64));
    let crs = aml::Name::new("_CRS".into(), &crs);
    bytes(&aml::Device::new(name.as_str().into(), vec![&hid, &uid, &crs]))
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
    // The SCI: ISA IRQ 9, level-triggered, active high (what KVM's irqfd delivers).
    madt.add_structure(InterruptSourceOverride::new(SCI_IRQ as u8, SCI_IRQ, 0x0d));
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

    // A fixed power button (PWR_BUTTON clear), no sleep button, 32-bit PM timer.
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::SlpButton)
        .flag(Flags::TmrValExt)
        .flag(Flags::Wbinvd)
        .dsdt_64(dsdt_addr);
    fadt.sci_int = (SCI_IRQ as u16).into();
    fadt.pm1a_evt_blk = (PM1A_EVT as u32).into();
    fadt.pm1a_cnt_blk = (PM1A_CNT as u32).into();
    fadt.pm_tmr_blk = (PM_TMR as u32).into();
    fadt.pm1_evt_len = 4;
    fadt.pm1_cnt_len = 2;
    fadt.pm_tmr_len = 4;
    fadt.x_pm1a_evt_blk = GAS::new(AddressSpace::SystemIo, 32, 0, AccessSize::WordAccess, PM1A_EVT);
    fadt.x_pm1a_cnt_blk = GAS::new(AddressSpace::SystemIo, 16, 0, AccessSize::WordAccess, PM1A_CNT);
    fadt.x_pm_tmr_blk = GAS::new(AddressSpace::SystemIo, 32, 0, AccessSize::DwordAccess, PM_TMR);
    // IA-PC boot architecture: legacy devices and an 8042 are present.
    fadt.iapc_boot_arch = 0x3u16.into();
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
        // 44-byte header, 4 local APICs of 8 bytes, one IOAPIC of 12, one override of 10.
        assert_eq!(madt.2, 44 + 4 * 8 + 12 + 10);
        let fadt = found.iter().find(|f| &f.0 == b"FACP").unwrap();
        let flags: u32 = mem.read_obj(GuestAddress(fadt.1 + 112)).unwrap();
        assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
        let pm1a_cnt: u32 = mem.read_obj(GuestAddress(fadt.1 + 64)).unwrap();
        assert_eq!(u64::from(pm1a_cnt), PM1A_CNT);
        let sci: u16 = mem.read_obj(GuestAddress(fadt.1 + 46)).unwrap();
        assert_eq!(u32::from(sci), SCI_IRQ);
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
