//! Builds a VM from a [`MachineConfig`] and runs it: KVM VM and irqchip, guest memory,
//! vCPUs, the buses with legacy and virtio devices, ACPI tables, then the boot payload.
//!
//! Threads while running: one per vCPU (serving port/MMIO exits synchronously through the
//! buses), one worker per active virtio device (woken by ioeventfds, interrupting through
//! irqfds), the optional console input thread, and the caller's thread waiting for the
//! [`ExitSignal`].

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use linux_loader::loader::Cmdline;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acpi::{self, MmioDeviceInfo};
use crate::arch::layout::*;
use crate::arch::regs::EntryMode;
use crate::arch::{boot, cpuid, regs};
use crate::bus::{Bus, BusDevice};
use crate::config::{ConsoleConfig, DiskSource, KernelConfig, MachineConfig};
use crate::console;
use crate::devices::legacy::{acpi_pm::AcpiPm, i8042::I8042, rtc::Rtc, serial::Serial, AllOnes};
use crate::devices::virtio::block::{Block, BlockBackend, RawFile};
use crate::devices::virtio::mmio::{reg, MmioTransport};
use crate::devices::virtio::net::{Net, Tap};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::VirtioDevice;
use crate::exit::{ExitReason, ExitSignal};
use crate::vstate::memory::{self, GuestMemoryMmap};
use crate::vstate::{vcpu, vm};

