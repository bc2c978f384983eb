//! Builds the Collective terminal's firmware: a Debian kernel, an initramfs holding our
//! static PID 1 and the kernel modules a terminal needs, and an iPXE script that boots
//! them over the network.

pub mod binaries;
pub mod debian;
pub mod disk;
pub mod image;
pub mod initramfs;
pub mod modules;

pub use image::{build, BuildOptions, BuildReport, ProgramSource};
