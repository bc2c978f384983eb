//! ACPI tables: how a stock Debian kernel learns about our vCPUs, the IOAPIC, the serial
//! port, the virtio-mmio devices and how to power off or reset.
//!
//! Debian's cloud kernel has no MP-table parser (`X86_MPPARSE` unset) and no
//! `virtio_mmio.device=` support (`VIRTIO_MMIO_CMDLINE_DEVICES` unset): without a MADT it
//! sees one CPU and no IOAPIC, and `virtio_mmio` is a module that udev loads from the
//! `LNRO0005` ACPI id. So we emit a hardware-reduced ACPI 6 set, as Firecracker does, plus
//! the sleep and reset registers (as Cloud Hypervisor does) so `poweroff` and `reboot` work.
//!
//! Layout: RSDP at 0xE0000; XSDT, FADT, MADT, DSDT bump-allocated from 0xA0000 (the e820
//! map marks 0x9FC00..1 MiB reserved).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::sdt::Sdt;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::layout::*;
use crate::vstate::memory::GuestMemoryMmap;

const OEM_ID: [u8; 6] = *b"CLTVTM";
const OEM_REVISION: u32 = 1;

/// A virtio-mmio device as the DSDT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Base of its 4 KiB register window.
    pub base: u64,
    /// Its GSI (IOAPIC pin), edge-triggered, active-high.
    pub gsi: u32,
}

/// Errors while writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit their window.
    #[error("ACPI tables ({0} bytes) overflow their window below the RSDP")]
    TooLarge(u64),
    /// Too many vCPUs for 8-bit APIC ids.
    #[error("{0} vCPUs do not fit in xAPIC ids")]
    TooManyCpus(usize),
    /// Guest memory write failed.
    #[error("cannot write ACPI tables into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Sum of all bytes, which must be 0 for a valid table.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// The DSDT body: `_S5_`, COM1 and one `LNRO0005` device per virtio-mmio device, in the
/// given order (which becomes the guest's probe order: put the root disk first).
pub fn dsdt(devices: &[MmioDeviceInfo]) -> Vec<u8> {
    let mut body = Vec::new();

    // Soft-off: the sleep type written to SLEEP_CONTROL_REG.
    let s5 = aml::Package::new(vec![&ACPI_S5_SLEEP_TYPE, &ACPI_S5_SLEEP_TYPE, &0u8, &0u8]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);

    // COM1. The PS/2 controller is deliberately absent: see devices::legacy::i8042.
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &0u8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, SERIAL_GSI);
    let com1_io = aml::IO::new(SERIAL_PORT, SERIAL_PORT, 1, 8);
    let com1_crs = aml::Name::new(
        "_CRS".into(),
        &aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]),
    );
    aml::Device::new("_SB_.COM1".into(), vec![&com1_hid, &com1_uid, &com1_crs])
        .to_aml_bytes(&mut body);

    for (i, d) in devices.iter().enumerate() {
        let hid = aml::Name::new("_HID".into(), &"LNRO0005");
        let uid = aml::Name::new("_UID".into(), &(i as u64));
        let cca = aml::Name::new("_CCA".into(), &1u8);
        let mem = aml::Memory32Fixed::new(true, d.base as u32, VIRTIO_MMIO_SIZE as u32);
        let irq = aml::Interrupt::new(true, true, false, false, d.gsi);
        let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&mem, &irq]));
        let path = format!("_SB_.V{i:03X}");
        aml::Device::new(path.as_str().into(), vec![&hid, &uid, &cca, &crs])
            .to_aml_bytes(&mut body);
    }
    let mut t = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"CLTVDSDT", OEM_REVISION);
    t.append_slice(&body);
    t.as_slice().to_vec()
}

/// The MADT: one enabled local APIC per vCPU, the IOAPIC, IRQ0 routed to GSI 0 edge/high
/// (as KVM's default routing wires the PIT; this also stops Linux from inventing a
/// level-triggered SCI override on IRQ0, since our FADT's SCI is 0), LINT1 as NMI.
pub fn madt(vcpus: usize) -> Result<Vec<u8>, AcpiError> {
    if vcpus == 0 || vcpus > 254 {
        return Err(AcpiError::TooManyCpus(vcpus));
    }
    let mut t = Sdt::new(*b"APIC", 36, 5, OEM_ID, *b"CLTVMADT", OEM_REVISION);
    let mut b = Vec::new();
    b.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // flags: no dual 8259 setup to disable
    for id in 0..vcpus as u8 {
        b.extend_from_slice(&[0, 8, id, id]);
        b.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    b.extend_from_slice(&[1, 12, 0, 0]); // IOAPIC id 0
    b.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    b.extend_from_slice(&[2, 10, 0, 0]); // ISO: bus 0 (ISA), IRQ 0
    b.extend_from_slice(&0u32.to_le_bytes()); // -> GSI 0
    b.extend_from_slice(&0x5u16.to_le_bytes()); // active high, edge
    b.extend_from_slice(&[4, 6, 0xff]); // local APIC NMI, all processors
    b.extend_from_slice(&0u16.to_le_bytes());
    b.push(1); // LINT1
    t.append_slice(&b);
    Ok(t.as_slice().to_vec())
}

/// The FADT: hardware-reduced, with sleep control/status and reset registers in I/O space.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    let mut f = FADTBuilder::new(OEM_ID, *b"CLTVFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.reset_reg = io(ACPI_RESET_PORT);
    f.reset_value = ACPI_RESET_VALUE;
    f.sleep_control_reg = io(ACPI_SLEEP_CONTROL_PORT);
    f.sleep_status_reg = io(ACPI_SLEEP_STATUS_PORT);
    f.iapc_boot_arch = (1u16 << 2).into(); // VGA not present
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"CLTVKVM\0").into();
    let mut v = Vec::new();
    f.finalize().to_aml_bytes(&mut v);
    v
}

