//! Boot benchmark: time from QEMU start to `login:` against the same kernel booting an
//! initramfs whose init only prints a marker, both under QEMU TCG, interleaved in one run.
//!
//! The machine is shared and noisy, so the figure that counts is the ratio of medians
//! (aim: under 1.15), not either time alone.

use image_builder::{binaries, image};
use std::time::{Duration, Instant};
use system_tests::firmware::{firmware, workspace};
use system_tests::{Machine, MachineConfig};

const RUNS: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(300);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    let fw = firmware();
    let marker_bin =
        binaries::build_static(&workspace(), &[], &[("collective-init", "marker-init")])?;
    let marker_initrd = workspace().join("target/system-tests/marker-initrd.img");
    let marker_bytes = image::marker_initramfs(&marker_bin[0], &marker_initrd)?;
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);

    println!("boot benchmark: qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2G, virtio-net, {RUNS} runs each, interleaved");
    println!(
        "  vmlinuz              {:>10}",
        support::size::human(size(&fw.vmlinuz))
    );
    println!(
        "  initrd.img (ours)    {:>10}",
        support::size::human(size(&fw.initrd))
    );
    println!(
        "  initrd (marker only) {:>10}",
        support::size::human(marker_bytes)
    );

    let config = MachineConfig::default();
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for run in 1..=RUNS {
        let started = Instant::now();
        let mut m = Machine::boot(fw, &config)?;
        m.expect("login:", TIMEOUT)?;
        let t_ours = started.elapsed().as_secs_f64();
        drop(m);

        let started = Instant::now();
        let mut m = Machine::boot_files(fw, &marker_initrd, &config)?;
        m.expect("COLLECTIVE-BARE-MARKER", TIMEOUT)?;
        let t_bare = started.elapsed().as_secs_f64();
        drop(m);
        println!("  run {run}: to login: {t_ours:6.2} s   bare kernel to marker: {t_bare:6.2} s");
        ours.push(t_ours);
        bare.push(t_bare);
    }
    let (m_ours, m_bare) = (median(ours), median(bare));
    println!("median boot to login:          {m_ours:6.2} s");
    println!("median bare kernel to marker:  {m_bare:6.2} s");
    println!(
        "ratio (ours / bare):           {:6.3}   (aim: under 1.15)",
        m_ours / m_bare
    );
    Ok(())
}
