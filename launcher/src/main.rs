//! `vmm`: run one VM from the command line, for publishers testing an appliance without a
//! repository. Exit code: 0 guest powered off, 2 guest reset, 3 guest crashed, 4 stopped
//! (Ctrl-A x) or halted, 1 VMM error.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use launcher::headless_display::HeadlessDisplay;
use launcher::network::Attachment;
use support::logger::{level_from_env, Logger};
use vmm::devices::legacy::serial::FlushingWriter;
use vmm::display::DisplayConfig;
use vmm::input::{InputConfig, InputQueue};
use vmm::{ConsoleConfig, DiskConfig, DiskSource, KernelConfig, MachineConfig, NetConfig};

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "The Collective terminal's KVM virtual machine monitor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot one VM and run it until it powers off, resets or crashes.
    Run(RunArgs),
    /// Run an appliance set: one VMM process per appliance, their consoles on this
    /// terminal, switched with Ctrl-A n (next) or Ctrl-A 1-9.
    Set {
        /// JSON list of {"name": ..., "command": ["vmm", "run", ...]}.
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel: bzImage, or ELF vmlinux (booted through PVH when it has the note).
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (default: serial console and quiet legacy probing).
    #[arg(long)]
    cmdline: Option<String>,
    /// A virtio-blk disk: PATH or PATH,ro. Repeat for more; the first is /dev/vda.
    /// A disk from the terminal's cache: cachefs=CACHE:LIST.json[,ro] (LIST is the
    /// image's chunk list, as in a manifest; writes go to a throw-away overlay).
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    disks: Vec<String>,
    /// A virtio-net card on a new tap: [bridge=BR][,tap=NAME][,mac=52:54:00:12:34:56].
    /// Repeat for more cards.
    #[arg(long = "net", value_name = "OPTS")]
    nets: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Do not add a virtio-rng device.
    #[arg(long)]
    no_rng: bool,
    /// Also describe virtio-mmio devices as virtio_mmio.device= on the command line.
    #[arg(long)]
    cmdline_mmio_devices: bool,
    /// Stop the VM after this many seconds (exit code 4), for tests and benchmarks.
    #[arg(long, value_name = "SECS")]
    stop_after: Option<f64>,
    /// When the guest reboots, boot it again instead of exiting with code 2.
    #[arg(long)]
    restart_on_reboot: bool,
    /// Do not forward stdin to the guest's serial console.
    #[arg(long)]
    no_input: bool,
    /// Record the order in which the guest first reads its disks, and write it to FILE
    /// when the VM ends: a boot trace for `collective-repo publish --boot-trace`.
    #[arg(long, value_name = "FILE")]
    trace_reads: Option<PathBuf>,
    /// Give the guest a display of this mode (virtio-gpu, with a virtio keyboard and
    /// tablet) that nobody sees: a graphical appliance boots as on a terminal's screen.
    #[arg(long, value_name = "WIDTHxHEIGHT", value_parser = launcher::headless_display::parse_mode)]
    display: Option<(u32, u32)>,
    /// With --display: write the guest's picture to FILE (binary PPM) when the VM ends.
    #[arg(long, value_name = "FILE", requires = "display")]
    screenshot: Option<PathBuf>,
    /// With --display: stop the VM (exit code 4) once the guest's picture is lit (not
    /// nearly black) and has not changed for SECS seconds (a desktop that finished
    /// starting).
    #[arg(long, value_name = "SECS", requires = "display")]
    stop_when_display_idle: Option<f64>,
}

/// The caches `cachefs=` disks use, each opened once.
static CACHES: std::sync::OnceLock<launcher::cachefs_disk::CacheRegistry> =
    std::sync::OnceLock::new();

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    if let Some(spec) = s.strip_prefix("cachefs=") {
        let (spec, read_only) = match spec.strip_suffix(",ro") {
            Some(spec) => (spec, true),
            None => (spec.strip_suffix(",rw").unwrap_or(spec), false),
        };
        let registry = CACHES.get_or_init(Default::default);
        let disk = launcher::cachefs_disk::open_from_cli(registry, spec, read_only)?;
        return Ok(DiskConfig {
            source: DiskSource::Backend(std::sync::Arc::new(disk)),
            read_only,
        });
    }
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("empty disk path in {s:?}"))?;
    let mut read_only = false;
    for opt in parts {
        match opt {
            "ro" => read_only = true,
            "rw" => read_only = false,
            other => {
                return Err(format!(
                    "unknown disk option {other:?} in {s:?} (expected ro or rw)"
                ))
            }
        }
    }
    Ok(DiskConfig {
        source: DiskSource::Path(PathBuf::from(path)),
        read_only,
    })
}

