//! A QEMU machine driven through its serial console and its monitor.

use crate::firmware::Firmware;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The network card the machine gets; each needs its own driver in the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nic {
    VirtioNet,
    E1000,
    E1000e,
    None,
}

impl Nic {
    fn model(self) -> Option<&'static str> {
        match self {
            Nic::VirtioNet => Some("virtio-net-pci"),
            Nic::E1000 => Some("e1000"),
            Nic::E1000e => Some("e1000e"),
            Nic::None => None,
        }
    }
}

/// How to start the machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub nic: Nic,
    /// Boot over the network (QEMU's iPXE ROM, its built-in TFTP serving the firmware
    /// folder, `boot.ipxe` as the boot file) instead of `-kernel`/`-initrd`.
    pub pxe: bool,
    /// Let a guest reboot restart the machine; otherwise QEMU exits on reboot.
    pub allow_reboot: bool,
    /// More kernel command-line arguments (direct boots only).
    pub extra_cmdline: Vec<String>,
    pub memory_mib: u32,
    /// Raw disk images attached as virtio-blk (`/dev/vda`, `/dev/vdb`, ... in the firmware).
    pub disks: Vec<PathBuf>,
    /// More QEMU arguments (more NICs, say).
    pub extra_args: Vec<String>,
    /// Boot from this raw disk image (virtio-blk, first in the boot order) through the
    /// PC's firmware instead of `-kernel`/`-initrd`: `disk.img` as a USB stick would.
    pub boot_disk: Option<PathBuf>,
    /// Attach `boot_disk` as a removable USB stick (usb-storage on an xHCI controller,
    /// `/dev/sda` in the firmware) instead of virtio-blk.
    pub boot_disk_usb: bool,
    /// The PC's firmware (`-bios`): `None` is QEMU's SeaBIOS, [`OVMF`] boots UEFI.
    pub bios: Option<PathBuf>,
}

/// Debian's UEFI firmware for QEMU (package `ovmf`), for [`MachineConfig::bios`].
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            nic: Nic::VirtioNet,
            pxe: false,
            allow_reboot: false,
            extra_cmdline: Vec::new(),
            memory_mib: 2048,
            disks: Vec::new(),
            extra_args: Vec::new(),
            boot_disk: None,
            boot_disk_usb: false,
            bios: None,
        }
    }
}

/// Multiplies every timeout, for slow or busy machines (`COLLECTIVE_TIMEOUT_SCALE=2`).
pub fn timeout_scale() -> f64 {
    std::env::var("COLLECTIVE_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v: &f64| *v > 0.0)
        .unwrap_or(1.0)
}

#[derive(Default)]
struct Transcript {
    bytes: Vec<u8>,
    /// Output streams (stdout, stderr) still open.
    open_streams: usize,
    closed: bool,
}

/// A running QEMU. Killed when dropped; if the test is failing, its transcript is
/// printed first.
pub struct Machine {
    child: Child,
    stdin: Option<ChildStdin>,
    transcript: Arc<(Mutex<Transcript>, Condvar)>,
    /// Where in the transcript the next `expect` starts looking.
    cursor: usize,
    monitor_path: PathBuf,
    scratch: PathBuf,
    pub started: Instant,
    name: String,
}

/// `qemu-system-x86_64 -nographic` with its monitor and QMP on unix sockets in a new
/// scratch folder named after `prefix`: the machine's number, the folder, the monitor.
fn qemu_command(prefix: &str) -> Result<(Command, u32, PathBuf, PathBuf)> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let monitor_path = scratch.join("monitor.sock");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.arg("-nographic")
        .arg("-monitor")
        .arg(format!(
            "unix:{},server=on,wait=off",
            monitor_path.display()
        ))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            scratch.join("qmp.sock").display()
        ));
    Ok((cmd, n, scratch, monitor_path))
}

impl Machine {
    /// Boots `firmware` in `qemu-system-x86_64 -accel tcg -cpu max -smp 2 -nographic`.
    pub fn boot(firmware: &Firmware, config: &MachineConfig) -> Result<Machine> {
        Self::boot_files(firmware, &firmware.initrd, config)
    }

