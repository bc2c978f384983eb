//! The appliances on the person's console: fill with progress bars, start each appliance
//! when its boot chunks are in, switch consoles, and end the session when they have all
//! ended.

use crate::desktop::{self, Desktop, Member};
use crate::runner::{self, GuestConsole, Prepared, StopAll};
use crate::screen::{self, Gate, LiveBlock};
use crate::{logout, Outcome, Screen, Settings, REDRAW};
use cachefs::{Cache, ChunkSource};
use launcher::console_switch::{ConsoleEnd, Switcher};
use launcher::stdio::RawTerminal;
use receiver::{FillOptions, Session};
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

/// The networks the set joins become bridges; the drivers are loaded on first use.
fn bring_up_networks(apps: &[Prepared], screen: &mut Screen) -> Vec<String> {
    let mut bridges: Vec<String> = Vec::new();
    for a in apps {
        for n in &a.manifest.networks {
            let b = launcher::manifest_vm::bridge_for_network(&n.network);
            if !bridges.contains(&b) {
                bridges.push(b);
            }
        }
    }
    if bridges.is_empty() {
        return bridges;
    }
    for module in ["tun", "bridge"] {
        // init answers modprobe; outside the firmware the modules are usually there.
        let _ = std::process::Command::new("/sbin/modprobe")
            .args(["-q", module])
            .status();
    }
    // The uplink bridge is init's (the terminal's own card behind it): never made or
    // removed by a session.
    if let Some(at) = bridges
        .iter()
        .position(|b| b == launcher::manifest_vm::UPLINK)
    {
        bridges.remove(at);
        if support::netif::index(launcher::manifest_vm::UPLINK).is_err() {
            screen.line("  network uplink: this terminal shares no network card with appliances (no card, or collective.uplink=off); appliances on it start without it");
        }
    }
    bridges.retain(|b| match crate::bridges::ensure(b) {
        Ok(()) => true,
        Err(e) => {
            screen.line(&format!(
                "  network {b}: {e}; appliances on it start without it"
            ));
            false
        }
    });
    bridges
}

/// Whether the kernel, initrd and system disks of `m` are all in the cache.
fn system_complete(cache: &Cache, m: &appliance::Manifest) -> bool {
    m.system_blobs()
        .iter()
        .flat_map(|b| b.chunks.iter().flatten())
        .all(|id| cache.contains(id))
}

/// Chooses what to run of each appliance and opens its user disks.
fn prepare(
    settings: &Settings,
    session: &Session,
    cache: &Arc<Cache>,
    source: &Arc<dyn ChunkSource>,
    screen: &mut Screen,
) -> Vec<Prepared> {
    let mut out = Vec::new();
    for a in &session.set.appliances {
        let manifest = if session.is_offline() && !receiver::set::is_complete(cache, a) {
            // Offline, only what is in the cache can run: the previous version if the
            // update never finished arriving.
            match &a.previous {
                Some((m, _)) if system_complete(cache, m) => {
                    screen.line(&format!(
                        "  {}: v{} is not complete in the cache; running v{} (offline)",
                        a.name(),
                        a.manifest.version,
                        m.version
                    ));
                    m.clone()
                }
                _ => {
                    screen.line(&format!(
                        "  {}: not complete in the cache and the repository is unreachable; it cannot start",
                        a.name()
                    ));
                    continue;
                }
            }
        } else {
            a.manifest.clone()
        };
        let dir = settings.run_dir.join(a.name());
        let kernel = dir.join("vmlinuz");
        let initrd = manifest.initrd.as_ref().map(|_| dir.join("initrd.img"));
        let mut user_disks = Vec::new();
        let mut ok = true;
        for d in &a.user_disks {
            match receiver::open_session_user_disk(session, a.name(), &d.disk, source.clone()) {
                Ok(o) => user_disks.push((d.disk.clone(), Arc::new(o))),
                Err(e) => {
                    screen.line(&format!(
                        "  {}: user disk {}: {e}; the appliance does not start, its data stays in the cache",
                        a.name(),
                        d.disk
                    ));
                    ok = false;
                }
            }
        }
        if let Err(e) = std::fs::create_dir_all(&dir) {
            screen.line(&format!("  {}: {e}", a.name()));
            ok = false;
        }
        if ok {
            out.push(Prepared {
                name: a.name().to_string(),
                manifest,
                kernel,
                initrd,
                user_disks,
            });
        }
    }
    out
}

