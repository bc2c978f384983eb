//! Tiny guests on this machine's /dev/kvm (a software KVM here: ~1 µs per guest
//! instruction, so each guest runs a few dozen to a few hundred instructions).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::arch::regs::EntryMode;
use vmm::{ConsoleConfig, ExitReason, Machine, MachineConfig};

/// A console sink the test can read back.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn kvm_available() -> bool {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("SKIPPED: /dev/kvm is absent on this machine");
        return false;
    }
    true
}

fn machine(out: &Capture, vcpus: u8) -> Machine {
    Machine::new(MachineConfig {
        memory_mib: 32,
        vcpus,
        disks: vec![],
        nets: vec![],
        rng: true,
        console: ConsoleConfig::Writer(Box::new(out.clone())),
    })
    .expect("build VM")
}

/// Real-mode guest: prints a string with a lodsb/out loop, then writes SLP_TYP=5|SLP_EN to
/// the ACPI sleep control register.
fn hello_then_poweroff(msg: &[u8]) -> Vec<u8> {
    let msg_addr: u16 = 0x1000 + 21;
    let mut code = vec![
        0xbe, msg_addr as u8, (msg_addr >> 8) as u8, // mov si, msg
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xac, // l: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz done
        0xee, // out dx, al
        0xeb, 0xf8, // jmp l
        0xba, 0x00, 0x06, // done: mov dx, 0x600
        0xb0, 0x34, // mov al, (5 << 2) | (1 << 5)
        0xee, // out dx, al
        0xf4, // hlt (never reached)
    ];
    assert_eq!(code.len(), 21);
    code.extend_from_slice(msg);
    code.push(0);
    code
}

#[test]
fn real_mode_guest_prints_and_powers_off() {
    if !kvm_available() {
        return;
    }
    let out = Capture::default();
    let mut m = machine(&out, 1);
    m.load_raw(&hello_then_poweroff(b"Hello from the guest\n"), 0x1000, None).unwrap();
    let t = Instant::now();
    let reason = m.run().unwrap();
    assert_eq!(reason, ExitReason::PowerOff);
    assert_eq!(String::from_utf8_lossy(&out.0.lock().unwrap()), "Hello from the guest\n");
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn i8042_reset_is_reported_as_reset() {
    if !kvm_available() {
        return;
    }
    let out = Capture::default();
    let mut m = machine(&out, 2);
    // mov dx, 0x3f8; mov al, 'R'; out dx, al; mov al, 0xfe; out 0x64, al; hlt
    let code = [0xba, 0xf8, 0x03, 0xb0, b'R', 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4];
    m.load_raw(&code, 0x1000, None).unwrap();
    assert_eq!(m.run().unwrap(), ExitReason::Reset);
    assert_eq!(&out.0.lock().unwrap()[..], b"R");
}

#[test]
fn long_mode_entry_with_our_page_tables() {
    if !kvm_available() {
        return;
    }
    let out = Capture::default();
    let mut m = machine(&out, 1);
    // The Linux 64-bit boot state (long mode, paging on, flat segments), then:
    // mov dx, 0x3f8; mov al, '6'; out dx, al; mov al, '4'; out dx, al;
    // mov dx, 0x602; mov al, 1; out dx, al  (ACPI reset register)
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'6', 0xee, 0xb0, b'4', 0xee, 0x66, 0xba, 0x02, 0x06, 0xb0, 0x01, 0xee, 0xf4,
    ];
    // Above 1 MiB, as a kernel would be.
    m.load_raw(&code, 0x20_0000, Some(EntryMode::Linux64)).unwrap();
    assert_eq!(m.run().unwrap(), ExitReason::Reset);
    assert_eq!(&out.0.lock().unwrap()[..], b"64");
}

#[test]
fn bad_guest_reports_crash_or_reset_not_hang() {
    if !kvm_available() {
        return;
    }
    let out = Capture::default();
    let mut m = machine(&out, 1);
    // Long mode with an empty IDT: ud2 raises #UD, which cannot be delivered -> triple fault.
    m.load_raw(&[0x0f, 0x0b], 0x20_0000, Some(EntryMode::Linux64)).unwrap();
    let r = m.run().unwrap();
    assert!(matches!(r, ExitReason::Reset | ExitReason::Crash(_)), "{r:?}");
}
