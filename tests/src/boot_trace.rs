//! Recording a graphical appliance's boot trace from its own real boot, the way a terminal
//! runs it: the firmware boots in QEMU (TCG), and its `/bin/vmm run --display` boots the
//! appliance on the firmware's nested KVM with the same devices the session gives it
//! (virtio-gpu, keyboard, tablet, its disks), recording the order of its first reads
//! (`--trace-reads`) until its picture has stopped changing (the desktop is up).
//!
//! The appliance's disks reach the firmware as QEMU disks with `snapshot=on` (the
//! appliance may write; the files stay as they were); the trace and a screenshot of
//! the settled desktop come back on two raw scratch disks (`vmm` writes each file
//! straight onto its block device).

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::firmware::build_variant;
use crate::{Machine, MachineConfig};

/// What to boot and how long to let it run.
pub struct Recording {
    /// Kernel, initramfs, command line and system disk image (`scripts/desktop-appliance.sh`
    /// output: `vmlinuz`, `initrd.img`, `cmdline`, `system.img`).
    pub appliance: PathBuf,
    /// Size of the blank user disk the appliance gets as `vdb` (as published), if any.
    pub user_disk_bytes: Option<u64>,
    /// Guest memory and vCPUs (as published).
    pub memory_mib: u64,
    pub vcpus: u8,
    /// The display mode the guest gets.
    pub width: u32,
    pub height: u32,
    /// The boot is over once the picture has not changed for this long.
    pub settle: Duration,
    /// Give up (and keep what was traced) after this long.
    pub limit: Duration,
    /// Where the firmware variant and scratch disks go.
    pub work: PathBuf,
}

/// What a recording produced.
pub struct Recorded {
    /// The boot trace, as `collective-repo publish --boot-trace` reads it.
    pub trace: String,
    /// The settled picture as a binary PPM, if the guest showed one.
    pub screenshot: Option<Vec<u8>>,
    /// `vmm`'s own account of the picture's first draw and last change.
    pub vmm_report: Option<String>,
    /// Wall time of the whole recording.
    pub elapsed: Duration,
    /// The end of the firmware's serial log (what went wrong, if something did).
    pub log_tail: String,
    /// The whole serial log: the firmware's, then the appliance's own console.
    pub serial_log: String,
}

const TRACE_DISK_BYTES: u64 = 64 << 20;
const SHOT_DISK_BYTES: u64 = 64 << 20;