/// `--net` options: the card, and the bridge its tap joins.
fn parse_net(s: &str) -> Result<(NetConfig, Attachment), String> {
    let mut n = NetConfig::default();
    let mut bridge = None;
    for opt in s.split(',').filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some(("bridge", v)) => bridge = Some(v.to_string()),
            Some(("tap", v)) => n.tap = Some(v.to_string()),
            Some(("mac", v)) => {
                n.mac = Some(
                    support::netif::parse_mac(v).ok_or_else(|| format!("bad MAC address {v:?}"))?,
                )
            }
            _ => {
                return Err(format!(
                    "unknown net option {opt:?} (expected bridge=, tap= or mac=)"
                ))
            }
        }
    }
    Ok((n, bridge))
}

/// `vmm set`: exit code 0 if every appliance powered off, else the first other code.
fn run_set(file: &std::path::Path) -> i32 {
    let members: Vec<launcher::console_switch::Member> = match std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("vmm: appliance set {}: {e}", file.display());
            return 1;
        }
    };
    let raw = launcher::stdio::RawTerminal::stdin(false);
    let result =
        launcher::console_switch::run_set(&members, std::io::stdin(), Box::new(std::io::stdout()));
    drop(raw);
    match result {
        Ok(statuses) => statuses
            .iter()
            .map(|(_, s)| s.code().unwrap_or(1))
            .find(|c| *c != 0)
            .unwrap_or(0),
        Err(e) => {
            eprintln!("vmm: {e}");
            1
        }
    }
}

/// Every disk as a backend whose reads go into `trace`.
fn traced(
    disks: Vec<DiskConfig>,
    trace: &std::sync::Arc<launcher::read_trace::ReadTrace>,
) -> Result<Vec<DiskConfig>, String> {
    use launcher::read_trace::TracedDisk;
    disks
        .into_iter()
        .enumerate()
        .map(|(index, d)| {
            let inner: std::sync::Arc<dyn vmm::BlockBackend> = match d.source {
                DiskSource::Backend(b) => b,
                DiskSource::Path(p) => std::sync::Arc::new(
                    vmm::RawFile::open(&p, d.read_only)
                        .map_err(|e| format!("disk {}: {e}", p.display()))?,
                ),
            };
            Ok(DiskConfig {
                source: DiskSource::Backend(std::sync::Arc::new(TracedDisk::new(
                    inner,
                    index,
                    trace.clone(),
                ))),
                read_only: d.read_only,
            })
        })
        .collect()
}

fn write_trace(
    trace: &launcher::read_trace::ReadTrace,
    path: &std::path::Path,
    kernel: &KernelConfig,
) -> std::io::Result<()> {
    let kernel_len = std::fs::metadata(&kernel.kernel)?.len();
    let initrd_len = match &kernel.initrd {
        Some(p) => Some(std::fs::metadata(p)?.len()),
        None => None,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    trace.write_to(&mut out, kernel_len, initrd_len)?;
    out.flush()
}

/// Stops the VM once the guest shows a lit picture and has left it alone for `idle`,
/// saying when it first drew and when it settled (a publisher's measure of its boot).
fn watch_display_idle(
    display: std::sync::Arc<HeadlessDisplay>,
    idle: std::time::Duration,
    exit: std::sync::Arc<vmm::ExitSignal>,
) {
    let started = std::time::Instant::now();
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let Some(quiet) = display.idle_for() else {
            continue;
        };
        // A dark picture is a display server between its start and its first window,
        // not a desktop that has settled: keep waiting (--stop-after still ends it).
        if quiet >= idle && display.lit_share() >= 0.2 {
            let (first, flushes) = display.activity();
            let first = first.map_or(0.0, |t| t.duration_since(started).as_secs_f64());
            let settled = (started.elapsed() - quiet).as_secs_f64();
            eprintln!(
                "vmm: display idle for {:.0} s: stopping (first picture at {first:.1} s, \
                 last change at {settled:.1} s, {flushes} flushes)",
                idle.as_secs_f64()
            );
            exit.request(vmm::ExitReason::Stopped);
            return;
        }
    });
}

