//! The fixed PC devices on the port I/O bus.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{kvm_err, DeviceManagerError};
use crate::arch::layout::{
    ACPI_SLEEP_CONTROL_PORT, I8042_DATA_PORT, PCI_CONFIG_PORT_START, RTC_PORT, SERIAL_GSI,
    SERIAL_PORT,
};
use crate::bus::{Bus, BusDevice};
use crate::devices::legacy::{acpi_pm::AcpiPm, i8042::I8042, rtc::Rtc, serial::Serial, AllOnes};
use crate::exit::ExitSignal;

/// A device, its first port and how many ports it spans.
type PortDevice = (Arc<Mutex<dyn BusDevice>>, u16, u64);

/// The port I/O bus with the devices every machine has: COM1 (interrupting on
/// [`SERIAL_GSI`] through an irqfd), the i8042 (for its reset line), the CMOS clock, the
/// ACPI sleep/reset registers and "no PCI here" on the configuration ports.
pub struct LegacyDevices {
    bus: Bus,
    serial: Arc<Mutex<Serial>>,
}

impl LegacyDevices {
    /// Creates the devices; the serial port writes to `console`, and the i8042 and ACPI
    /// registers report resets and power-offs to `exit`.
    pub fn new(
        vm: &VmFd,
        exit: &Arc<ExitSignal>,
        console: Box<dyn Write + Send>,
    ) -> Result<LegacyDevices, DeviceManagerError> {
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd(&serial_irq, SERIAL_GSI)
            .map_err(kvm_err("register_irqfd (serial)"))?;
        let serial = Arc::new(Mutex::new(Serial::new(serial_irq, console)));

        let mut bus = Bus::new();
        let devices: [PortDevice; 5] = [
            (serial.clone(), SERIAL_PORT, 8),
            (
                Arc::new(Mutex::new(I8042::new(exit.clone()))),
                I8042_DATA_PORT,
                5,
            ),
            (Arc::new(Mutex::new(Rtc::new())), RTC_PORT, 2),
            (
                Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
                ACPI_SLEEP_CONTROL_PORT,
                3,
            ),
            (Arc::new(Mutex::new(AllOnes)), PCI_CONFIG_PORT_START, 8),
        ];
        for (device, port, len) in devices {
            bus.insert(device, u64::from(port), len)?;
        }
        Ok(LegacyDevices { bus, serial })
    }

    /// The serial port, for the console input forwarder.
    pub fn serial(&self) -> &Arc<Mutex<Serial>> {
        &self.serial
    }

    /// The port I/O bus, for the vCPUs.
    pub fn take_bus(&mut self) -> Bus {
        std::mem::take(&mut self.bus)
    }
}