/// The XSDT listing `tables`.
pub fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut t = Sdt::new(*b"XSDT", 36, 1, OEM_ID, *b"CLTVXSDT", OEM_REVISION);
    let b: Vec<u8> = tables.iter().flat_map(|a| a.to_le_bytes()).collect();
    t.append_slice(&b);
    t.as_slice().to_vec()
}

/// The ACPI 2.0 RSDP pointing at the XSDT.
pub fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(&OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0, 0, 0]);
    r[8] = 0u8.wrapping_sub(checksum(&r[..20]));
    r[32] = 0u8.wrapping_sub(checksum(&r));
    r
}

/// Writes all tables into guest memory; returns the RSDP address.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    vcpus: usize,
    devices: &[MmioDeviceInfo],
) -> Result<u64, AcpiError> {
    let mut next = ACPI_TABLES_START;
    let mut place = |bytes: &[u8]| -> Result<u64, AcpiError> {
        let at = next;
        let end = at + bytes.len() as u64;
        if end > RSDP_START {
            return Err(AcpiError::TooLarge(end - ACPI_TABLES_START));
        }
        mem.write_slice(bytes, GuestAddress(at))?;
        next = (end + 15) & !15;
        Ok(at)
    };
    let dsdt_addr = place(&dsdt(devices))?;
    let fadt_addr = place(&fadt(dsdt_addr))?;
    let madt_addr = place(&madt(vcpus)?)?;
    let xsdt_addr = place(&xsdt(&[fadt_addr, madt_addr]))?;
    mem.write_slice(&rsdp(xsdt_addr), GuestAddress(RSDP_START))?;
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn assert_table(t: &[u8], sig: &[u8; 4]) {
        assert_eq!(&t[..4], sig);
        let len = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, t.len(), "{sig:?} length field");
        assert_eq!(checksum(t), 0, "{sig:?} checksum");
    }

    #[test]
    fn tables_are_well_formed() {
        let devs = [
            MmioDeviceInfo {
                base: 0xd000_0000,
                gsi: 5,
            },
            MmioDeviceInfo {
                base: 0xd000_1000,
                gsi: 6,
            },
        ];
        let d = dsdt(&devs);
        assert_table(&d, b"DSDT");
        assert!(contains(&d, b"LNRO0005"));
        assert!(contains(&d, b"V000") && contains(&d, b"V001"));
        assert!(contains(&d, b"_S5_"));
        assert!(contains(&d, &0xd000_1000u32.to_le_bytes()));
        let m = madt(3).unwrap();
        assert_table(&m, b"APIC");
        // header + lapic addr/flags + 3 LAPICs + IOAPIC + ISO + NMI
        assert_eq!(m.len(), 36 + 8 + 3 * 8 + 12 + 10 + 6);
        assert!(madt(0).is_err() && madt(300).is_err());
        let f = fadt(0xa0000);
        assert_table(&f, b"FACP");
        assert_eq!(f.len(), 276);
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "HW reduced");
        assert_ne!(flags & (1 << 10), 0, "reset register supported");
        assert_eq!(f[116], 1, "reset reg in I/O space");
        assert_eq!(
            u64::from_le_bytes(f[120..128].try_into().unwrap()),
            u64::from(ACPI_RESET_PORT)
        );
        assert_eq!(f[128], ACPI_RESET_VALUE);
        assert_eq!(
            u64::from_le_bytes(f[140..148].try_into().unwrap()),
            0xa0000,
            "X_DSDT"
        );
        assert_eq!(
            u64::from_le_bytes(f[248..256].try_into().unwrap()),
            u64::from(ACPI_SLEEP_CONTROL_PORT)
        );
        assert_eq!(
            u64::from_le_bytes(f[260..268].try_into().unwrap()),
            u64::from(ACPI_SLEEP_STATUS_PORT)
        );
        let x = xsdt(&[1, 2]);
        assert_table(&x, b"XSDT");
        assert_eq!(x.len(), 52);
        let r = rsdp(0xa1234);
        assert_eq!(r.len(), 36);
        assert_eq!(checksum(&r[..20]), 0);
        assert_eq!(checksum(&r), 0);
    }

    #[test]
    fn write_tables_into_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let devs: Vec<_> = (0..15)
            .map(|i| MmioDeviceInfo {
                base: VIRTIO_MMIO_START + i * 0x1000,
                gsi: 5 + i as u32,
            })
            .collect();
        let rsdp_addr = write_tables(&mem, 8, &devs).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp_addr)).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(xsdt_addr)).unwrap();
        assert_eq!(&sig, b"XSDT");
    }
}
