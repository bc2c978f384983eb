//! `collective-demo`: the whole terminal on this machine, over loopback.
//!
//! Builds the firmware (trusting the demo publisher's key), a demo repository with two
//! appliances (`desk`, a Debian cloud-kernel appliance with a shell and a user disk, and
//! `web`, a web server on the same appliance network), the user `alice`, starts
//! `collective-repo serve`, and PXE-boots the firmware in QEMU (TCG) with a cache disk.
//!
//! Interactive by default: QEMU's serial console is this terminal. Log in as alice
//! (password walk-up-and-work); Ctrl-A n switches appliance consoles, Ctrl-A q logs out;
//! Ctrl-] x quits QEMU. With `--script` it runs without a person: logs in, fetches the
//! web appliance's page from the desk appliance, writes a file on the user disk, logs
//! out, powers off, and exits 0 only if all of that happened.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use system_tests::demo::{self, DemoRepo};
use system_tests::{Firmware, Machine, MachineConfig, Nic};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir = PathBuf::from("out/demo");
    let mut script = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = args.next().map(PathBuf::from).unwrap_or(dir),
            "--script" => script = true,
            other => {
                eprintln!("collective-demo: unknown argument {other}; usage: collective-demo [--dir DIR] [--script]");
                std::process::exit(2);
            }
        }
    }
    let code = match run(&dir, script) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("collective-demo: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(dir: &Path, script: bool) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    eprintln!("demo: building the firmware, the appliances and the repository ...");
    let repo = DemoRepo::create(dir).context("building the demo repository")?;
    let server = repo.serve().context("starting collective-repo serve")?;
    let firmware = demo::terminal_firmware().context("building the firmware")?;
    let pxe = demo::pxe_folder(&firmware, &dir.join("pxe"), &server.guest_url())?;
    let disk = dir.join("cache.img");
    if !disk.exists() {
        demo::empty_disk(&disk, 2 << 30)?;
    }
    eprintln!(
        "demo: repository {} served on 127.0.0.1:{} (the terminal sees {}), firmware in {}, cache disk {}",
        repo.dir.display(),
        server.port,
        server.guest_url(),
        pxe.dir.display(),
        disk.display()
    );
    if script {
        scripted(&pxe, &disk)
    } else {
        interactive(&pxe, &disk)
    }
}

fn interactive(pxe: &Firmware, disk: &Path) -> Result<()> {
    eprintln!(
        "\nPXE-booting the Collective terminal in QEMU (TCG). Its serial console is this terminal."
    );
    eprintln!(
        "Log in as {} with the password {}. In desk try: wget -qO- http://10.0.0.1/",
        demo::USER,
        demo::PASSWORD
    );
    eprintln!("Ctrl-A n switches appliance consoles, Ctrl-A q logs out, Ctrl-] x quits QEMU.\n");
    let status = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2G"])
        .args(["-nographic", "-echr", "0x1d"])
        .arg("-netdev")
        .arg(format!(
            "user,id=n0,tftp={},bootfile=boot.ipxe",
            pxe.dir.display()
        ))
        .args(["-device", "virtio-net-pci,netdev=n0,bootindex=1"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .status()
        .context("starting qemu-system-x86_64 (run `make deps`)")?;
    anyhow::ensure!(status.success(), "QEMU exited with {status}");
    Ok(())
}

fn step(what: &str, m: &Machine) {
    println!("demo: {what} ({:.1} s)", m.started.elapsed().as_secs_f64());
}

fn scripted(pxe: &Firmware, disk: &Path) -> Result<()> {
    let boot = Duration::from_secs(300);
    let short = Duration::from_secs(90);
    let config = MachineConfig {
        nic: Nic::VirtioNet,
        pxe: true,
        disks: vec![disk.to_path_buf()],
        ..Default::default()
    };
    let mut m = Machine::boot(pxe, &config)?;
    m.expect("login:", boot)?;
    step("login screen shown", &m);
    m.expect("address: 10.0.2.15/24", boot)?;
    m.expect("login:", short)?;
    step("network up", &m);
    m.send_line(demo::USER)?;
    m.expect("Password:", short)?;
    m.send_line(demo::PASSWORD)?;
    m.expect("alice logged in", short)?;
    step("logged in", &m);
    m.expect(demo::DESK_READY, boot)?;
    m.expect(demo::DESK_PROMPT, short)?;
    step("desk appliance ready", &m);
    m.send_line("for i in $(seq 60); do wget -q -O - http://10.0.0.1/ && break; sleep 1; done")?;
    let page = m.expect(demo::DESK_PROMPT, short)?;
    anyhow::ensure!(
        page.contains(demo::WEB_PAGE),
        "the desk appliance could not reach the web appliance: {page}"
    );
    step(
        "desk fetched the web appliance's page over the office network",
        &m,
    );
    m.send_line("date > /home/last-demo.txt; cat /home/last-demo.txt")?;
    m.expect(demo::DESK_PROMPT, short)?;
    m.send_line("exit")?;
    m.expect("desk ended: powered off", short)?;
    m.send_bytes(b"\x01q")?;
    let logout = m.expect("Logged out.", short)?;
    anyhow::ensure!(
        logout.contains("desk/user: saved as version"),
        "the user disk was not written back: {logout}"
    );
    step("logged out, user disk written back", &m);
    m.expect("login:", short)?;
    m.send_line("poweroff")?;
    m.expect("The terminal is powering off.", short)?;
    let exit = m.wait_exit(short)?;
    anyhow::ensure!(exit.success(), "QEMU exited with {exit}");
    step("powered off", &m);
    println!("demo: PXE boot, login, appliances, network, user disk, logout, power-off: all done");
    Ok(())
}
