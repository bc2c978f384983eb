//! The terminal's KVM virtual machine monitor that runs the user's appliances.
//!
//! Entry point for the firmware and the `vmm` command: [`run`] with a [`VmConfig`]; or
//! [`Machine`] to build, load and run in steps. Layout follows Firecracker's `vmm` crate on
//! a smaller scale: `arch` (layout, boot, registers, CPUID), `vstate` (memory, VM, vCPUs),
//! `devices` (legacy PC devices, virtio over MMIO), `display` and `input` (what the
//! embedding program's seat sees of the virtio-gpu and virtio-input devices), `acpi`, `bus`, and `machine` tying them
//! together. See docs/vmm.md for the design.

#![warn(missing_docs)]

pub mod acpi;
pub mod arch;
pub mod bus;
pub mod config;
pub mod console;
pub mod device_manager;
pub mod devices;
pub mod display;
pub mod exit;
pub mod input;
pub mod machine;
pub mod vstate;

pub use config::{
    ConsoleConfig, DiskConfig, DiskSource, KernelConfig, MachineConfig, NetConfig, VmConfig,
};
pub use devices::virtio::block::{BlockBackend, RawFile};
pub use display::{
    CursorImage, DisplayConfig, DisplayControl, DisplaySink, Framebuffer, PixelFormat, Rect,
};
pub use exit::{ExitReason, ExitSignal};
pub use input::{InputConfig, InputEvent, InputKind, InputQueue};
pub use machine::{Error, Machine};

/// Builds the VM described by `config`, boots its kernel and runs it to the end.
pub fn run(config: VmConfig) -> Result<ExitReason, Error> {
    let mut m = Machine::new(config.machine)?;
    m.load_kernel(&config.kernel)?;
    m.run()
}
