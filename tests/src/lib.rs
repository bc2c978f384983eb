//! The system-test harness: builds the firmware once, boots it in
//! `qemu-system-x86_64 -accel tcg -cpu max` and drives its serial console with
//! expect-style waits.
//!
//! Every wait has a timeout, and a failure prints the whole serial transcript, because
//! "timed out waiting for login:" says nothing without what the machine printed instead.

pub mod appliance;
pub mod boot_trace;
pub mod demo;
pub mod firmware;
pub mod qemu;
pub mod screen;

pub use firmware::Firmware;
pub use qemu::{Machine, MachineConfig, Nic, OVMF};
pub use screen::Screenshot;
