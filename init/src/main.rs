//! PID 1 of the Collective terminal.
//!
//! It brings the machine up (file systems, drivers, KVM, network), shows the login screen
//! on every console and then supervises: it reaps orphans and performs the one orderly
//! shutdown, whoever asks for it. It must never exit (the kernel panics if PID 1 dies)
//! and never stop on an error: whatever fails is logged and shown on the login screen,
//! and the terminal stays usable.

use collective_init::{
    console, cpu_load, hotplug, kmod, kvm, logger, login, mounts, net, network, power, settings,
    status,
};
use log::{error, info, warn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use power::PowerAction;
use settings::{Settings, Uplink};
use status::{StatusBoard, TerminalStatus};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The signals PID 1 handles; blocked in every thread and read from a signalfd.
const HANDLED: &[Signal] = &[
    Signal::SIGCHLD,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGPWR,
    Signal::SIGHUP,
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let program = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    if program == "modprobe" {
        // The kernel runs modprobe for every request_module(); only failures that matter
        // to a person belong on the console, and those are reported by whoever asked.
        logger::init();
        logger::quiet_console();
        std::process::exit(kmod::modprobe_main(&args, &modules_dir()));
    }
    if std::process::id() != 1 {
        eprintln!("init: this is the Collective terminal's PID 1; it runs only as the first process of its own initramfs");
        std::process::exit(2);
    }
    logger::init();
    std::panic::set_hook(Box::new(|panic| error!("internal error: {panic}")));

    let signals = match block_handled_signals() {
        Ok(fd) => Some(fd),
        Err(e) => {
            error!("cannot set up signal handling: {e}; shutdown requests will not work");
            None
        }
    };
    let consoles = match std::panic::catch_unwind(bring_up) {
        Ok(consoles) => consoles,
        Err(_) => {
            error!("bring-up failed; the terminal runs with what came up");
            vec!["ttyS0".into(), "tty1".into()]
        }
    };
    supervise(signals, &consoles);
}

/// `/lib/modules/<release>`. uname, not /proc: the kernel may run us as modprobe
/// before /proc is mounted.
fn modules_dir() -> PathBuf {
    // SAFETY: uname fills the zeroed struct it is given.
    let release = unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        libc::uname(&mut uts);
        std::ffi::CStr::from_ptr(uts.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    Path::new("/lib/modules").join(release)
}

fn block_handled_signals() -> nix::Result<SignalFd> {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(*s);
    }
    set.thread_block()?;
    SignalFd::new(&set)
}

/// Brings the terminal up and starts the consoles; returns the consoles' names.
fn bring_up() -> Vec<String> {
    let started = std::time::Instant::now();
    let mut problems = mounts::mount_early_filesystems();
    // From now on Ctrl-Alt-Del is a SIGINT to us, not an immediate hard reset.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        warn!("cannot take over Ctrl-Alt-Del: {e}");
    }
    let settings = Settings::parse(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    logger::set_level(settings.log_level);
    info!("settings: {settings}");
    for problem in &settings.problems {
        warn!("{problem}");
    }
    problems.extend(settings.problems.iter().cloned());
    write_etc_files();

    let board = Arc::new(StatusBoard::new(TerminalStatus {
        firmware: firmware_identity(),
        repo: settings.repo.clone(),
        cache: match &settings.cache {
            None => "none configured: running from memory".into(),
            Some(spec) => format!("looking for {spec}"),
        },
        problems: problems.clone(),
        ..TerminalStatus::default()
    }));
    let sessions: Arc<dyn login::Sessions> = Arc::new(login::SessionProgram {
        program: PathBuf::from("/bin/session"),
        board: board.clone(),
        log_level: settings.log_level,
        offline_days: settings.offline_days,
        offline_users: settings.offline_users,
    });
    for name in &settings.consoles {
        console::spawn(name.clone(), board.clone(), sessions.clone());
    }

    // Listen before the coldplug walk, so a device that appears during it is not missed.
    let uevents = hotplug::open_uevent_socket()
        .map_err(|e| warn!("no hotplug: cannot open the uevent socket: {e}"))
        .ok();
    let loader = Arc::new(kmod::Loader::new(kmod::ModuleIndex::load(&modules_dir())));

    // Everything loads side by side: KVM's modules, the drivers the hardware present asks
    // for, and the few we always want (input events for the power button).
    let mut wanted: Vec<String> = vec!["evdev".into(), "button".into()];
    wanted.extend(settings.extra_modules.iter().cloned());
    let kvm_loader = loader.clone();
    let kvm_thread = std::thread::Builder::new()
        .name("kvm".into())
        .spawn(move || kvm::bring_up(&kvm_loader));
    for module in hotplug::coldplug_modules(&loader) {
        if !wanted.contains(&module) {
            wanted.push(module);
        }
    }
    // Bus drivers (virtio_pci, for one) add devices that want drivers of their own, so
    // repeat until a pass finds nothing new. Devices that enumerate slowly (USB) arrive
    // later as uevents.
    for round in 1..=4 {
        let (loaded, failed) = loader.load_parallel(&wanted, 8);
        info!("drivers loaded (pass {round}): {}", loaded.join(" "));
        for e in failed {
            // Drivers for absent hardware fail to probe; that is normal and only logged.
            info!("{e}");
        }
        wanted = hotplug::coldplug_modules(&loader)
            .into_iter()
            .filter(|m| !loader.is_loaded(m))
            .collect();
        if wanted.is_empty() {
            break;
        }
    }
    for module in &settings.extra_modules {
        if !loader.is_loaded(module) && !loader.index().knows(module) {
            problems.push(format!(
                "collective.modules: {module} is not in this firmware"
            ));
        }
    }
    // While waiting for the cache disk, load what late devices ask for: a USB stick's
    // SCSI disk appears only after usb-storage has bound, and then wants sd_mod.
    let mut last_poll = std::time::Instant::now();
    let mut tried = std::collections::HashSet::new();
    let cache = collective_init::cachedisk::bring_up_polling(
        settings.cache.as_deref(),
        settings.cache_force,
        std::time::Duration::from_secs(5),
        &mut || {
            if last_poll.elapsed() < std::time::Duration::from_millis(500) {
                return;
            }
            last_poll = std::time::Instant::now();
            // Each at most once: a driver for absent hardware fails again.
            let late: Vec<String> = hotplug::coldplug_modules(&loader)
                .into_iter()
                .filter(|m| !loader.is_loaded(m) && tried.insert(m.clone()))
                .collect();
            if !late.is_empty() {
                let (loaded, _) = loader.load_parallel(&late, 8);
                info!(
                    "drivers loaded while waiting for the cache disk: {}",
                    loaded.join(" ")
                );
            }
        },
    );
    problems.extend(cache.problem.clone());
    let kvm_status = match kvm_thread.map(|t| t.join()) {
        Ok(Ok(status)) => status,
        _ => kvm::KvmStatus::ModuleFailed {
            module: "kvm".into(),
            reason: "the KVM bring-up crashed".into(),
        },
    };

    let nics = net::bring_up();
    let name = net::terminal_name(&nics);
    if let Err(e) = nix::unistd::sethostname(&name) {
        warn!("cannot set the host name: {e}");
    }
    power::watch_power_buttons();
    if let Some(fd) = uevents {
        let loader = loader.clone();
        let board = board.clone();
        let settings = settings.clone();
        let spawned = std::thread::Builder::new()
            .name("hotplug".into())
            .spawn(move || {
                hotplug::listen(fd, loader, move |event| on_uevent(event, &board, &settings));
            });
        if let Err(e) = spawned {
            warn!("no hotplug: {e}");
        }
    }
    info!("modules loaded: {}", loader.loaded().join(" "));
    let boot_seconds = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse().ok());
    board.update(|s| {
        s.name = name;
        s.nics = nics;
        s.kvm = kvm_status;
        s.problems = problems;
        s.cache = cache.line;
        s.cache_device = cache.device;
        s.boot_seconds = boot_seconds;
        s.complete = true;
    });
    for nic in board.snapshot().nics {
        start_dhcp(&nic, &board, &settings);
    }
    let consoles_drew_early = started.elapsed() > console::PROMPT_DEADLINE;
    board.mark_ready();
    if consoles_drew_early {
        let status = board.snapshot();
        let ready = status
            .boot_seconds
            .map(|secs| format!("  ready in    {secs:.2} s after the kernel started\r\n"))
            .unwrap_or_default();
        // The banner went out before the terminal knew its name: say it now.
        console::announce(
            &settings.consoles,
            &format!(
                "Collective terminal {}\r\n{}{ready}",
                status.name,
                status.hardware_lines()
            ),
        );
    }
    info!("terminal ready in {:.2} s", boot_seconds.unwrap_or(0.0));
    let cpu_board = board.clone();
    cpu_load::start_sampler(move |load| cpu_board.update(|s| s.cpu = Some(load)));
    if let Some(command) = settings.autorun.clone() {
        start_autorun(command, settings.consoles.clone());
    }
    settings.consoles
}

