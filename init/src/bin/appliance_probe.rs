//! Init of the VMM system test's appliance.
//!
//! Boots as PID 1 of a Debian cloud kernel under our VMM: loads `virtio_mmio` (which
//! binds the ACPI-described virtio devices) and `virtio_blk`, mounts the root disk
//! `/dev/vda` read-only, hashes `probe.file`, writes a record to `/dev/vdb`, prints
//! `APPLIANCE-PROBE sha256=<hex> file=<path>` (or `APPLIANCE-PROBE-FAILED <why>`) and
//! powers off.

use collective_init::kmod::{Loader, ModuleIndex};
use sha2::{Digest, Sha256};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

fn main() {
    let outcome = probe();
    let mut console = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/console")
        .ok();
    let line = match outcome {
        Ok(line) => line,
        Err(why) => format!("APPLIANCE-PROBE-FAILED {why}"),
    };
    if let Some(c) = console.as_mut() {
        let _ = writeln!(c, "\r\n{line}\r");
    }
    // `probe.hold_ms=N` keeps the guest alive a moment after the marker, so a benchmark
    // can measure the VMM's memory while the guest is still running.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(ms) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("probe.hold_ms="))
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    // SAFETY: plain syscalls.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: nix::mount::MsFlags,
) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    nix::mount::mount(Some(source), target, Some(fstype), flags, None::<&str>)
        .map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

fn wait_for(path: &str) -> Result<(), String> {
    let started = Instant::now();
    while !Path::new(path).exists() {
        if started.elapsed() > Duration::from_secs(20) {
            return Err(format!("{path} never appeared"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn probe() -> Result<String, String> {
    use nix::mount::MsFlags;
    mount("devtmpfs", "/dev", "devtmpfs", MsFlags::empty())?;
    mount("proc", "/proc", "proc", MsFlags::empty())?;
    mount("sysfs", "/sys", "sysfs", MsFlags::empty())?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let file = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("probe.file="))
        .unwrap_or("/probe.txt")
        .to_string();

    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("osrelease: {e}"))?;
    let loader = Loader::new(ModuleIndex::load(
        &Path::new("/lib/modules").join(release.trim()),
    ));
    for module in ["virtio_mmio", "virtio_blk"] {
        loader.load(module)?;
    }
    wait_for("/dev/vda")?;
    wait_for("/dev/vdb")?;
    mount("/dev/vda", "/mnt", "ext4", MsFlags::MS_RDONLY)?;
    let data = std::fs::read(Path::new("/mnt").join(file.trim_start_matches('/')))
        .map_err(|e| format!("reading {file}: {e}"))?;
    let digest: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let mut disk = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/vdb")
        .map_err(|e| format!("opening /dev/vdb: {e}"))?;
    disk.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    disk.write_all(format!("PROBE-WROTE sha256={digest}\n").as_bytes())
        .map_err(|e| format!("writing /dev/vdb: {e}"))?;
    disk.sync_all()
        .map_err(|e| format!("flushing /dev/vdb: {e}"))?;
    Ok(format!("APPLIANCE-PROBE sha256={digest} file={file}"))
}