/// Each appliance's console as a pair of pipes: the desktop's ends and the VMs'.
fn console_pipes(apps: &[Prepared]) -> Result<(Vec<Member>, Vec<GuestConsole>), String> {
    let mut members = Vec::new();
    let mut guest_sides = Vec::new();
    for a in apps {
        let (Ok((out_r, out_w)), Ok((keys_r, keys_w))) = (std::io::pipe(), std::io::pipe()) else {
            return Err("cannot create console pipes".into());
        };
        members.push(Member {
            name: a.name.clone(),
            display: a.manifest.display,
            from_guest: Box::new(out_r),
            to_guest: Box::new(keys_w),
        });
        guest_sides.push(GuestConsole {
            keys: keys_r,
            output: out_w,
        });
    }
    Ok((members, guest_sides))
}

/// The console switcher and each appliance's end of its console.
fn connect_consoles(
    apps: &[Prepared],
    tty_in: File,
    gate: Gate,
    stop: Arc<StopAll>,
) -> Result<(Switcher, Vec<GuestConsole>), String> {
    let mut ends = Vec::new();
    let mut guest_sides = Vec::new();
    for a in apps {
        let (Ok((out_r, out_w)), Ok((keys_r, keys_w))) = (std::io::pipe(), std::io::pipe()) else {
            return Err("cannot create console pipes".into());
        };
        ends.push(ConsoleEnd {
            name: a.name.clone(),
            from_guest: Box::new(out_r),
            to_guest: Box::new(keys_w),
        });
        guest_sides.push(GuestConsole {
            keys: keys_r,
            output: out_w,
        });
    }
    let switcher = Switcher::start(ends, tty_in, Box::new(gate), Box::new(move || stop.stop()))
        .map_err(|e| format!("cannot start the console switcher: {e}"))?;
    Ok((switcher, guest_sides))
}

/// Where the person sees and drives the appliances.
enum Front {
    /// Text on the console the person logged in on: the console switcher.
    Text(Switcher),
    /// The PC's screen, keyboard and pointer, opened when the first appliance starts (so
    /// the progress bars stay on the screen until then).
    Waiting {
        members: Vec<Member>,
        tty_in: File,
        gate: Gate,
    },
    Desktop(Desktop),
    /// Nothing to show the appliances on: the session stops them and logs out.
    Nothing,
}

impl Front {
    fn ended(&self, index: usize, how: &str) {
        match self {
            Front::Text(s) => s.ended(index, how),
            Front::Desktop(d) => d.ended(index, how),
            Front::Waiting { .. } | Front::Nothing => {}
        }
    }

    /// Opens the desktop if it is waiting; falls back to the text switcher when the PC
    /// has no display the seat can drive.
    fn open(
        self,
        settings: &Settings,
        password: &str,
        stop: &Arc<StopAll>,
        screen: &mut Screen,
    ) -> Front {
        let Front::Waiting {
            members,
            tty_in,
            gate,
        } = self
        else {
            return self;
        };
        match Desktop::open(&settings.user, password, stop.clone(), members) {
            Ok(d) => Front::Desktop(d),
            Err((why, members)) => {
                log::warn!("no desktop on this PC's screen: {why}");
                screen.line(&format!(
                    "  no screen this terminal can drive ({why}); your appliances' consoles are here"
                ));
                let ends = members
                    .into_iter()
                    .map(|m| ConsoleEnd {
                        name: m.name,
                        from_guest: m.from_guest,
                        to_guest: m.to_guest,
                    })
                    .collect();
                let logout = stop.clone();
                match Switcher::start(
                    ends,
                    tty_in,
                    Box::new(gate.clone()),
                    Box::new(move || logout.stop()),
                ) {
                    Ok(s) => {
                        gate.open();
                        Front::Text(s)
                    }
                    Err(e) => {
                        screen.line(&format!(
                            "  cannot start the console switcher: {e}; logging out"
                        ));
                        stop.stop();
                        Front::Nothing
                    }
                }
            }
        }
    }
}

