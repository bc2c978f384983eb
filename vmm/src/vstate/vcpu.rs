//! vCPU threads: each runs `KVM_RUN` in a loop and serves port/MMIO exits through the buses.
//!
//! Stopping: the VM's owner sets the shared stop flag and signals the thread with
//! [`VCPU_KICK_SIGNAL`] until it has returned; the (empty) handler makes `KVM_RUN` return
//! `EINTR`, after which the loop sees the flag. Kicking repeatedly closes the race where
//! the signal lands between the flag check and the next `KVM_RUN`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::Bus;
use crate::exit::{ExitReason, ExitSignal};

/// The signal used to kick vCPU threads out of `KVM_RUN`.
#[allow(non_snake_case)]
pub fn VCPU_KICK_SIGNAL() -> i32 {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register_signal_handler(VCPU_KICK_SIGNAL(), kick_handler) {
            log::error!("cannot install the vCPU kick handler: {e}");
        }
    });
}

/// What a vCPU thread shares with the rest of the VM.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Where the vCPU reports why the VM ends.
    pub exit: Arc<ExitSignal>,
    /// Set when the VM is stopping.
    pub stop: Arc<AtomicBool>,
}

/// Counts exits to userspace by kind and address, to find what a boot spends its exits
/// on (each costs tens of microseconds nested); logged at debug level when the vCPU stops.
#[derive(Default)]
struct ExitStats(std::collections::HashMap<(&'static str, u64), u64>);

impl ExitStats {
    fn count(&mut self, exit: &VcpuExit<'_>) {
        let key = match exit {
            VcpuExit::IoIn(p, _) => ("pio-in", u64::from(*p)),
            VcpuExit::IoOut(p, _) => ("pio-out", u64::from(*p)),
            VcpuExit::MmioRead(a, _) => ("mmio-read", *a),
            VcpuExit::MmioWrite(a, _) => ("mmio-write", *a),
            _ => ("other", 0),
        };
        *self.0.entry(key).or_default() += 1;
    }

    fn log(&self, id: u64) {
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        let mut v: Vec<_> = self.0.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        let total: u64 = self.0.values().sum();
        let top: Vec<String> = v
            .iter()
            .take(8)
            .map(|((k, a), n)| format!("{k} {a:#x}: {n}"))
            .collect();
        log::debug!(
            "vCPU {id}: {total} exits to the VMM; most: {}",
            top.join(", ")
        );
    }
}

/// Handles one exit; returns a reason when the VM must end.
fn handle_exit(id: u64, exit: VcpuExit<'_>, ctx: &VcpuContext) -> Option<ExitReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !ctx.pio.write(u64::from(port), data) {
                log::trace!("vCPU {id}: write to unclaimed port {port:#x}");
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                log::trace!("vCPU {id}: write to unclaimed MMIO {addr:#x}");
            }
        }
        VcpuExit::Hlt => return Some(ExitReason::Halt),
        // A triple fault: on a PC this resets the machine (Linux's reboot=t relies on it).
        VcpuExit::Shutdown => return Some(ExitReason::Reset),
        VcpuExit::SystemEvent(kind, _) => {
            return Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                other => ExitReason::Crash(format!("vCPU {id}: system event {other}")),
            })
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Some(ExitReason::Crash(format!(
                "vCPU {id}: entry failed, reason {reason:#x} on cpu {cpu}"
            )))
        }
        VcpuExit::InternalError => {
            return Some(ExitReason::Crash(format!("vCPU {id}: KVM internal error")))
        }
        VcpuExit::IoapicEoi(_) | VcpuExit::Intr => {}
        other => log::warn!("vCPU {id}: unhandled exit {other:?}"),
    }
    None
}

/// Runs vCPU `id` until the VM stops; reports the reason if this vCPU caused it.
pub fn run_vcpu(id: u64, mut vcpu: VcpuFd, ctx: VcpuContext) {
    let mut stats = ExitStats::default();
    let counting = log::log_enabled!(log::Level::Debug);
    while !ctx.stop.load(Ordering::Acquire) {
        match vcpu.run() {
            Ok(exit) => {
                if counting {
                    stats.count(&exit);
                }
                if let Some(reason) = handle_exit(id, exit, &ctx) {
                    ctx.exit.request(reason);
                    break;
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                ctx.exit
                    .request(ExitReason::Crash(format!("vCPU {id}: KVM_RUN failed: {e}")));
                break;
            }
        }
    }
    stats.log(id);
    match vcpu.get_regs() {
        Ok(r) => log::debug!("vCPU {id} stopped at rip {:#x} rsp {:#x}", r.rip, r.rsp),
        Err(_) => log::debug!("vCPU {id} stopped"),
    }
}

/// Starts a thread running [`run_vcpu`].
pub fn spawn_vcpu(id: u64, vcpu: VcpuFd, ctx: VcpuContext) -> std::io::Result<JoinHandle<()>> {
    install_kick_handler();
    std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || run_vcpu(id, vcpu, ctx))
}

/// Sets `stop` and kicks every vCPU thread until it has returned, then joins it.
pub fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    for t in threads {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !t.is_finished() && Instant::now() < deadline {
            let _ = t.kill(VCPU_KICK_SIGNAL());
            std::thread::sleep(Duration::from_millis(2));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            log::error!("a vCPU thread did not stop; leaving it behind");
        }
    }
}
