//! PC legacy devices on the port I/O bus.

pub mod acpi_pm;
pub mod i8042;
pub mod rtc;
pub mod serial;

use crate::bus::BusDevice;

/// Answers every access with all-ones: "nothing here". Used for PCI configuration
/// mechanism #1 so a guest kernel built with `CONFIG_PCI` finds no host bridge quickly.
pub struct AllOnes;

impl BusDevice for AllOnes {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}