/// Errors while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// KVM VM creation.
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// vCPU register setup.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// Kernel loading.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// A KVM call.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A disk image.
    #[error("cannot open disk {path}: {source}")]
    Disk {
        /// The image.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Host I/O (kernel file, eventfds, threads).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A device could not be set up.
    #[error("device setup: {0}")]
    Device(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A built VM, ready to load a payload and run.
pub struct Machine {
    // Field order matters for drop: devices and vCPUs go before the VM and memory.
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    vcpus: Vec<VcpuFd>,
    serial: Arc<Mutex<Serial>>,
    pio: Bus,
    mmio: Bus,
    exit: Arc<ExitSignal>,
    mmio_devices: Vec<MmioDeviceInfo>,
    console_input: console::ConsoleInput,
    // Kept open for the VM's lifetime: closing it would destroy the VM under the vCPUs.
    _vm: VmFd,
    _kvm: Kvm,
    mem: Arc<GuestMemoryMmap>,
    mem_size: u64,
    created: std::time::Instant,
}

impl Machine {
    /// Creates the VM, its memory, vCPUs and devices.
    pub fn new(config: MachineConfig) -> Result<Machine, Error> {
        let created = std::time::Instant::now();
        if config.vcpus == 0 || config.vcpus > 254 {
            return Err(Error::Config(format!(
                "{} vCPUs: need 1..=254",
                config.vcpus
            )));
        }
        let mem_size = config
            .memory_mib
            .checked_mul(1 << 20)
            .filter(|&s| s >= 16 << 20)
            .ok_or_else(|| {
                Error::Config(format!(
                    "{} MiB of memory: need at least 16",
                    config.memory_mib
                ))
            })?;
        let (kvm, vm) = vm::create_vm()?;
        let mem = Arc::new(memory::create_guest_memory(mem_size)?);
        memory::register_with_kvm(&vm, &mem)?;
        let exit = Arc::new(ExitSignal::new().map_err(io_err("exit eventfd"))?);

        // vCPUs: CPUID, MSRs, FPU and LAPIC for all; registers for the boot CPU come with the payload.
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get_supported_cpuid"))?;
        let mut vcpus = Vec::new();
        for id in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("create_vcpu"))?;
            fd.set_cpuid2(&cpuid::vcpu_cpuid(&supported, id, config.vcpus))
                .map_err(kvm_err("set_cpuid2"))?;
            regs::setup_msrs(&fd)?;
            regs::setup_fpu(&fd)?;
            regs::setup_lapic(&fd)?;
            vcpus.push(fd);
        }

        // Legacy devices on port I/O.
        let mut pio = Bus::new();
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("serial eventfd"))?;
        vm.register_irqfd(&serial_irq, SERIAL_GSI)
            .map_err(kvm_err("register_irqfd (serial)"))?;
        use console::ConsoleInput;
        let (out, console_input): (Box<dyn std::io::Write + Send>, ConsoleInput) =
            match config.console {
                ConsoleConfig::Stream { input, output } => (output, ConsoleInput::Stream(input)),
                ConsoleConfig::Writer(w) => (w, ConsoleInput::None),
                ConsoleConfig::Null => (Box::new(std::io::sink()), ConsoleInput::None),
            };
        let serial_irq2 = serial_irq.try_clone().map_err(io_err("serial eventfd"))?;
        let serial = Arc::new(Mutex::new(Serial::new(serial_irq2, out)));
        let bus_err = |e: crate::bus::BusError| Error::Device(e.to_string());
        pio.insert(serial.clone(), u64::from(SERIAL_PORT), 8)
            .map_err(bus_err)?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            u64::from(I8042_DATA_PORT),
            5,
        )
        .map_err(bus_err)?;
        pio.insert(Arc::new(Mutex::new(Rtc::new())), u64::from(RTC_PORT), 2)
            .map_err(bus_err)?;
        pio.insert(
            Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
            u64::from(ACPI_SLEEP_CONTROL_PORT),
            3,
        )
        .map_err(bus_err)?;
        pio.insert(
            Arc::new(Mutex::new(AllOnes)),
            u64::from(PCI_CONFIG_PORT_START),
            8,
        )
        .map_err(bus_err)?;

        // virtio devices on MMIO, disks first so the first disk is /dev/vda.
        let mut devices: Vec<(Box<dyn VirtioDevice>, String)> = Vec::new();
        for (i, disk) in config.disks.iter().enumerate() {
            let backend: Arc<dyn BlockBackend> = match &disk.source {
                DiskSource::Path(p) => Arc::new(RawFile::open(p, disk.read_only).map_err(
                    |source| Error::Disk {
                        path: p.display().to_string(),
                        source,
                    },
                )?),
                DiskSource::Backend(b) => {
                    if disk.read_only && !b.read_only() {
                        return Err(Error::Config(format!(
                            "disk {i} must be read-only but its backend is writable"
                        )));
                    }
                    b.clone()
                }
            };
            let name = format!("vd{}", (b'a' + (i as u8 % 26)) as char);
            devices.push((Box::new(Block::new(backend, name.clone())), name));
        }
        for (i, net) in config.nets.iter().enumerate() {
            let tap = Tap::open(net.tap.as_deref().unwrap_or("vmtap%d"))
                .map_err(|e| Error::Device(format!("net {i}: cannot open tap: {e}")))?;
            if let Some(br) = &net.bridge {
                tap.attach_to_bridge(br).map_err(|e| {
                    Error::Device(format!(
                        "net {i}: cannot attach {} to bridge {br}: {e}",
                        tap.name()
                    ))
                })?;
            }
            let mac = net.mac.unwrap_or_else(random_mac);
            let name = format!("net{i} ({})", tap.name());
            devices.push((Box::new(Net::new(Arc::new(tap), mac)), name));
        }
        if config.rng {
            devices.push((Box::new(Rng::new()), "rng".into()));
        }
        if devices.len() > VIRTIO_GSIS.len() {
            return Err(Error::Config(format!(
                "{} virtio devices: at most {}",
                devices.len(),
                VIRTIO_GSIS.len()
            )));
        }
        let mut mmio = Bus::new();
        let mut transports = Vec::new();
        let mut mmio_devices = Vec::new();
        for (i, (dev, name)) in devices.into_iter().enumerate() {
            let base = VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE;
            let gsi = VIRTIO_GSIS[i];
            let irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("virtio irq eventfd"))?;
            vm.register_irqfd(&irq, gsi)
                .map_err(kvm_err("register_irqfd (virtio)"))?;
            let t = MmioTransport::new(dev, mem.clone(), irq)
                .map_err(|e| Error::Device(format!("{name}: {e}")))?;
            for (q, evt) in t.queue_evts().iter().enumerate() {
                vm.register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY),
                    q as u32,
                )
                .map_err(kvm_err("register_ioevent"))?;
            }
            let t = Arc::new(Mutex::new(t));
            mmio.insert(
                t.clone() as Arc<Mutex<dyn BusDevice>>,
                base,
                VIRTIO_MMIO_SIZE,
            )
            .map_err(bus_err)?;
            log::info!("virtio {name} at {base:#x}, GSI {gsi}");
            transports.push(t);
            mmio_devices.push(MmioDeviceInfo { base, gsi });
        }

        Ok(Machine {
            transports,
            vcpus,
            serial,
            pio,
            mmio,
            exit,
            mmio_devices,
            console_input,
            _vm: vm,
            _kvm: kvm,
            mem,
            mem_size,
            created,
        })
    }

    /// The signal that ends the VM: request [`ExitReason::Stopped`] on it to stop the VM
    /// from another thread (a logout, a timeout).
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// Guest memory (for tests and for loading custom payloads).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The virtio-mmio devices, in DSDT order.
    pub fn mmio_devices(&self) -> &[MmioDeviceInfo] {
        &self.mmio_devices
    }

    /// Writes the ACPI tables, loads kernel, initrd and command line, and points the boot
    /// vCPU at the kernel's entry.
    pub fn load_kernel(&mut self, k: &KernelConfig) -> Result<(), Error> {
        acpi::write_tables(&self.mem, self.vcpus.len(), &self.mmio_devices)?;
        let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE)
            .map_err(|e| Error::Config(format!("command line: {e}")))?;
        let text = if k.cmdline.trim().is_empty() {
            crate::config::DEFAULT_CMDLINE
        } else {
            k.cmdline.as_str()
        };
        cmdline
            .insert_str(text)
            .map_err(|e| Error::Config(format!("command line: {e}")))?;
        if k.cmdline_mmio_devices {
            for d in &self.mmio_devices {
                cmdline
                    .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(d.base), d.gsi, None)
                    .map_err(|e| Error::Config(format!("command line: {e}")))?;
            }
        }
        let mut kernel = File::open(&k.kernel)
            .map_err(io_err(format!("cannot open kernel {}", k.kernel.display())))?;
        let mut initrd = match &k.initrd {
            Some(p) => {
                Some(File::open(p).map_err(io_err(format!("cannot open initrd {}", p.display())))?)
            }
            None => None,
        };
        let entry = boot::load(
            &self.mem,
            self.mem_size,
            &mut kernel,
            initrd.as_mut(),
            &cmdline,
        )?;
        let bsp = &self.vcpus[0];
        regs::setup_sregs(&self.mem, bsp, entry.mode)?;
        regs::setup_regs(bsp, entry.mode, entry.entry)?;
        log::info!(
            "VM ready to run {:.3} s after creation",
            self.created.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Loads raw machine code at `addr` and starts the boot vCPU there: in real mode
    /// (`mode == None`, CS = DS = 0) or in the given protected/long mode set up as for a
    /// kernel. For tests and diagnostics; a real payload uses [`Machine::load_kernel`].
    pub fn load_raw(
        &mut self,
        code: &[u8],
        addr: u64,
        mode: Option<EntryMode>,
    ) -> Result<(), Error> {
        self.mem
            .write_slice(code, GuestAddress(addr))
            .map_err(|e| Error::Config(format!("code does not fit at {addr:#x}: {e}")))?;
        acpi::write_tables(&self.mem, self.vcpus.len(), &self.mmio_devices)?;
        let bsp = &self.vcpus[0];
        match mode {
            Some(m) => {
                regs::setup_sregs(&self.mem, bsp, m)?;
                regs::setup_regs(bsp, m, addr)?;
            }
            None => {
                let mut sregs = bsp.get_sregs().map_err(kvm_err("get_sregs"))?;
                sregs.cs.base = 0;
                sregs.cs.selector = 0;
                bsp.set_sregs(&sregs).map_err(kvm_err("set_sregs"))?;
                let r = kvm_bindings::kvm_regs {
                    rip: addr,
                    rflags: 2,
                    rsp: 0x8000,
                    ..Default::default()
                };
                bsp.set_regs(&r).map_err(kvm_err("set_regs"))?;
            }
        }
        Ok(())
    }

    /// Runs the VM until it powers off, resets, crashes or is stopped.
    pub fn run(mut self) -> Result<ExitReason, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = vcpu::VcpuContext {
            pio: Arc::new(std::mem::take(&mut self.pio)),
            mmio: Arc::new(std::mem::take(&mut self.mmio)),
            exit: self.exit.clone(),
            stop: stop.clone(),
        };
        if let console::ConsoleInput::Stream(input) = std::mem::take(&mut self.console_input) {
            console::spawn_input_forwarder(input, self.serial.clone(), self.exit.clone());
        }
        let mut threads = Vec::new();
        for (id, fd) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            match vcpu::spawn_vcpu(id as u64, fd, ctx.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    vcpu::stop_vcpus(&stop, threads);
                    return Err(Error::Io {
                        what: "cannot start vCPU thread".into(),
                        source: e,
                    });
                }
            }
        }
        wait_readable(self.exit.eventfd());
        let t = std::time::Instant::now();
        log::info!(
            "VM ending {:.3} s after creation",
            self.created.elapsed().as_secs_f64()
        );
        vcpu::stop_vcpus(&stop, threads);
        // Dropping the transports stops the device workers (each joins its thread).
        self.transports.clear();
        log::info!(
            "vCPUs and devices stopped in {:.3} s",
            t.elapsed().as_secs_f64()
        );
        Ok(self.exit.reason().unwrap_or(ExitReason::Stopped))
    }
}

/// A random MAC in QEMU's 52:54:00 range (unicast, so the guest accepts it).
fn random_mac() -> [u8; 6] {
    let mut r = [0u8; 3];
    // SAFETY: getrandom into a live 3-byte buffer; on failure the bytes stay zero.
    unsafe { libc::getrandom(r.as_mut_ptr().cast(), 3, 0) };
    [0x52, 0x54, 0x00, r[0], r[1], r[2]]
}

fn wait_readable(evt: &EventFd) {
    loop {
        let mut p = libc::pollfd {
            fd: evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r > 0 {
            return;
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}
