//! Places virtio devices on the MMIO bus: window, GSI, irqfd, ioeventfds.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{kvm_err, DeviceManagerError};
use crate::acpi::MmioDeviceInfo;
use crate::arch::layout::{VIRTIO_GSIS, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use crate::bus::{Bus, BusDevice};
use crate::devices::virtio::mmio::{reg, MmioTransport};
use crate::devices::virtio::VirtioDevice;
use crate::vstate::memory::GuestMemoryMmap;

/// The virtio-mmio devices of a VM and the MMIO bus they sit on.
///
/// Device `i` gets the window at `VIRTIO_MMIO_START + i * VIRTIO_MMIO_SIZE` and GSI
/// `VIRTIO_GSIS[i]`, in the order devices are added (so the first disk added is
/// `/dev/vda`). Its interrupt is an irqfd on that GSI; each queue's notification register
/// write (QueueNotify with the queue index as data) is an ioeventfd, so a notify costs the
/// vCPU no exit to userspace.
pub struct MmioDeviceManager {
    bus: Bus,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    devices: Vec<MmioDeviceInfo>,
}

impl Default for MmioDeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl MmioDeviceManager {
    /// No devices yet.
    pub fn new() -> Self {
        Self {
            bus: Bus::new(),
            transports: Vec::new(),
            devices: Vec::new(),
        }
    }

    /// Puts `device` in the next window, wired to `vm`; `name` is for logs.
    pub fn add(
        &mut self,
        vm: &VmFd,
        mem: &Arc<GuestMemoryMmap>,
        device: Box<dyn VirtioDevice>,
        name: &str,
    ) -> Result<MmioDeviceInfo, DeviceManagerError> {
        let slot = self.devices.len();
        let gsi = *VIRTIO_GSIS
            .get(slot)
            .ok_or(DeviceManagerError::TooManyDevices(slot + 1))?;
        let base = VIRTIO_MMIO_START + slot as u64 * VIRTIO_MMIO_SIZE;

        let irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd(&irq, gsi)
            .map_err(kvm_err("register_irqfd (virtio)"))?;
        let transport = MmioTransport::new(device, mem.clone(), irq).map_err(|source| {
            DeviceManagerError::Transport {
                name: name.to_string(),
                source,
            }
        })?;
        for (queue, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY),
                queue as u32,
            )
            .map_err(kvm_err("register_ioevent"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.bus.insert(
            transport.clone() as Arc<Mutex<dyn BusDevice>>,
            base,
            VIRTIO_MMIO_SIZE,
        )?;
        log::info!("virtio {name} at {base:#x}, GSI {gsi}");
        self.transports.push(transport);
        let info = MmioDeviceInfo { base, gsi };
        self.devices.push(info);
        Ok(info)
    }

    /// The devices, in the order they were added (the order of the DSDT and of the
    /// kernel command line).
    pub fn devices(&self) -> &[MmioDeviceInfo] {
        &self.devices
    }

    /// The MMIO bus, for the vCPUs; the manager keeps the devices themselves.
    pub fn take_bus(&mut self) -> Bus {
        std::mem::take(&mut self.bus)
    }

    /// Stops every device's worker (each joins its thread). The vCPUs must be stopped
    /// first: a driver write could otherwise activate a device again.
    pub fn stop_devices(&mut self) {
        for t in &self.transports {
            crate::bus::lock(t).stop_device();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::MMIO_MAGIC;
    use crate::devices::virtio::rng::Rng;
    use crate::vstate::{memory, vm};

    #[test]
    fn devices_get_consecutive_windows_and_gsis_until_none_is_left() {
        if std::fs::metadata("/dev/kvm").is_err() {
            eprintln!("SKIPPED: /dev/kvm is absent on this machine");
            return;
        }
        let (_kvm, vm) = vm::create_vm().unwrap();
        let mem = Arc::new(memory::create_guest_memory(16 << 20).unwrap());
        let mut dm = MmioDeviceManager::new();
        for (i, &gsi) in VIRTIO_GSIS.iter().enumerate() {
            let info = dm.add(&vm, &mem, Box::new(Rng::new()), "rng").unwrap();
            assert_eq!(info.base, VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE);
            assert_eq!(info.gsi, gsi);
        }
        assert!(matches!(
            dm.add(&vm, &mem, Box::new(Rng::new()), "one too many"),
            Err(DeviceManagerError::TooManyDevices(16))
        ));
        assert_eq!(dm.devices().len(), VIRTIO_GSIS.len());
        let bus = dm.take_bus();
        let mut magic = [0u8; 4];
        let last = VIRTIO_MMIO_START + (VIRTIO_GSIS.len() as u64 - 1) * VIRTIO_MMIO_SIZE;
        assert!(bus.read(last, &mut magic));
        assert_eq!(u32::from_le_bytes(magic), MMIO_MAGIC);
        assert!(!bus.read(last + VIRTIO_MMIO_SIZE, &mut magic));
        dm.stop_devices();
    }
}
