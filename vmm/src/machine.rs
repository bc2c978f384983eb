//! Builds a VM from a [`MachineConfig`] and runs it: KVM VM and irqchip, guest memory,
//! vCPUs, the buses with legacy and virtio devices, ACPI tables, then the boot payload.
//!
//! Building reads as a list: KVM VM, memory, vCPUs, then devices added to the device
//! managers ([`crate::device_manager`]), which own bus placement, GSIs, irqfds and
//! ioeventfds.
//!
//! Threads while running: one per vCPU (serving port/MMIO exits synchronously through the
//! buses), one worker per active virtio device (woken by ioeventfds, interrupting through
//! irqfds), the optional console input thread, and the caller's thread waiting for the
//! [`ExitSignal`]. Stopping kicks each vCPU once (see [`vcpu::stop_vcpus`]), joins it, then
//! stops the device workers.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use linux_loader::loader::Cmdline;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, MmioDeviceInfo};
use crate::arch::layout::*;
use crate::arch::regs::EntryMode;
use crate::arch::{boot, cpuid, regs};
use crate::config::{ConsoleConfig, DiskConfig, DiskSource, KernelConfig, MachineConfig};
use crate::console;
use crate::device_manager::legacy::LegacyDevices;
use crate::device_manager::mmio::MmioDeviceManager;
use crate::device_manager::DeviceManagerError;
use crate::devices::virtio::block::{Block, BlockBackend, RawFile};
use crate::devices::virtio::gpu::Gpu;
use crate::devices::virtio::input::Input;
use crate::devices::virtio::net::{Net, Tap};
use crate::devices::virtio::rng::Rng;
use crate::display::{DisplayControl, MAX_DIMENSION, MAX_EDID_BYTES};
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
    /// A device could not be placed on a bus or wired to KVM.
    #[error("device setup: {0}")]
    Devices(#[from] DeviceManagerError),
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
    virtio: MmioDeviceManager,
    vcpus: Vec<VcpuFd>,
    legacy: LegacyDevices,
    exit: Arc<ExitSignal>,
    console_input: console::ConsoleInput,
    tap_names: Vec<String>,
    display: Option<DisplayControl>,
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
        let mem_size = check_config(&config)?;
        let (kvm, vm) = vm::create_vm()?;
        let mem = Arc::new(memory::create_guest_memory(mem_size)?);
        memory::register_with_kvm(&vm, &mem)?;
        let exit = Arc::new(ExitSignal::new().map_err(io_err("exit eventfd"))?);
        let vcpus = create_vcpus(&kvm, &vm, config.vcpus)?;

        let MachineConfig {
            disks,
            nets,
            rng,
            console,
            display,
            inputs,
            ..
        } = config;
        let (console_out, console_input) = console_io(console);
        let legacy = LegacyDevices::new(&vm, &exit, console_out)?;

        // Disks first so the first disk is /dev/vda.
        let mut virtio = MmioDeviceManager::new();
        for (i, disk) in disks.iter().enumerate() {
            let name = format!("vd{}", (b'a' + (i as u8 % 26)) as char);
            let device = Block::new(disk_backend(i, disk)?, name.clone());
            virtio.add(&vm, &mem, Box::new(device), &name)?;
        }
        let mut tap_names = Vec::new();
        for (i, net) in nets.iter().enumerate() {
            let tap = Tap::open(net.tap.as_deref().unwrap_or("vmtap%d"))
                .map_err(|e| Error::Device(format!("net {i}: cannot open tap: {e}")))?;
            tap_names.push(tap.name().to_string());
            let name = format!("net{i} ({})", tap.name());
            let device = Net::new(Arc::new(tap), net.mac.unwrap_or_else(random_mac));
            virtio.add(&vm, &mem, Box::new(device), &name)?;
        }
        if rng {
            virtio.add(&vm, &mem, Box::new(Rng::new()), "rng")?;
        }
        // Display and input last, so adding them moves no other device.
        let display = match display {
            Some(d) => {
                let gpu = Gpu::new(d);
                let control = gpu.control();
                virtio.add(&vm, &mem, Box::new(gpu), "gpu")?;
                Some(control)
            }
            None => None,
        };
        for (i, input) in inputs.into_iter().enumerate() {
            let name = format!("input{i} ({:?})", input.kind);
            virtio.add(&vm, &mem, Box::new(Input::new(input)), &name)?;
        }

        Ok(Machine {
            virtio,
            vcpus,
            legacy,
            exit,
            console_input,
            tap_names,
            display,
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

    /// The tap interface of each network card, in `nets` order. They are down and on no
    /// bridge: plugging them into the host's networks is the embedding program's job, done
    /// before [`Machine::run`] (the guest cannot send anything earlier).
    pub fn tap_names(&self) -> &[String] {
        &self.tap_names
    }

    /// Changes the display mode the guest sees (None without a display).
    pub fn display_control(&self) -> Option<DisplayControl> {
        self.display.clone()
    }

    /// Guest memory (for tests and for loading custom payloads).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The virtio-mmio devices, in DSDT order.
    pub fn mmio_devices(&self) -> &[MmioDeviceInfo] {
        self.virtio.devices()
    }

    /// Writes the ACPI tables, loads kernel, initrd and command line, and points the boot
    /// vCPU at the kernel's entry.
    pub fn load_kernel(&mut self, k: &KernelConfig) -> Result<(), Error> {
        acpi::write_tables(&self.mem, self.vcpus.len(), self.virtio.devices())?;
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
            for d in self.virtio.devices() {
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
        acpi::write_tables(&self.mem, self.vcpus.len(), self.virtio.devices())?;
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
            pio: Arc::new(self.legacy.take_bus()),
            mmio: Arc::new(self.virtio.take_bus()),
            exit: self.exit.clone(),
            stop: stop.clone(),
        };
        if let console::ConsoleInput::Stream(input) = std::mem::take(&mut self.console_input) {
            console::spawn_input_forwarder(input, self.legacy.serial().clone(), self.exit.clone());
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
        self.virtio.stop_devices();
        log::info!(
            "vCPUs and devices stopped in {:.3} s",
            t.elapsed().as_secs_f64()
        );
        Ok(self.exit.reason().unwrap_or(ExitReason::Stopped))
    }
}

/// Checks the vCPU count, the number of virtio devices and the memory size; returns the memory size in bytes.
fn check_config(config: &MachineConfig) -> Result<u64, Error> {
    if config.vcpus == 0 || config.vcpus > 254 {
        return Err(Error::Config(format!(
            "{} vCPUs: need 1..=254",
            config.vcpus
        )));
    }
    if let Some(d) = &config.display {
        if !(1..=MAX_DIMENSION).contains(&d.width) || !(1..=MAX_DIMENSION).contains(&d.height) {
            return Err(Error::Config(format!(
                "display {}x{}: each side must be 1..={MAX_DIMENSION}",
                d.width, d.height
            )));
        }
        if d.edid
            .as_ref()
            .is_some_and(|e| e.is_empty() || e.len() > MAX_EDID_BYTES)
        {
            return Err(Error::Config(format!(
                "display EDID must be 1..={MAX_EDID_BYTES} bytes"
            )));
        }
    }
    let virtio_devices = config.disks.len()
        + config.nets.len()
        + usize::from(config.rng)
        + usize::from(config.display.is_some())
        + config.inputs.len();
    if virtio_devices > VIRTIO_GSIS.len() {
        return Err(Error::Config(format!(
            "{virtio_devices} virtio devices: at most {}",
            VIRTIO_GSIS.len()
        )));
    }
    config
        .memory_mib
        .checked_mul(1 << 20)
        .filter(|&s| s >= 16 << 20)
        .ok_or_else(|| {
            Error::Config(format!(
                "{} MiB of memory: need at least 16",
                config.memory_mib
            ))
        })
}

/// Creates the vCPUs with CPUID, MSRs, FPU and LAPIC set up; registers for the boot CPU
/// come with the payload.
fn create_vcpus(kvm: &Kvm, vm: &VmFd, count: u8) -> Result<Vec<VcpuFd>, Error> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("get_supported_cpuid"))?;
    let mut vcpus = Vec::new();
    for id in 0..count {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("create_vcpu"))?;
        fd.set_cpuid2(&cpuid::vcpu_cpuid(&supported, id, count))
            .map_err(kvm_err("set_cpuid2"))?;
        regs::setup_msrs(&fd)?;
        regs::setup_fpu(&fd)?;
        regs::setup_lapic(&fd)?;
        vcpus.push(fd);
    }
    Ok(vcpus)
}

/// Where the serial console writes, and where its input comes from.
fn console_io(console: ConsoleConfig) -> (Box<dyn std::io::Write + Send>, console::ConsoleInput) {
    use console::ConsoleInput;
    match console {
        ConsoleConfig::Stream { input, output } => (output, ConsoleInput::Stream(input)),
        ConsoleConfig::Writer(w) => (w, ConsoleInput::None),
        ConsoleConfig::Null => (Box::new(std::io::sink()), ConsoleInput::None),
    }
}

/// The storage behind disk `i`.
fn disk_backend(i: usize, disk: &DiskConfig) -> Result<Arc<dyn BlockBackend>, Error> {
    match &disk.source {
        DiskSource::Path(p) => Ok(Arc::new(RawFile::open(p, disk.read_only).map_err(
            |source| Error::Disk {
                path: p.display().to_string(),
                source,
            },
        )?)),
        DiskSource::Backend(b) => {
            if disk.read_only && !b.read_only() {
                return Err(Error::Config(format!(
                    "disk {i} must be read-only but its backend is writable"
                )));
            }
            Ok(b.clone())
        }
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
