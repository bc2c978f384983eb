//! Key to pixel: how long after a key goes down on the PC the appliance's answer is on the
//! PC's screen, on the terminal against QEMU as the peer, and what an idle graphical
//! appliance costs the terminal.
//!
//! The appliance is the display test appliance with `mark-keys`: it repaints its
//! top-left corner at every key press. Both sides get the key with QEMU's `sendkey` and
//! are watched with `screendump` until the corner changes:
//!
//! * **terminal**: the firmware in QEMU (TCG) with a standard VGA as the PC's screen and a
//!   PS/2 keyboard; a person's login; the appliance under our VMM on nested KVM. The key
//!   goes PS/2 → evdev → seat → virtio-input → guest; the picture guest → virtio-gpu →
//!   seat → KMS page flip on the VGA.
//! * **qemu**: `qemu-system-x86_64 -M microvm` (TCG) running the same kernel, initramfs and
//!   system disk itself with virtio-gpu and a virtio keyboard, its display read directly.
//!
//! Then, with the appliance shown and left alone, the terminal's `status` (on its serial
//! console) reports the CPU the terminal itself spent over 10 s, apart from the guest.
//!
//! `KEY_LATENCY_PRESSES` (default 20) keys per side. The ratio is the figure that counts:
//! both sides run under the same TCG on the same noisy machine.

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};
use system_tests::demo::{self, DemoRepo, DisplayAppliance};
use system_tests::firmware::workspace;
use system_tests::{Machine, MachineConfig, Nic, Screenshot};

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;
/// Inside the corner mark, away from its edges.
const PROBE: (u32, u32) = (20, 20);

