//! `collective-boot-trace`: records a graphical appliance's boot trace from its own real
//! boot under the terminal's VMM (see `system_tests::boot_trace`), for
//! `collective-repo publish --boot-trace`. Writes `OUT/boot.trace`, the settled picture
//! `OUT/boot-trace.ppm` and the serial log `OUT/boot-trace.log`, and prints how much of each disk the boot read.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use system_tests::boot_trace::{record, Recording};

const USAGE: &str = "usage: collective-boot-trace OUT [--settle SECS] [--limit SECS] [--mode WxH]\n  \
    OUT            the appliance scripts/desktop-appliance.sh built (vmlinuz, initrd.img,\n                 \
    cmdline, system.img); the trace goes to OUT/boot.trace\n  \
    --settle SECS  the boot is over when the picture has not changed for SECS (default 20)\n  \
    --limit SECS   stop after SECS of appliance time whatever the picture does (default 900)\n  \
    --mode WxH     the display mode the appliance gets (default 1280x800)";

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let mut settle = 20.0;
    let mut limit = 900.0;
    let mut mode = (1280, 800);
    while let Some(arg) = args.next() {
        let mut secs = |what: &str| -> f64 {
            match args.next().and_then(|v| v.parse::<f64>().ok()) {
                Some(v) if v > 0.0 && v.is_finite() => v,
                _ => usage_error(&format!("{what} needs a number of seconds")),
            }
        };
        match arg.as_str() {
            "--settle" => settle = secs("--settle"),
            "--limit" => limit = secs("--limit"),
            "--mode" => {
                let v = args.next().unwrap_or_default();
                mode = match launcher_mode(&v) {
                    Some(m) => m,
                    None => usage_error(&format!("bad --mode {v:?}: expected WIDTHxHEIGHT")),
                }
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            a if !a.starts_with('-') && out.is_none() => out = Some(PathBuf::from(a)),
            other => usage_error(&format!("unknown argument {other}")),
        }
    }
    let Some(out) = out else {
        usage_error("name the appliance's folder");
    };
    if let Err(e) = run(out, settle, limit, mode) {
        eprintln!("collective-boot-trace: {e:#}");
        std::process::exit(1);
    }
}

fn usage_error(what: &str) -> ! {
    eprintln!("collective-boot-trace: {what}\n{USAGE}");
    std::process::exit(2);
}

fn launcher_mode(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    Some((
        w.parse().ok().filter(|&w| w > 0)?,
        h.parse().ok().filter(|&h| h > 0)?,
    ))
}

fn run(out: PathBuf, settle: f64, limit: f64, (width, height): (u32, u32)) -> Result<()> {
    let work = system_tests::firmware::workspace().join("target/system-tests/boot-trace");
    eprintln!(
        "boot-trace: booting {} under the terminal's VMM (nested, in QEMU); this takes minutes",
        out.display()
    );
    let recorded = record(&Recording {
        appliance: out.clone(),
        user_disk_bytes: Some(2 << 30),
        memory_mib: 1024,
        vcpus: 2,
        width,
        height,
        settle: Duration::from_secs_f64(settle),
        limit: Duration::from_secs_f64(limit),
        work,
    })?;
    let log_path = out.join("boot-trace.log");
    std::fs::write(&log_path, &recorded.serial_log)
        .with_context(|| format!("writing {}", log_path.display()))?;
    let trace_path = out.join("boot.trace");
    std::fs::write(&trace_path, &recorded.trace)
        .with_context(|| format!("writing {}", trace_path.display()))?;
    if let Some(report) = &recorded.vmm_report {
        println!("{report}");
    }
    let mut blocks: BTreeMap<&str, u64> = BTreeMap::new();
    for line in recorded.trace.lines().filter(|l| !l.starts_with('#')) {
        if let Some((blob, _)) = line.split_once(' ') {
            *blocks.entry(blob).or_default() += 1;
        }
    }
    for (blob, n) in &blocks {
        println!(
            "boot-trace: {blob}: {:.1} MiB read",
            (*n * appliance::boot_trace::TRACE_BLOCK) as f64 / (1 << 20) as f64
        );
    }
    match &recorded.screenshot {
        Some(ppm) => {
            let shot = out.join("boot-trace.ppm");
            std::fs::write(&shot, ppm)?;
            println!("boot-trace: the settled picture is {}", shot.display());
            let lit = lit_share(ppm);
            if lit < 0.2 {
                std::fs::remove_file(&trace_path)?;
                anyhow::bail!(
                    "the settled picture is dark ({:.0} % of it lit): the desktop did not come \
                     up, so this trace is not its boot; look at {} and record again",
                    lit * 100.0,
                    log_path.display()
                );
            }
        }
        None => println!("boot-trace: warning: the appliance showed no picture"),
    }
    println!(
        "boot-trace: wrote {} in {:.0} s; publish with --boot-trace {}",
        trace_path.display(),
        recorded.elapsed.as_secs_f64(),
        trace_path.display()
    );
    Ok(())
}

/// The share of a binary PPM's pixels that are not (nearly) black.
fn lit_share(ppm: &[u8]) -> f64 {
    let Ok(shot) = system_tests::Screenshot::parse_ppm(ppm) else {
        return 0.0;
    };
    let (mut lit, mut all) = (0u64, 0u64);
    for y in (0..shot.height).step_by(4) {
        for x in (0..shot.width).step_by(4) {
            let p = shot.pixel(x, y);
            let brightness = ((p >> 16) & 0xff) + ((p >> 8) & 0xff) + (p & 0xff);
            lit += u64::from(brightness > 48);
            all += 1;
        }
    }
    lit as f64 / all.max(1) as f64
}