/// Runs the set on the console until it has ended, then logs out.
#[allow(clippy::too_many_arguments)]
pub fn run_appliances(
    settings: &Settings,
    password: &str,
    mut session: Session,
    cache: Arc<Cache>,
    options: FillOptions,
    tty_in: File,
    screen: &mut Screen,
    login_started: std::time::Instant,
) -> Outcome {
    let fetcher = session.client.clone().map(receiver::Fetcher::new);
    let source: Arc<dyn ChunkSource> = match &fetcher {
        Some(f) => f.clone(),
        None => Arc::new(cachefs::NoSource),
    };
    let fill = fetcher
        .as_ref()
        .map(|f| receiver::fill::start(cache.clone(), f.clone(), &session.set, options));
    let apps = prepare(settings, &session, &cache, &source, screen);
    let user_disks: Vec<(String, String, Arc<cachefs::Overlay>)> = apps
        .iter()
        .flat_map(|a| {
            a.user_disks
                .iter()
                .map(|(d, o)| (a.name.clone(), d.clone(), o.clone()))
        })
        .collect();
    if apps.is_empty() {
        screen.line("None of your appliances can run on this terminal now.");
        return logout::finish(&mut session, fill, &[], &[], screen, None);
    }
    let bridges = bring_up_networks(&apps, screen);

    // Every key reaches the appliances while they run; the mode comes back at logout.
    let tty_mode = tty_in.try_clone();
    let raw = tty_mode
        .as_ref()
        .ok()
        .map(|tty| RawTerminal::enter(tty.as_fd(), true));
    let stop = Arc::new(StopAll::default());
    let pc_screen = desktop::on_pc_screen(&tty_in);
    let plumbing = screen
        .writer()
        .try_clone()
        .map_err(|e| format!("cannot share the console: {e}"))
        .and_then(|f| {
            let gate = Gate::new(Box::new(f));
            if pc_screen {
                let (members, guest_sides) = console_pipes(&apps)?;
                let front = Front::Waiting {
                    members,
                    tty_in,
                    gate: gate.clone(),
                };
                Ok((gate, front, guest_sides))
            } else {
                connect_consoles(&apps, tty_in, gate.clone(), stop.clone())
                    .map(|(s, sides)| (gate, Front::Text(s), sides))
            }
        });
    let (gate, mut front, guest_sides) = match plumbing {
        Ok(p) => p,
        Err(e) => {
            return logout::finish(&mut session, fill, &user_disks, &bridges, screen, Some(e))
        }
    };

    // Start each appliance as soon as its boot chunks are in; draw the bars meanwhile.
    let mut pending: Vec<Option<(Prepared, GuestConsole)>> =
        apps.into_iter().zip(guest_sides).map(Some).collect();
    let mut threads: Vec<(
        usize,
        std::thread::JoinHandle<Result<vmm::ExitReason, String>>,
    )> = Vec::new();
    let mut bars = LiveBlock::default();
    let mut started_after: Vec<String> = Vec::new();
    let names: Vec<String> = pending
        .iter()
        .map(|p| p.as_ref().map(|(a, _)| a.name.clone()).unwrap_or_default())
        .collect();
    loop {
        let progress = fill.as_ref().map(|f| f.progress());
        if let Some(p) = &progress {
            bars.draw(screen.writer(), &screen::progress_lines(p));
        }
        for (index, slot) in pending.iter_mut().enumerate() {
            let ready = match &progress {
                None => true,
                Some(p) => {
                    p.finished
                        || p.appliances
                            .iter()
                            .find(|ap| Some(&ap.name) == slot.as_ref().map(|(a, _)| &a.name))
                            .is_none_or(|ap| ap.boot_ready())
                }
            };
            if !ready || slot.is_none() {
                continue;
            }
            let Some((app, console)) = slot.take() else {
                continue;
            };
            if matches!(front, Front::Waiting { .. }) {
                front = front.open(settings, password, &stop, screen);
            }
            let graphics = match &front {
                Front::Desktop(d) if app.manifest.display => d.graphics(index),
                _ => None,
            };
            let name = app.name.clone();
            let materialized =
                runner::materialize(&cache, &app.manifest.kernel, source.clone(), &app.kernel)
                    .and_then(|()| match (&app.manifest.initrd, &app.initrd) {
                        (Some(blob), Some(path)) => {
                            runner::materialize(&cache, blob, source.clone(), path)
                        }
                        _ => Ok(()),
                    });
            if let Err(e) = materialized {
                screen.line(&format!("  {name}: cannot read its kernel: {e}"));
                front.ended(index, &format!("not started: {e}"));
                continue;
            }
            match runner::start(
                app,
                cache.clone(),
                source.clone(),
                console,
                graphics,
                stop.clone(),
            ) {
                Ok(t) => {
                    let after = login_started.elapsed().as_secs_f64();
                    log::info!("{name}: started {after:.2} s after the password");
                    started_after.push(format!("{name} started {after:.1} s after login"));
                    threads.push((index, t));
                }
                Err(e) => screen.line(&format!("  {name}: cannot start: {e}")),
            }
        }
        if pending.iter().all(Option::is_none) || stop.stopping() {
            break;
        }
        std::thread::sleep(REDRAW);
    }
    let keys = match &front {
        Front::Desktop(_) => "on the PC's screen; Ctrl+Alt+Del for the terminal's menu (switch, lock, log out), Ctrl+Alt+F1-F12 switch",
        _ => "Keys: Ctrl-A n next console, Ctrl-A 1-9 choose, Ctrl-A q log out",
    };
    screen.line(&format!(
        "Appliances: {}. {keys}.",
        started_after.join(", ")
    ));
    if matches!(front, Front::Text(_)) {
        gate.open();
    }

    // Say how each appliance ended as it ends, in whatever order that is.
    let mut problems = None;
    let mut running = threads;
    while !running.is_empty() {
        let Some(pos) = running.iter().position(|(_, t)| t.is_finished()) else {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        };
        let (index, thread) = running.swap_remove(pos);
        let how = match thread.join() {
            Ok(Ok(reason)) => describe(&reason),
            Ok(Err(e)) => {
                problems
                    .get_or_insert_with(String::new)
                    .push_str(&format!("{}: {e}; ", names[index]));
                format!("failed: {e}")
            }
            Err(_) => "crashed".to_string(),
        };
        front.ended(index, &how);
    }
    if let Front::Desktop(d) = front {
        // The screen goes back to the text console before the logout lines are written.
        d.close();
    }
    drop(raw);
    logout::finish(&mut session, fill, &user_disks, &bridges, screen, problems)
}

fn describe(reason: &vmm::ExitReason) -> String {
    match reason {
        vmm::ExitReason::PowerOff => "powered off".into(),
        vmm::ExitReason::Reset => "reset".into(),
        vmm::ExitReason::Halt => "halted".into(),
        vmm::ExitReason::Stopped => "stopped at logout".into(),
        vmm::ExitReason::Crash(why) => format!("crashed: {why}"),
    }
}
