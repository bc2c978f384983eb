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
//!
//! With `--display` the terminal also gets a screen (QEMU's standard VGA, in a window
//! where there is a display, else over VNC on 127.0.0.1:5900), its PS/2 keyboard
//! and a tablet, and alice gets a graphical appliance first (`paint`, Debian's generic
//! kernel drawing a test pattern and printing what it is sent). Log in on that screen:
//! the seat shows the appliances, Ctrl+Alt+Del opens the terminal's menu.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use system_tests::demo::{self, DemoRepo, DisplayAppliance};
use system_tests::{Firmware, Machine, MachineConfig, Nic};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir = PathBuf::from("out/demo");
    let mut script = false;
    let mut display = false;
    let mut desktop: Option<PathBuf> = None;
    const USAGE: &str = "usage: collective-demo [--dir DIR] [--script] [--display]\n  \
        --dir DIR   where the repository, PXE folder and cache disk go (default out/demo)\n  \
        --script    run without a person (login, work, logout, power-off) and exit 0 if all happened\n  \
        --display   give the terminal a screen, keyboard and tablet and alice a graphical appliance\n  \
        --desktop OUT  with --display: alice's first appliance is the Debian desktop that\n              \
        scripts/desktop-appliance.sh OUT built";
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = args.next().map(PathBuf::from).unwrap_or(dir),
            "--script" => script = true,
            "--display" => display = true,
            "--desktop" => desktop = args.next().map(PathBuf::from),
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("collective-demo: unknown argument {other}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if desktop.is_some() && !display {
        eprintln!("collective-demo: --desktop needs --display\n{USAGE}");
        std::process::exit(2);
    }
    let code = match run(&dir, script, display, desktop.as_deref()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("collective-demo: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(dir: &Path, script: bool, display: bool, desktop: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    eprintln!("demo: building the firmware, the appliances and the repository ...");
    let repo = DemoRepo::create(dir).context("building the demo repository")?;
    if display && !script {
        repo.publish_display(&DisplayAppliance {
            name: "paint".into(),
            seed: 1,
            networks: vec!["uplink".into()],
            ..Default::default()
        })
        .context("publishing the graphical appliance")?;
        if let Some(out) = desktop {
            repo.publish_desktop(out)
                .context("publishing the desktop appliance")?;
            repo.assign(&["desktop", "paint", "desk", "web"])?;
        } else {
            repo.assign(&["paint", "desk", "web"])?;
        }
    }
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
        interactive(&pxe, &disk, display)
    }
}

/// QEMU arguments for the terminal's screen, keyboard and pointer: a window where there
/// is a display to open one on, else VNC on loopback.
fn screen_args() -> Vec<String> {
    let desktop =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    // QEMU's window is a separate Debian package (qemu-system-gui); VNC is built in.
    let gtk = Command::new("qemu-system-x86_64")
        .args(["-display", "help"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "gtk")
        });
    let shown = if desktop && gtk {
        "gtk"
    } else {
        if desktop {
            eprintln!("demo: no QEMU window (apt-get install qemu-system-gui); using VNC instead");
        }
        "vnc=127.0.0.1:0"
    };
    [
        "-device",
        "VGA,xres=1280,yres=800",
        "-device",
        "virtio-tablet-pci",
        "-display",
        shown,
        "-serial",
        "mon:stdio",
    ]
    .map(String::from)
    .to_vec()
}

fn interactive(pxe: &Firmware, disk: &Path, display: bool) -> Result<()> {
    eprintln!(
        "\nPXE-booting the Collective terminal in QEMU (TCG). Its serial console is this terminal."
    );
    eprintln!(
        "Log in as {} with the password {}. In desk try: wget -qO- http://10.0.0.1/",
        demo::USER,
        demo::PASSWORD
    );
    eprintln!("Ctrl-A n switches appliance consoles, Ctrl-A q logs out, Ctrl-] x quits QEMU.\n");
    let screen = if display {
        let args = screen_args();
        eprintln!(
            "The terminal has a screen too ({}): log in there to see paint on it; Ctrl+Alt+Del \
             opens the terminal's menu (switch, lock, log out), Ctrl+Alt+F1..F3 switch.\n",
            if args.iter().any(|a| a == "gtk") {
                "the QEMU window"
            } else {
                "VNC at 127.0.0.1:5900"
            }
        );
        args
    } else {
        vec!["-nographic".to_string()]
    };
    let status = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2G"])
        .args(&screen)
        .args(["-echr", "0x1d"])
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
