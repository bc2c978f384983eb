//! Nested VMM benchmark: inside the firmware (QEMU TCG, `-cpu max`, nested KVM), boot the
//! test appliance (Debian's cloud kernel, the probe initramfs, an ext4 root) under our
//! VMM and under `qemu-system-x86_64 -M microvm,rtc=on -enable-kvm`, alternately, and
//! compare time from VMM start to the guest's marker and the VMM's own memory (RSS minus
//! touched guest memory). The ratios are the figures that count.

use anyhow::{Context, Result};
use image_builder::binaries;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use system_tests::appliance::TestAppliance;
use system_tests::firmware::{build_variant_with_level, workspace};
use system_tests::{Machine, MachineConfig};

const RUNS: usize = 5;

/// QEMU's binary, the shared libraries it links and the microvm firmware, at their own
/// paths, so the dynamic loader finds them inside the initramfs.
fn qemu_files() -> Result<Vec<(PathBuf, String)>> {
    let binary = "/usr/bin/qemu-system-x86_64";
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let mut files = vec![(
        PathBuf::from(binary),
        binary.trim_start_matches('/').to_string(),
    )];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            files.push((
                PathBuf::from(path),
                path.trim_start_matches('/').to_string(),
            ));
        }
    }
    for rom in ["bios-microvm.bin", "qboot.rom"] {
        let path = PathBuf::from("/usr/share/qemu").join(rom);
        if path.exists() {
            files.push((path, format!("usr/share/qemu/{rom}")));
        }
    }
    Ok(files)
}

fn main() -> Result<()> {
    let dir = workspace().join("target/system-tests/bench-appliance");
    let appliance = TestAppliance::build(&dir)?;
    let bench = binaries::build_static(&workspace(), &[], &[("collective-init", "nested-bench")])?;
    let run = dir.join("run");
    // NESTED_BENCH_DIAG=1: per-run diagnostics of the nested host (see nested_bench.rs).
    let diag = if std::env::var_os("NESTED_BENCH_DIAG").is_some() {
        "diag\n"
    } else {
        ""
    };
    let runs: usize = std::env::var("NESTED_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(RUNS);
    std::fs::write(&run, format!("/bin/nested-bench\n{runs}\n{diag}"))?;
    let mut files = vec![
        (appliance.kernel.clone(), "appliance/vmlinuz".to_string()),
        (appliance.initrd.clone(), "appliance/initrd.img".to_string()),
        (appliance.root_img.clone(), "appliance/root.img".to_string()),
        (bench[0].clone(), "bin/nested-bench".to_string()),
        (run, "appliance/run".to_string()),
    ];
    files.extend(qemu_files()?);
    let firmware = build_variant_with_level(
        "bench-firmware",
        &["collective.autorun=/appliance/run".to_string()],
        &files,
        3,
    )?;

    println!(
        "nested VMM benchmark: firmware in qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2G;"
    );
    println!("inside it, {runs} boots each of the Debian cloud kernel + probe initramfs, 2 vCPUs, 512 MiB, ext4 root");
    let mut m = Machine::boot(&firmware, &MachineConfig::default())?;
    // Each result as it comes, so a long run shows its progress.
    let deadline = std::time::Instant::now() + Duration::from_secs(1800);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        m.expect("NESTED-BENCH ", left)?;
        let line = m.expect("\n", Duration::from_secs(60))?;
        let line = line.trim_end_matches('\r');
        println!("{line}");
        if line == "DONE" {
            break;
        }
    }
    m.send_line("poweroff")?;
    let _ = m.wait_exit(Duration::from_secs(120));
    Ok(())
}
