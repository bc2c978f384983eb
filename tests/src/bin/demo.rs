//! `collective-demo`: boots the firmware in QEMU on this terminal.
//!
//! Interactive by default: QEMU's serial console is this terminal (Ctrl-A X quits).
//! With `--script` it runs without a person: waits for the login screen and for KVM,
//! powers the terminal off, and exits 0 only if all of that happened.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use system_tests::{Firmware, Machine, MachineConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir = PathBuf::from("out/firmware");
    let mut script = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--firmware" => dir = args.next().map(PathBuf::from).unwrap_or(dir),
            "--script" => script = true,
            other => {
                eprintln!("collective-demo: unknown argument {other}; usage: collective-demo [--firmware DIR] [--script]");
                std::process::exit(2);
            }
        }
    }
    let firmware = match Firmware::from_dir(&dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("collective-demo: {e:#}; build it with `make firmware`");
            std::process::exit(1);
        }
    };
    let code = if script {
        scripted(&firmware)
    } else {
        interactive(&firmware)
    };
    std::process::exit(code);
}

fn interactive(firmware: &Firmware) -> i32 {
    eprintln!(
        "Booting the Collective terminal in QEMU (TCG). Its serial console is this terminal."
    );
    eprintln!(
        "At the login prompt try: status, help, poweroff. Ctrl-A X quits QEMU at any time.\n"
    );
    let status = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "2G",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-nic", "user,model=virtio-net-pci"])
        .arg("-kernel")
        .arg(&firmware.vmlinuz)
        .arg("-initrd")
        .arg(&firmware.initrd)
        .arg("-append")
        .arg(&firmware.cmdline)
        .status();
    match status {
        Ok(s) if s.success() => 0,
        Ok(s) => {
            eprintln!("collective-demo: QEMU exited with {s}");
            1
        }
        Err(e) => {
            eprintln!("collective-demo: cannot start qemu-system-x86_64: {e} (run `make deps`)");
            1
        }
    }
}

fn scripted(firmware: &Firmware) -> i32 {
    let run = || -> anyhow::Result<()> {
        let boot = Duration::from_secs(300);
        let mut m = Machine::boot(firmware, &MachineConfig::default())?;
        m.expect("login:", boot)?;
        println!(
            "demo: login screen shown after {:.1} s",
            m.started.elapsed().as_secs_f64()
        );
        m.expect("ready in", boot)?;
        m.expect("login:", boot)?;
        m.send_line("status")?;
        let status = m.expect("login:", Duration::from_secs(60))?;
        print!("{}", status.replace('\r', ""));
        anyhow::ensure!(
            status.contains("ready: /dev/kvm"),
            "KVM is not ready in the firmware"
        );
        m.send_line("poweroff")?;
        m.expect("The terminal is powering off.", Duration::from_secs(60))?;
        let exit = m.wait_exit(Duration::from_secs(60))?;
        anyhow::ensure!(exit.success(), "QEMU exited with {exit}");
        println!("demo: login screen, KVM ready, clean power-off: all done");
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            1
        }
    }
}