/// Reacts to devices appearing after boot.
fn on_uevent(event: &hotplug::Uevent, board: &Arc<StatusBoard>, settings: &Settings) {
    if event.action != "add" {
        return;
    }
    match event.get("SUBSYSTEM") {
        Some("input") => {
            if let Some(dev) = event.get("DEVNAME").and_then(|d| d.strip_prefix("input/")) {
                if dev.starts_with("event")
                    && power::is_power_button(&Path::new("/sys/class/input").join(dev))
                {
                    power::watch_power_button(dev.to_string());
                }
            }
        }
        Some("net") if board.snapshot().complete => {
            let nics = net::bring_up();
            let before = board.snapshot().nics;
            if nics
                .iter()
                .any(|n| !before.iter().any(|b| b.name == n.name))
            {
                info!(
                    "network cards now: {}",
                    nics.iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                board.update(|s| s.nics = nics.clone());
                let status = board.snapshot();
                console::announce(&settings.consoles, &status.hardware_lines());
                for nic in &nics {
                    start_dhcp(nic, board, settings);
                }
            }
        }
        _ => {}
    }
}

/// Runs `collective.autorun=` once, its output on the console, and reports how it ended.
fn start_autorun(argv_file: String, consoles: Vec<String>) {
    let spawned = std::thread::Builder::new()
        .name("autorun".into())
        .spawn(move || {
            let text = match fs::read_to_string(&argv_file) {
                Ok(text) => text,
                Err(e) => {
                    warn!("autorun: cannot read {argv_file}: {e}");
                    return;
                }
            };
            let words: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
            let command = words.join(" ");
            let Some((program, args)) = words.split_first() else {
                warn!("autorun: {argv_file} names no program");
                return;
            };
            let console = || {
                fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/console")
                    .map(std::process::Stdio::from)
            };
            let (Ok(out), Ok(err)) = (console(), console()) else {
                warn!("autorun: cannot open /dev/console");
                return;
            };
            info!("autorun: starting {command}");
            let child = std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn();
            let text = match child {
                Ok(child) => match collective_init::children::wait(child.id() as i32, None) {
                    Some(code) => format!("autorun: {program} exited with code {code}\r\n"),
                    None => format!("autorun: lost track of {program}\r\n"),
                },
                Err(e) => format!("autorun: cannot start {program}: {e}\r\n"),
            };
            info!("{}", text.trim());
            console::announce(&consoles, &text);
        });
    if let Err(e) = spawned {
        warn!("autorun: {e}");
    }
}

/// Starts the DHCP client of a NIC, once per NIC.
fn start_dhcp(nic: &net::Nic, board: &Arc<StatusBoard>, settings: &Settings) {
    static STARTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    match STARTED.lock() {
        Ok(started) if started.contains(&nic.name) => return,
        Ok(mut started) => started.push(nic.name.clone()),
        Err(_) => return,
    }
    let Some(mac) = support::netif::parse_mac(&nic.mac) else {
        warn!(
            "{}: no usable MAC address ({:?}); no DHCP",
            nic.name, nic.mac
        );
        return;
    };
    let is_uplink = match &settings.uplink {
        Uplink::FirstNic => board.snapshot().nics.first().map(|n| &n.name) == Some(&nic.name),
        Uplink::Nic(name) => *name == nic.name,
        Uplink::Off => false,
    };
    // DHCP runs where the terminal's address lives: the uplink bridge, or the card.
    let name = if is_uplink {
        collective_init::uplink::attach(&nic.name, mac)
    } else {
        nic.name.clone()
    };
    let (board, settings, card) = (board.clone(), settings.clone(), nic.name.clone());
    let hostname = board.snapshot().name;
    let spawned = std::thread::Builder::new()
        .name(format!("dhcp-{name}"))
        .spawn(move || {
            // The screen lists cards; the address shows on the card's line.
            let nic_name = card;
            network::run_dhcp(name, mac, hostname, move |state| {
                let (text, announce) = match &state {
                    network::NetState::WaitingForLink => {
                        ("waiting for a link (is the cable in?)".to_string(), false)
                    }
                    network::NetState::AskingDhcp => ("asking DHCP".to_string(), false),
                    network::NetState::NoOffer => (
                        "no DHCP offer yet (is a DHCP server on this network?); retrying"
                            .to_string(),
                        true,
                    ),
                    network::NetState::Configured(lease) => {
                        let via = lease
                            .router
                            .map(|r| format!(" via {r}"))
                            .unwrap_or_default();
                        (format!("{}/{}{via}", lease.address, lease.prefix_len), true)
                    }
                };
                board.update(|s| {
                    s.addresses.insert(nic_name.clone(), text);
                    s.nics = net::list_nics(Path::new("/sys/class/net"));
                    if let network::NetState::Configured(lease) = &state {
                        if settings.repo.is_none() && lease.repo_url.is_some() {
                            s.repo = lease.repo_url.clone();
                        }
                    }
                });
                if announce {
                    console::announce(&settings.consoles, &board.snapshot().hardware_lines());
                }
            });
        });
    if let Err(e) = spawned {
        warn!("cannot start DHCP on {}: {e}", nic.name);
    }
}

fn firmware_identity() -> String {
    let text = fs::read_to_string("/etc/collective/firmware").unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
            .to_string()
    };
    let release = get("kernel_release");
    if release.is_empty() {
        return String::new();
    }
    format!("Linux {release}, Debian {}", get("kernel_version"))
}

/// Static name resolution works from `/etc/hosts` even in a static binary.
fn write_etc_files() {
    let hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
    if let Err(e) = fs::write("/etc/hosts", hosts) {
        warn!("writing /etc/hosts: {e}");
    }
}

/// The supervisor loop: reap, and shut down when asked. Never returns.
fn supervise(signals: Option<SignalFd>, consoles: &[String]) -> ! {
    loop {
        let Some(fd) = signals.as_ref() else {
            // Without a signalfd all we can still do is reap.
            power::reap_children();
            std::thread::sleep(std::time::Duration::from_secs(1));
            continue;
        };
        let signal = match fd.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            Ok(None) => None,
            Err(e) => {
                warn!("reading signals: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                None
            }
        };
        match signal {
            Some(Signal::SIGCHLD) => power::reap_children(),
            Some(Signal::SIGINT) => {
                info!("Ctrl-Alt-Del pressed");
                power::shutdown(PowerAction::Reboot, consoles)
            }
            Some(s) => match PowerAction::from_signal(s) {
                Some(action) => power::shutdown(action, consoles),
                None => info!("ignoring {s}"),
            },
            None => {}
        }
    }
}
