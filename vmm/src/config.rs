//! What a VM is made of: the one description its front ends fill in before calling
//! [`crate::run`] or [`crate::Machine::new`] (both in the launcher crate: the `vmm run`
//! command line, and `manifest_vm` from an appliance manifest); also the default kernel
//! command line and MAC address parsing.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::devices::virtio::block::BlockBackend;
use crate::display::DisplayConfig;
use crate::input::InputConfig;

/// Where a disk's data comes from.
#[derive(Clone)]
pub enum DiskSource {
    /// A raw image file (or block device) on the host.
    Path(PathBuf),
    /// Any backend, e.g. a cachefs image view with its overlay.
    Backend(Arc<dyn BlockBackend>),
}

impl std::fmt::Debug for DiskSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskSource::Path(p) => write!(f, "Path({})", p.display()),
            DiskSource::Backend(b) => write!(f, "Backend({}, {} bytes)", b.id(), b.size()),
        }
    }
}

/// One virtio-blk disk. Disks appear in the guest in this order (`/dev/vda` first).
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// The data.
    pub source: DiskSource,
    /// Refuse guest writes (VIRTIO_BLK_F_RO).
    pub read_only: bool,
}

/// One virtio-net card on a tap device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// Tap interface name; `None` lets the kernel pick (`vmtap%d`).
    pub tap: Option<String>,
    /// MAC address; `None` picks a random one in QEMU's 52:54:00 range.
    pub mac: Option<[u8; 6]>,
}

/// Where the serial console goes.
pub enum ConsoleConfig {
    /// Any sink (a pty, a log file, a test buffer); no input.
    Writer(Box<dyn Write + Send>),
    /// Input and output streams of the embedding program (the session's console
    /// switcher); Ctrl-A x in the input stops the VM.
    Stream {
        /// Keys for the guest.
        input: Box<dyn Read + Send>,
        /// What the guest prints.
        output: Box<dyn Write + Send>,
    },
    /// Discard output.
    Null,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleConfig::Writer(_) => write!(f, "Writer"),
            ConsoleConfig::Stream { .. } => write!(f, "Stream"),
            ConsoleConfig::Null => write!(f, "Null"),
        }
    }
}

/// The machine: memory, CPUs, devices, console.
#[derive(Debug)]
pub struct MachineConfig {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs (1..=254).
    pub vcpus: u8,
    /// virtio-blk disks, in guest order.
    pub disks: Vec<DiskConfig>,
    /// virtio-net cards, after the disks.
    pub nets: Vec<NetConfig>,
    /// Add a virtio-rng device.
    pub rng: bool,
    /// Serial console.
    pub console: ConsoleConfig,
    /// A virtio-gpu display, after the rng.
    pub display: Option<DisplayConfig>,
    /// virtio-input devices, after the display, in order.
    pub inputs: Vec<InputConfig>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            memory_mib: 256,
            vcpus: 1,
            disks: Vec::new(),
            nets: Vec::new(),
            rng: true,
            console: ConsoleConfig::Null,
            display: None,
            inputs: Vec::new(),
        }
    }
}

/// A kernel to boot.
#[derive(Clone, Debug, Default)]
pub struct KernelConfig {
    /// bzImage, or ELF vmlinux (PVH entry used when present).
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Also describe the virtio-mmio devices as `virtio_mmio.device=` on the command line,
    /// for kernels built with VIRTIO_MMIO_CMDLINE_DEVICES and without ACPI (Debian's kernels
    /// ignore it and read the ACPI DSDT instead).
    pub cmdline_mmio_devices: bool,
}

/// A complete VM.
#[derive(Debug, Default)]
pub struct VmConfig {
    /// Memory, CPUs, devices.
    pub machine: MachineConfig,
    /// What to boot.
    pub kernel: KernelConfig,
}

/// The command line used when none is given: serial console, reboot through the ACPI reset
/// register (falls back to the i8042), quiet probing of hardware we do not have (`pci=off`:
/// there is no PCI host bridge, as Firecracker does without PCI).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=a panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 cryptomgr.notests swiotlb=noforce tsc=reliable pci=off";
