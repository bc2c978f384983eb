//! The boot benchmark's baseline init: prints a marker on the console and powers off.
//!
//! Booting the same kernel with only this in the initramfs measures what the kernel and
//! QEMU cost by themselves, so the benchmark can report our init's share as a ratio.

use std::io::Write;

fn main() {
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let mut console = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/console")
        .ok();
    if let Some(c) = console.as_mut() {
        let _ = writeln!(c, "\r\nCOLLECTIVE-BARE-MARKER {uptime}\r");
    }
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::park();
    }
}
