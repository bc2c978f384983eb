//! Runs appliances under the VMM: the code that joins the repository's formats, the
//! terminal's cache and the machine.
//!
//! The `vmm` crate owns only the machine (KVM, memory, devices, a block-backend trait);
//! everything that knows about manifests, chunks or terminals lives here:
//!
//! * [`manifest_vm`]: an appliance manifest becomes a [`vmm::VmConfig`] (device order,
//!   bridges per appliance network, stable MACs);
//! * [`cachefs_disk`]: a virtio-blk backend over a cachefs view and overlay;
//! * [`read_trace`]: a backend wrapper recording a boot trace;
//! * [`network`]: a VM's taps up on their appliance networks' bridges;
//! * [`console_switch`]: several appliances' consoles on one terminal;
//! * [`stdio`]: the VM console on this process's terminal (raw mode).
//!
//! The session uses the library; publishers use the `vmm` command built from it.

pub mod cachefs_disk;
pub mod console_switch;
pub mod headless_display;
pub mod manifest_vm;
pub mod network;
pub mod read_trace;
pub mod stdio;