/// Boots the appliance under the firmware's VMM and records its boot trace.
pub fn record(r: &Recording) -> Result<Recorded> {
    let dir = &r.appliance;
    for f in ["vmlinuz", "initrd.img", "system.img", "cmdline"] {
        if !dir.join(f).is_file() {
            bail!(
                "{} has no {f}: build the appliance first (make desktop-appliance)",
                dir.display()
            );
        }
    }
    let cmdline = fs::read_to_string(dir.join("cmdline"))?;
    fs::create_dir_all(&r.work)?;
    let user = match r.user_disk_bytes {
        Some(bytes) => Some(scratch(&r.work.join("user.img"), bytes)?),
        None => None,
    };
    let trace_disk = scratch(&r.work.join("trace.img"), TRACE_DISK_BYTES)?;
    let shot_disk = scratch(&r.work.join("screenshot.img"), SHOT_DISK_BYTES)?;

    // In the firmware: the appliance's disks first (vda system, vdb user; snapshot=on), then
    // the trace's disk and the screenshot's.
    let appliance_disks: Vec<PathBuf> = std::iter::once(dir.join("system.img"))
        .chain(user)
        .collect();
    let device = |i: usize| format!("/dev/vd{}", (b'a' + i as u8) as char);
    let mut argv = vec![
        "/bin/vmm".to_string(),
        "run".into(),
        "--kernel".into(),
        "/appliance/vmlinuz".into(),
        "--initrd".into(),
        "/appliance/initrd.img".into(),
        "--cmdline".into(),
        cmdline.trim().to_string(),
    ];
    for i in 0..appliance_disks.len() {
        argv.extend(["--disk".to_string(), device(i)]);
    }
    let n = appliance_disks.len();
    argv.extend([
        "--memory".into(),
        r.memory_mib.to_string(),
        "--vcpus".into(),
        r.vcpus.to_string(),
        "--no-input".into(),
        "--display".into(),
        format!("{}x{}", r.width, r.height),
        "--stop-when-display-idle".into(),
        format!("{}", r.settle.as_secs_f64()),
        "--stop-after".into(),
        format!("{}", r.limit.as_secs_f64()),
        "--trace-reads".into(),
        device(n),
        "--screenshot".into(),
        device(n + 1),
    ]);
    let run = r.work.join("run");
    fs::write(&run, argv.join("\n") + "\n")?;
    let files = vec![
        (dir.join("vmlinuz"), "appliance/vmlinuz".to_string()),
        (dir.join("initrd.img"), "appliance/initrd.img".to_string()),
        (run, "appliance/run".to_string()),
    ];
    let firmware = build_variant(
        "boot-trace-firmware",
        &["collective.autorun=/appliance/run".to_string()],
        &files,
    )
    .context("building the firmware that records the trace")?;
    let drive = |p: &Path| {
        vec![
            "-drive".to_string(),
            format!("file={},if=virtio,format=raw,snapshot=on", p.display()),
        ]
    };
    let extra_args = appliance_disks.iter().flat_map(|p| drive(p)).collect();
    let config = MachineConfig {
        memory_mib: (r.memory_mib as u32).saturating_add(1536),
        extra_args,
        disks: vec![trace_disk.clone(), shot_disk.clone()],
        ..Default::default()
    };
    let started = Instant::now();
    let mut m = Machine::boot(&firmware, &config)?;
    // The firmware's bring-up, then the appliance until its picture settles.
    if let Err(e) = m.expect(
        "autorun: /bin/vmm exited with code ",
        r.limit + Duration::from_secs(600),
    ) {
        if m.transcript().contains("soft lockup") {
            bail!(
                "the firmware's CPUs locked up in the VMM's vCPU threads (the kernel's watchdog \
                 says soft lockup) and the VMM could not even stop the appliance; see \
                 docs/desktop-appliance.md and record again:\n{}",
                tail(&m.transcript(), 20)
            );
        }
        return Err(e);
    }
    let code = m.expect("\n", Duration::from_secs(10))?;
    let transcript = m.transcript();
    m.send_line("poweroff")?;
    let _ = m.wait_exit(Duration::from_secs(120));
    let elapsed = started.elapsed();
    if transcript.contains("soft lockup") {
        bail!(
            "the firmware's CPUs locked up while the appliance ran (the kernel's watchdog: \
             soft lockup in the VMM's vCPU threads; see docs/desktop-appliance.md); record again. \
             The serial log:\n{}",
            tail(&transcript, 30)
        );
    }
    if code.trim() != "4" {
        bail!(
            "the appliance did not run until its picture settled (vmm exited with code {}); \
             the serial log:\n{}",
            code.trim(),
            tail(&transcript, 60)
        );
    }
    let trace = read_text_disk(&trace_disk)?;
    if !trace.lines().any(|l| l.starts_with("vda ")) {
        bail!(
            "the trace holds no read of the system disk:\n{}",
            tail(&trace, 20)
        );
    }
    let screenshot = read_ppm_disk(&shot_disk)?;
    let vmm_report = transcript
        .lines()
        .find(|l| l.contains("vmm: display idle"))
        .map(|l| l.trim().to_string());
    Ok(Recorded {
        trace,
        screenshot,
        vmm_report,
        elapsed,
        log_tail: tail(&transcript, 40),
        serial_log: transcript,
    })
}

/// A sparse file of `bytes`, zeroed.
fn scratch(path: &Path, bytes: u64) -> Result<PathBuf> {
    let _ = fs::remove_file(path);
    fs::File::create(path)?.set_len(bytes)?;
    Ok(path.to_path_buf())
}

/// A text file written onto a raw disk: everything up to the first NUL.
fn read_text_disk(path: &Path) -> Result<String> {
    let bytes = fs::read(path)?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8(bytes[..end].to_vec()).context("the trace disk holds no text")
}

/// A binary PPM written onto a raw disk, cut to the length its header gives.
fn read_ppm_disk(path: &Path) -> Result<Option<Vec<u8>>> {
    let bytes = fs::read(path)?;
    if !bytes.starts_with(b"P6\n") {
        return Ok(None);
    }
    let header: Vec<&[u8]> = bytes.splitn(4, |&b| b == b'\n').take(3).collect();
    let dims = std::str::from_utf8(header.get(1).copied().unwrap_or_default())?;
    let (w, h) = dims
        .split_once(' ')
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
        .context("the screenshot's header names no size")?;
    let head_len = header.iter().map(|l| l.len() + 1).sum::<usize>();
    let len = head_len + w * h * 3;
    if bytes.len() < len {
        bail!("the screenshot is cut short");
    }
    Ok(Some(bytes[..len].to_vec()))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
