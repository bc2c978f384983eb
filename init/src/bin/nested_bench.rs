//! The nested VMM benchmark's driver, run inside the firmware (by `collective.autorun=`).
//!
//! Boots the test appliance under our VMM and under `qemu-system-x86_64 -M microvm`,
//! alternately, `RUNS` times each: the same kernel, initrd and root image on the same
//! `/dev/kvm`. Measures the time from starting the VMM to the guest's marker, and the
//! VMM's own memory (its RSS minus the RSS of the guest-memory mapping) sampled while the
//! guest is still up. Prints `NESTED-BENCH ...` lines and `NESTED-BENCH DONE`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MEMORY_MIB: u64 = 512;
const APPEND: &str = "console=ttyS0 loglevel=4 probe.file=/probe.txt probe.hold_ms=1500";

struct Sample {
    seconds: f64,
    own_mib: f64,
}

fn ours() -> Command {
    let mut c = Command::new("/bin/vmm");
    c.args([
        "run",
        "--kernel",
        "/appliance/vmlinuz",
        "--initrd",
        "/appliance/initrd.img",
        "--cmdline",
        APPEND,
    ])
    .args([
        "--disk",
        "/appliance/root.img,ro",
        "--disk",
        "/tmp/scratch.img",
        "--memory",
        &MEMORY_MIB.to_string(),
        "--vcpus",
        "2",
        "--no-input",
        "--no-rng",
    ]);
    c
}

fn qemu() -> Command {
    let mut c = Command::new("/usr/bin/qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,rtc=on",
        "-enable-kvm",
        "-cpu",
        "host",
        "-smp",
        "2",
        "-m",
        &MEMORY_MIB.to_string(),
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-L",
        "/usr/share/qemu",
    ])
    .args([
        "-kernel",
        "/appliance/vmlinuz",
        "-initrd",
        "/appliance/initrd.img",
        "-append",
        APPEND,
    ])
    .args([
        "-drive",
        "id=root,file=/appliance/root.img,format=raw,if=none,readonly=on",
        "-device",
        "virtio-blk-device,drive=root",
    ])
    .args([
        "-drive",
        "id=scratch,file=/tmp/scratch.img,format=raw,if=none",
        "-device",
        "virtio-blk-device,drive=scratch",
    ]);
    c
}

/// RSS of the whole process and of its guest-memory mapping (the one anonymous mapping
/// at least as large as the guest's RAM), in KiB, from /proc/PID/smaps.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut mapping_kib = 0u64;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Size:"), Some(v)) => mapping_kib = v.parse().unwrap_or(0),
            (Some("Rss:"), Some(v)) => {
                let rss: u64 = v.parse().unwrap_or(0);
                total += rss;
                if mapping_kib >= MEMORY_MIB * 1024 {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    Some((total, guest))
}

fn run(name: &str, mut cmd: Command) -> Result<Sample, String> {
    std::fs::write("/tmp/scratch.img", vec![0u8; 4 << 20]).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{name}: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let seconds = loop {
        let n = out.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            let _ = child.wait();
            let tail =
                String::from_utf8_lossy(&seen[seen.len().saturating_sub(600)..]).into_owned();
            return Err(format!(
                "{name}: exited before the marker; last output: {tail}"
            ));
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(16).any(|w| w == b"APPLIANCE-PROBE ") {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            return Err(format!("{name}: no marker in 300 s"));
        }
    };
    let (total, guest) = memory(child.id()).unwrap_or((0, 0));
    // Drain until exit so the guest's poweroff completes.
    while out.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    let _ = child.wait();
    Ok(Sample {
        seconds,
        own_mib: total.saturating_sub(guest) as f64 / 1024.0,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let (mut ours_t, mut qemu_t, mut ours_m, mut qemu_m) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 1..=runs {
        for (name, cmd) in [("vmm", ours()), ("qemu-microvm", qemu())] {
            match run(name, cmd) {
                Ok(s) => {
                    println!(
                        "NESTED-BENCH run {i} {name}: {:.2} s to marker, own memory {:.1} MiB\r",
                        s.seconds, s.own_mib
                    );
                    if name == "vmm" {
                        ours_t.push(s.seconds);
                        ours_m.push(s.own_mib);
                    } else {
                        qemu_t.push(s.seconds);
                        qemu_m.push(s.own_mib);
                    }
                }
                Err(e) => println!("NESTED-BENCH run {i} {name}: FAILED: {e}\r"),
            }
        }
    }
    let (ot, qt, om, qm) = (
        median(ours_t),
        median(qemu_t),
        median(ours_m),
        median(qemu_m),
    );
    println!("NESTED-BENCH median time to marker: vmm {ot:.2} s, qemu microvm {qt:.2} s, ratio {:.3} (aim: at most 1.0)\r", ot / qt);
    println!(
        "NESTED-BENCH median own memory: vmm {om:.1} MiB, qemu microvm {qm:.1} MiB, ratio {:.3}\r",
        om / qm
    );
    println!("NESTED-BENCH DONE\r");
}
