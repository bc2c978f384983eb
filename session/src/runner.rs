//! Runs one appliance of the set: its VM in a thread of the session (the session owns the
//! cache, so the VMs must read it through the session's handle), rebooted when the guest
//! resets, stopped when the person logs out.

use appliance::{DiskRole, Manifest};
use cachefs::{Cache, ChunkSource, Overlay};
use launcher::cachefs_disk::CachefsDisk;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vmm::{BlockBackend, ConsoleConfig, ExitReason, ExitSignal};

/// What an appliance's VM needs, prepared before it starts.
pub struct Prepared {
    pub name: String,
    pub manifest: Manifest,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The user disks' overlays, by disk name; they outlive the VM for write-back.
    pub user_disks: Vec<(String, Arc<Overlay>)>,
}

/// Writes a chunked blob (kernel, initrd) from the cache to a file the VMM loads.
pub fn materialize(
    cache: &Arc<Cache>,
    blob: &appliance::ChunkList,
    source: Arc<dyn ChunkSource>,
    path: &Path,
) -> Result<(), String> {
    let view = receiver::disks::view(cache, blob, source).map_err(|e| e.to_string())?;
    let len = usize::try_from(blob.size).map_err(|_| "image too large".to_string())?;
    let mut bytes = vec![0u8; len];
    view.read_at(0, &mut bytes).map_err(|e| e.to_string())?;
    std::fs::write(path, &bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The person's logout and the guests' ends, seen by every appliance thread.
#[derive(Default)]
pub struct StopAll {
    stopping: AtomicBool,
    signals: Mutex<Vec<Arc<ExitSignal>>>,
}

impl StopAll {
    /// Stops every running VM and keeps the others from starting or rebooting.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Ok(signals) = self.signals.lock() {
            for s in signals.iter() {
                s.request(ExitReason::Stopped);
            }
        }
    }

    /// Whether logout was asked for.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn register(&self, signal: Arc<ExitSignal>) {
        if let Ok(mut signals) = self.signals.lock() {
            signals.push(signal.clone());
        }
        // A logout that came between the check and the registration still counts.
        if self.stopping() {
            signal.request(ExitReason::Stopped);
        }
    }
}

/// The console pipes' VM ends.
pub struct GuestConsole {
    pub keys: std::io::PipeReader,
    pub output: std::io::PipeWriter,
}

/// Starts the appliance's VM in a thread; the thread returns how it ended.
pub fn start(
    prepared: Prepared,
    cache: Arc<Cache>,
    source: Arc<dyn ChunkSource>,
    console: GuestConsole,
    graphics: Option<crate::desktop::Graphics>,
    stop: Arc<StopAll>,
) -> std::io::Result<JoinHandle<Result<ExitReason, String>>> {
    std::thread::Builder::new()
        .name(format!("vm-{}", prepared.name))
        .spawn(move || {
            let mut boots = 0u32;
            loop {
                if stop.stopping() {
                    return Ok(ExitReason::Stopped);
                }
                boots += 1;
                log::info!("{}: booting (boot {boots})", prepared.name);
                let reason = boot_once(
                    &prepared,
                    &cache,
                    &source,
                    &console,
                    graphics.as_ref(),
                    &stop,
                )?;
                log::info!("{}: VM ended: {reason:?}", prepared.name);
                if reason != ExitReason::Reset || stop.stopping() {
                    return Ok(reason);
                }
            }
        })
}

/// One boot: fresh system-disk overlays (a reboot forgets system changes, as a power
/// cycle of a real appliance would), the same user disks.
fn boot_once(
    p: &Prepared,
    cache: &Arc<Cache>,
    source: &Arc<dyn ChunkSource>,
    console: &GuestConsole,
    graphics: Option<&crate::desktop::Graphics>,
    stop: &StopAll,
) -> Result<ExitReason, String> {
    let t_start = std::time::Instant::now();
    let mut disks: Vec<Arc<dyn BlockBackend>> = Vec::new();
    for disk in &p.manifest.disks {
        let backend: Arc<dyn BlockBackend> = match disk.role {
            DiskRole::System => Arc::new(
                CachefsDisk::new(
                    &disk.name,
                    cache.clone(),
                    &disk.image,
                    source.clone(),
                    false,
                )
                .map_err(|e| format!("disk {}: {e}", disk.name))?,
            ),
            DiskRole::User => {
                let overlay = p
                    .user_disks
                    .iter()
                    .find(|(name, _)| *name == disk.name)
                    .map(|(_, o)| o.clone())
                    .ok_or_else(|| format!("user disk {} was not opened", disk.name))?;
                Arc::new(CachefsDisk::over(&disk.name, overlay))
            }
        };
        disks.push(backend);
    }
    let failed = |what: &'static str| move |e: std::io::Error| format!("console {what}: {e}");
    let console = ConsoleConfig::Stream {
        input: Box::new(console.keys.try_clone().map_err(failed("input"))?),
        output: Box::new(console.output.try_clone().map_err(failed("output"))?),
    };
    let vm = launcher::manifest_vm::vm_config(
        &p.manifest,
        p.kernel.clone(),
        p.initrd.clone(),
        disks,
        console,
    )
    .map_err(|e| e.to_string())?;
    let mut vm = vm;
    if let Some(g) = graphics {
        let (display, inputs) = g.devices();
        vm.config.machine.display = Some(display);
        vm.config.machine.inputs = inputs;
    }
    let t0 = std::time::Instant::now();
    let mut machine = vmm::Machine::new(vm.config.machine).map_err(|e| e.to_string())?;
    stop.register(machine.exit_signal());
    launcher::network::plug(machine.tap_names(), &vm.attachments).map_err(|e| e.to_string())?;
    let t1 = t0.elapsed();
    machine
        .load_kernel(&vm.config.kernel)
        .map_err(|e| e.to_string())?;
    let t2 = t0.elapsed();
    log::info!(
        "{}: disks ready in {:.2} s, VM built in {:.2} s, kernel loaded in {:.2} s",
        p.name,
        (t0 - t_start).as_secs_f64(),
        t1.as_secs_f64(),
        (t2 - t1).as_secs_f64()
    );
    machine.run().map_err(|e| e.to_string())
}