fn main() -> Result<()> {
    let presses: u64 = std::env::var("KEY_LATENCY_PRESSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(20);
    let dir = workspace().join("target/system-tests/key-latency");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let repo = DemoRepo::create(&dir).context("demo repository")?;
    let app = DisplayAppliance {
        name: "paint".into(),
        seed: 1,
        mark_keys: true,
        ..Default::default()
    };
    let out = dir.join("paint-appliance");
    repo.write_display_appliance(&app, &out)?;
    repo.publish_display_from(&app, &out, None)?;
    repo.assign(&["paint"])?;

    eprintln!("key-latency: QEMU running the appliance itself ...");
    let mut peer = boot_peer_until_drawn(&out, app.seed)?;
    let qemu = measure(&mut peer, presses).context("qemu peer")?;
    let _ = peer.monitor("quit");

    eprintln!("key-latency: the terminal, the appliance under our VMM ...");
    let server = repo.serve()?;
    let fw = demo::terminal_firmware()?;
    let disk = demo::empty_disk(&dir.join("cache.img"), 1 << 30)?;
    let mut m = Machine::boot(
        &fw,
        &MachineConfig {
            nic: Nic::VirtioNet,
            extra_cmdline: vec![format!(
                "collective.repo={}",
                server.guest_url().trim_end_matches('/')
            )],
            disks: vec![disk],
            memory_mib: 2048,
            extra_args: [
                "-device",
                &format!("VGA,xres={WIDTH},yres={HEIGHT}"),
                "-vga",
                "none",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    )?;
    m.expect("ready in", Duration::from_secs(240))?;
    m.expect("login:", Duration::from_secs(60))?;
    // The floor: the terminal at its login screen, no session (a full window after
    // bring-up, as below with the appliance).
    std::thread::sleep(Duration::from_secs(25));
    let floor = cpu_line(&mut m)?;
    m.type_text(&format!("{}\n", demo::USER))?;
    std::thread::sleep(Duration::from_secs(2));
    m.type_text(&format!("{}\n", demo::PASSWORD))?;
    wait_for_pattern(&mut m, app.seed, Duration::from_secs(600)).context("terminal")?;
    let terminal = measure(&mut m, presses).context("terminal")?;

    // Idle: the appliance shown, nothing typed; the terminal's own CPU over a window that
    // starts after the last key.
    std::thread::sleep(Duration::from_secs(25));
    let cpu = cpu_line(&mut m)?;

    let (t, q) = (median(&terminal), median(&qemu));
    println!("key to pixel, {presses} presses each (median / 90th percentile / max):");
    println!(
        "  terminal (seat + our VMM, nested)  {:6.0} / {:6.0} / {:6.0} ms",
        t,
        percentile(&terminal, 0.9),
        max(&terminal)
    );
    println!(
        "  qemu (microvm, its own virtio-gpu) {:6.0} / {:6.0} / {:6.0} ms",
        q,
        percentile(&qemu, 0.9),
        max(&qemu)
    );
    println!("  ratio terminal / qemu (medians): {:.2}", t / q);
    println!("terminal at its login screen, status: {floor}");
    println!("idle graphical appliance shown, status: {cpu}");
    Ok(())
}

/// The `cpu` line of the terminal's status screen (on its serial console).
fn cpu_line(m: &mut Machine) -> Result<String> {
    let status = m.status_screen()?;
    status
        .lines()
        .find(|l| l.trim_start().starts_with("cpu "))
        .map(|l| l.trim().to_string())
        .with_context(|| format!("status shows no cpu line:\n{status}"))
}

/// QEMU running the appliance itself: microvm, TCG like the firmware, the appliance's
/// memory and vCPUs, virtio-gpu with the same mode and a virtio keyboard.
fn boot_peer(out: &std::path::Path) -> Result<Machine> {
    let cmdline = std::fs::read_to_string(out.join("cmdline"))?;
    let args: Vec<String> = [
        "-M",
        "microvm,rtc=on",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "256",
        "-smp",
        "1",
        "-kernel",
    ]
    .map(String::from)
    .into_iter()
    .chain([out.join("vmlinuz").display().to_string()])
    .chain([
        "-initrd".into(),
        out.join("initrd.img").display().to_string(),
    ])
    .chain(["-append".into(), cmdline.trim().to_string()])
    .chain([
        "-drive".into(),
        format!(
            "file={},if=none,id=root,format=raw,snapshot=on",
            out.join("system.img").display()
        ),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
        "-device".into(),
        format!("virtio-gpu-device,xres={WIDTH},yres={HEIGHT}"),
        "-device".into(),
        "virtio-keyboard-device".into(),
        // virtio-gpu binds only on modern virtio-mmio (QEMU's microvm defaults to legacy).
        "-global".into(),
        "virtio-mmio.force-legacy=false".into(),
        "-nic".into(),
        "none".into(),
        "-no-reboot".into(),
    ])
    .collect();
    Machine::boot_qemu(&args)
}

/// The peer, once its appliance has drawn. A TCG microvm boot of this kernel now and then
/// stops before its first line on a loaded machine (nothing on the serial line, the display
/// never set up; a boot takes about 30 s otherwise): such a boot is retried, and said so.
fn boot_peer_until_drawn(out: &std::path::Path, seed: u32) -> Result<Machine> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        let mut peer = boot_peer(out)?;
        match wait_for_pattern(&mut peer, seed, Duration::from_secs(180)) {
            Ok(()) => return Ok(peer),
            Err(e) if attempt < ATTEMPTS => {
                eprintln!(
                    "key-latency: the peer's boot {attempt} did not draw ({e:#}); its serial \
                     line: {:?}; booting it again",
                    peer.transcript()
                );
                let _ = peer.monitor("quit");
                attempt += 1;
            }
            Err(e) => {
                bail!(
                    "qemu peer: {e:#}\n----- its serial line -----\n{}",
                    peer.transcript()
                )
            }
        }
    }
}

fn wait_for_pattern(m: &mut Machine, seed: u32, timeout: Duration) -> Result<()> {
    let shows = |s: &Screenshot| {
        s.mismatches(11, |x, y| {
            collective_init::test_pattern::pixel(x, y, s.width, s.height, seed)
        })
        .0 == 0
    };
    m.wait_for_screen(timeout, shows).map(|_| ())
}

/// Presses a key `presses` times; for each, the milliseconds until the corner shows the
/// colour of that press.
fn measure(m: &mut Machine, presses: u64) -> Result<Vec<f64>> {
    // Warm up: the first press wakes paths that are cold (page faults, caches).
    let mut done = 0u64;
    let mut times = Vec::new();
    for i in 0..=presses {
        let want = collective_init::test_pattern::key_mark_colour(done + 1);
        let t0 = Instant::now();
        m.send_key("a")?;
        loop {
            let shot = m.screendump()?;
            if shot.pixel(PROBE.0, PROBE.1) == want {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "press {} never showed: the corner is {:#08x}, not {want:#08x}",
                    done + 1,
                    shot.pixel(PROBE.0, PROBE.1)
                );
            }
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        done += 1;
        if i > 0 {
            times.push(ms);
        }
        // Let the key's release and the flip settle before the next press.
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(times)
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn max(v: &[f64]) -> f64 {
    sorted(v).last().copied().unwrap_or(0.0)
}