    /// Like [`Machine::boot`] with another initramfs (the benchmark's baseline).
    pub fn boot_files(
        firmware: &Firmware,
        initrd: &std::path::Path,
        config: &MachineConfig,
    ) -> Result<Machine> {
        let (mut cmd, n, scratch, monitor_path) = qemu_command("collective-qemu")?;
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "2"])
            .args(["-m", &config.memory_mib.to_string()]);
        cmd.args(&config.extra_args);
        for disk in &config.disks {
            cmd.arg("-drive")
                .arg(format!("file={},if=virtio,format=raw", disk.display()));
        }
        if let Some(bios) = &config.bios {
            cmd.arg("-bios").arg(bios);
        }
        if let Some(disk) = &config.boot_disk {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},if=none,id=bootdisk,format=raw",
                    disk.display()
                ))
                .arg("-device");
            if config.boot_disk_usb {
                cmd.arg("qemu-xhci,id=bootxhci")
                    .arg("-device")
                    .arg("usb-storage,bus=bootxhci.0,drive=bootdisk,removable=on,bootindex=0");
            } else {
                cmd.arg("virtio-blk-pci,drive=bootdisk,bootindex=0");
            }
        }
        if !config.allow_reboot {
            cmd.arg("-no-reboot");
        }
        match (config.nic.model(), config.pxe) {
            (None, _) => {
                cmd.args(["-nic", "none"]);
            }
            (Some(model), false) => {
                cmd.arg("-nic").arg(format!("user,model={model}"));
            }
            (Some(model), true) => {
                cmd.arg("-netdev")
                    .arg(format!(
                        "user,id=n0,tftp={},bootfile=boot.ipxe",
                        firmware.dir.display()
                    ))
                    .arg("-device")
                    .arg(format!("{model},netdev=n0,bootindex=1"));
            }
        }
        if !config.pxe && config.boot_disk.is_none() {
            let mut cmdline = firmware.cmdline.clone();
            for extra in &config.extra_cmdline {
                cmdline.push(' ');
                cmdline.push_str(extra);
            }
            cmd.arg("-kernel")
                .arg(&firmware.vmlinuz)
                .arg("-initrd")
                .arg(initrd)
                .arg("-append")
                .arg(cmdline);
        }
        Self::start(cmd, n, scratch, monitor_path)
    }

    /// QEMU with exactly `args` (machine, accelerator, devices, kernel), plus the serial
    /// console on stdio, the monitor and QMP as [`Machine::boot`] has them: for a peer that
    /// runs an appliance itself, as a benchmark's baseline.
    pub fn boot_qemu(args: &[String]) -> Result<Machine> {
        let (mut cmd, n, scratch, monitor_path) = qemu_command("collective-qemu-peer")?;
        cmd.args(args);
        Self::start(cmd, n, scratch, monitor_path)
    }

    fn start(mut cmd: Command, n: u32, scratch: PathBuf, monitor_path: PathBuf) -> Result<Machine> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .context("starting qemu-system-x86_64 (install Debian's qemu-system-x86)")?;
        let transcript = Arc::new((
            Mutex::new(Transcript {
                open_streams: 2,
                ..Transcript::default()
            }),
            Condvar::new(),
        ));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let transcript = transcript.clone();
            std::thread::spawn(move || pump(stream, transcript));
        }
        Ok(Machine {
            stdin: child.stdin.take(),
            child,
            transcript,
            cursor: 0,
            monitor_path,
            scratch,
            started: Instant::now(),
            name: format!("qemu#{n}"),
        })
    }

    /// Waits until `needle` appears after the cursor; moves the cursor past it and
    /// returns the text before it.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout.mul_f64(timeout_scale());
        let (lock, cond) = &*self.transcript;
        let mut t = lock
            .lock()
            .map_err(|_| anyhow::anyhow!("transcript lock poisoned"))?;
        loop {
            if let Some(pos) = find(
                &t.bytes[self.cursor.min(t.bytes.len())..],
                needle.as_bytes(),
            ) {
                let start = self.cursor;
                self.cursor += pos + needle.len();
                return Ok(String::from_utf8_lossy(&t.bytes[start..start + pos]).into_owned());
            }
            let now = Instant::now();
            if now >= deadline || t.closed {
                let why = if t.closed { "QEMU exited" } else { "timed out" };
                let text = String::from_utf8_lossy(&t.bytes).into_owned();
                drop(t);
                bail!(
                    "{}: {why} after {:.1} s waiting for {needle:?}\n----- serial transcript -----\n{text}\n----- end of transcript -----",
                    self.name,
                    self.started.elapsed().as_secs_f64()
                );
            }
            t = cond
                .wait_timeout(t, deadline - now)
                .map_err(|_| anyhow::anyhow!("transcript lock poisoned"))?
                .0;
        }
    }

    /// Types a line on the serial console.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("serial input already closed")?;
        stdin.write_all(format!("{line}\r").as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Types `status` at the login prompt and returns the screen it draws (up to the line
    /// that ends it: announcements on the same console also end in `login:`).
    pub fn status_screen(&mut self) -> Result<String> {
        self.send_line("status")?;
        let screen = self.expect("Log in with your user name", Duration::from_secs(60))?;
        self.expect("login:", Duration::from_secs(60))?;
        Ok(screen)
    }

    /// Types `poweroff` at the login prompt and checks that QEMU exits 0.
    pub fn power_off(&mut self) -> Result<()> {
        self.send_line("poweroff")?;
        let status = self.wait_exit(Duration::from_secs(60))?;
        anyhow::ensure!(status.success(), "QEMU exited with {status} after poweroff");
        Ok(())
    }

    /// Types raw bytes (control keys: Ctrl-A is `\x01`).
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let stdin = self.stdin.as_mut().context("serial input already closed")?;
        stdin.write_all(bytes)?;
        stdin.flush()?;
        Ok(())
    }

    /// Runs a QEMU monitor (HMP) command, for example `sendkey ctrl-alt-delete`.
    pub fn monitor(&mut self, command: &str) -> Result<String> {
        // QEMU creates the socket shortly after it starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match UnixStream::connect(&self.monitor_path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("connecting to {}", self.monitor_path.display()))
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.write_all(format!("{command}\n").as_bytes())?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    reply.extend_from_slice(&buf[..n]);
                    // The monitor echoes the command, answers, then prompts again.
                    if reply.windows(6).filter(|w| w == b"(qemu)").count() >= 2 {
                        break;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    if !reply.is_empty() {
                        break;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }

    /// Runs a QMP command (`{"execute": ..., "arguments": ...}`) on a fresh connection and
    /// returns its `return` value; for what HMP cannot say, such as absolute pointer events.
    pub fn qmp(&mut self, command: &serde_json::Value) -> Result<serde_json::Value> {
        let path = self.scratch.join("qmp.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("connecting to {}", path.display()))
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut writer = stream.try_clone()?;
        let mut lines = std::io::BufReader::new(stream).lines();
        // The greeting, then capabilities negotiation, then the command. Events may come
        // in between; the answer is the first line with "return" or "error".
        let answer = |lines: &mut std::io::Lines<_>| -> Result<serde_json::Value> {
            loop {
                let line: String = lines.next().context("QMP closed")??;
                let v: serde_json::Value = serde_json::from_str(&line)?;
                if let Some(r) = v.get("return") {
                    return Ok(r.clone());
                }
                if let Some(e) = v.get("error") {
                    bail!("QMP error: {e}");
                }
            }
        };
        lines.next().context("no QMP greeting")??;
        writeln!(
            writer,
            "{}",
            serde_json::json!({"execute": "qmp_capabilities"})
        )?;
        answer(&mut lines)?;
        writeln!(writer, "{command}")?;
        answer(&mut lines)
    }

    /// A path in this machine's scratch folder (removed with it).
    pub fn scratch_path(&self, name: &str) -> PathBuf {
        self.scratch.join(name)
    }

    /// Waits for QEMU to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout.mul_f64(timeout_scale());
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{}: QEMU still running after {:.1} s\n----- serial transcript -----\n{}\n-----", self.name, timeout.as_secs_f64(), self.transcript());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn transcript(&self) -> String {
        self.transcript
            .0
            .lock()
            .map(|t| String::from_utf8_lossy(&t.bytes).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} serial transcript -----\n{}\n----- end -----",
                self.name,
                self.transcript()
            );
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn pump(mut stream: Box<dyn Read + Send>, transcript: Arc<(Mutex<Transcript>, Condvar)>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        let (lock, cond) = &*transcript;
        if let Ok(mut t) = lock.lock() {
            if n == 0 {
                t.open_streams = t.open_streams.saturating_sub(1);
                t.closed = t.open_streams == 0;
            } else {
                t.bytes.extend_from_slice(&buf[..n]);
            }
        }
        cond.notify_all();
        if n == 0 {
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}
