//! Small helpers the terminal's programs share, each in one place:
//!
//! * [`size`]: sizes on command lines (`512M`, `2G`) and sizes for people (`1.5 GiB`);
//! * [`netif`]: the network interface ioctls (up, down, bridges, IPv4 address and route)
//!   and MAC address parsing;
//! * [`logger`]: the one `log` backend (stderr, the kernel log, the console);
//! * [`kmod`]: kernel module names (`usb-storage.ko.xz` is `usb_storage`).
//!
//! It depends on std, libc and log only, since init and cachefs link it.

pub mod kmod;
pub mod logger;
pub mod netif;
pub mod size;
