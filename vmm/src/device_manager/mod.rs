//! Device managers: they own where devices sit on the buses and how they interrupt the
//! guest, so building a machine is a list of "add this device" calls.
//!
//! * [`legacy::LegacyDevices`]: the fixed PC devices on port I/O (serial, i8042, RTC,
//!   ACPI PM registers, PCI config ports).
//! * [`mmio::MmioDeviceManager`]: virtio devices, each in its own MMIO window with a GSI,
//!   an irqfd and one ioeventfd per queue.

pub mod legacy;
pub mod mmio;

/// Errors while placing a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// A KVM registration (irqfd, ioeventfd) failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// Two devices claim the same addresses.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// No MMIO window or GSI is left.
    #[error("{0} virtio devices: at most {max}", max = crate::arch::layout::VIRTIO_GSIS.len())]
    TooManyDevices(usize),
    /// The transport could not be set up.
    #[error("{name}: {source}")]
    Transport {
        /// The device.
        name: String,
        /// The error.
        #[source]
        source: crate::devices::virtio::mmio::TransportError,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> DeviceManagerError {
    move |source| DeviceManagerError::Kvm { what, source }
}