fn main() {
    // The level comes from RUST_LOG (off, error, warn, info, debug, trace); warnings by
    // default. Lines end in \r\n: the terminal may be in raw mode for the guest's console.
    Logger::stderr("vmm")
        .raw_terminal()
        .install(level_from_env("RUST_LOG", log::LevelFilter::Warn));
    let args = match Cli::parse().command {
        Command::Run(args) => args,
        Command::Set { file } => std::process::exit(run_set(&file)),
    };
    let disks = match args
        .disks
        .iter()
        .map(|d| parse_disk(d))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vmm: {e}");
            std::process::exit(1);
        }
    };
    let (nets, attachments): (Vec<NetConfig>, Vec<Attachment>) = match args
        .nets
        .iter()
        .map(|n| parse_net(n))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(n) => n.into_iter().unzip(),
        Err(e) => {
            eprintln!("vmm: {e}");
            std::process::exit(1);
        }
    };
    let trace = args
        .trace_reads
        .as_ref()
        .map(|_| std::sync::Arc::new(launcher::read_trace::ReadTrace::default()));
    let disks = match &trace {
        None => disks,
        Some(trace) => match traced(disks, trace) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("vmm: {e}");
                std::process::exit(1);
            }
        },
    };
    let kernel = KernelConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline.unwrap_or_default(),
        cmdline_mmio_devices: args.cmdline_mmio_devices,
    };
    let deadline = args
        .stop_after
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| std::time::Instant::now() + std::time::Duration::from_secs_f64(s));
    let headless = args
        .display
        .map(|mode| (std::sync::Arc::new(HeadlessDisplay::default()), mode));
    let idle_stop = args
        .stop_when_display_idle
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(std::time::Duration::from_secs_f64);
    // Every key goes to the guest while it runs (Ctrl-A x stops it).
    let _raw = (!args.no_input).then(|| launcher::stdio::RawTerminal::stdin(true));
    let result = loop {
        let machine = MachineConfig {
            memory_mib: args.memory,
            vcpus: args.vcpus,
            disks: disks.clone(),
            nets: nets.clone(),
            rng: !args.no_rng,
            console: if args.no_input {
                ConsoleConfig::Writer(Box::new(FlushingWriter(std::io::stdout())))
            } else {
                ConsoleConfig::Stream {
                    input: Box::new(std::io::stdin()),
                    output: Box::new(FlushingWriter(std::io::stdout())),
                }
            },
            display: headless.as_ref().map(|(d, (width, height))| DisplayConfig {
                width: *width,
                height: *height,
                edid: None,
                sink: d.clone(),
            }),
            inputs: if headless.is_some() {
                InputConfig::keyboard_and_tablet(InputQueue::new(), InputQueue::new())
            } else {
                Vec::new()
            },
        };
        let r = vmm::Machine::new(machine).and_then(|mut m| {
            launcher::network::plug(m.tap_names(), &attachments)
                .map_err(|e| vmm::Error::Device(e.to_string()))?;
            m.load_kernel(&kernel)?;
            if let Some(at) = deadline {
                let exit = m.exit_signal();
                std::thread::spawn(move || {
                    std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
                    exit.request(vmm::ExitReason::Stopped);
                });
            }
            if let (Some((display, _)), Some(idle)) = (&headless, idle_stop) {
                watch_display_idle(display.clone(), idle, m.exit_signal());
            }
            let reason = m.run();
            // Now, while the machine still exists: its devices let go of the picture
            // when it is dropped.
            if let (Some((display, _)), Some(path)) = (&headless, &args.screenshot) {
                if let Err(e) = display.write_snapshot(path) {
                    eprintln!("vmm: writing the screenshot {}: {e}", path.display());
                }
            }
            reason
        });
        match r {
            Ok(vmm::ExitReason::Reset) if args.restart_on_reboot => {
                log::info!("guest rebooted: starting it again")
            }
            other => break other,
        }
    };
    if let (Some(trace), Some(path)) = (&trace, &args.trace_reads) {
        if let Err(e) = write_trace(trace, path, &kernel) {
            eprintln!("vmm: writing the boot trace {}: {e}", path.display());
        }
    }
    match result {
        Ok(reason) => {
            log::info!("guest exited: {reason:?}");
            if let vmm::ExitReason::Crash(why) = &reason {
                eprintln!("vmm: guest crashed: {why}");
            }
            std::process::exit(reason.exit_code());
        }
        Err(e) => {
            eprintln!("vmm: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("vmm:   caused by: {s}");
                src = s.source();
            }
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options() {
        let d = parse_disk("/a.img,ro").unwrap();
        assert!(d.read_only);
        assert!(!parse_disk("/a.img").unwrap().read_only);
        assert!(parse_disk(",ro").is_err());
        assert!(parse_disk("/a,bogus").is_err());
        let (n, bridge) = parse_net("bridge=br0,mac=52:54:00:00:00:01").unwrap();
        assert_eq!(bridge.as_deref(), Some("br0"));
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0, 0, 1]));
        assert_eq!(parse_net("").unwrap(), (NetConfig::default(), None));
        assert!(parse_net("bridge").is_err());
        assert!(parse_net("mac=1:2").is_err());
    }
}
