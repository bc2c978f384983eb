//! vCPU threads: each runs `KVM_RUN` in a loop and serves port/MMIO exits through the buses.
//!
//! Stopping ([`stop_vcpus`]): the VM's owner sets the shared stop flag, sends each vCPU
//! thread one [`VCPU_KICK_SIGNAL`] and joins it. The signal handler sets
//! `kvm_run.immediate_exit` of the thread it interrupts, which makes `KVM_RUN` return
//! `EINTR` at once whether the signal came during the call or just before it: a kick that
//! lands between the loop's flag check and the next `KVM_RUN` is therefore not lost, and
//! one signal is enough (no resend loop). The loop clears the flag after each `EINTR`.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::Bus;
use crate::exit::{ExitReason, ExitSignal};

/// The signal used to kick vCPU threads out of `KVM_RUN`.
#[allow(non_snake_case)]
pub fn VCPU_KICK_SIGNAL() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit` byte, while the thread runs a vCPU; null
    /// otherwise. Const-initialised and without a destructor, so reading it from a signal
    /// handler neither allocates nor takes locks.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let flag = IMMEDIATE_EXIT.with(Cell::get);
    if !flag.is_null() {
        // SAFETY: `flag` points into this thread's kvm_run mapping, which stays mapped
        // while the pointer is set (`ImmediateExitGuard` clears it before the vCPU fd, and
        // with it the mapping, can be dropped). The handler runs on the thread that owns
        // the vCPU, so nothing else writes the byte concurrently except the kernel, which
        // only reads it on entry to KVM_RUN. A volatile store keeps the compiler from
        // eliding a write it cannot see being read.
        unsafe { std::ptr::write_volatile(flag, 1) };
    }
}

/// Publishes a vCPU's `immediate_exit` byte to the kick handler for as long as it lives.
struct ImmediateExitGuard;

impl ImmediateExitGuard {
    fn publish(vcpu: &mut VcpuFd) -> Self {
        let flag: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|c| c.set(flag));
        ImmediateExitGuard
    }
}

impl Drop for ImmediateExitGuard {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}

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
    let kick_target = ImmediateExitGuard::publish(&mut vcpu);
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
            // A kick (or another signal): clear the flag so the next KVM_RUN enters the
            // guest, then look at the stop flag again.
            Err(e) if e.errno() == libc::EINTR => vcpu.set_kvm_immediate_exit(0),
            Err(e) if e.errno() == libc::EAGAIN => {}
            Err(e) => {
                ctx.exit
                    .request(ExitReason::Crash(format!("vCPU {id}: KVM_RUN failed: {e}")));
                break;
            }
        }
    }
    drop(kick_target);
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

/// Sets `stop`, kicks every vCPU thread once and joins them.
///
/// One kick suffices: the flag is set before the signal is sent, and the signal handler
/// sets `immediate_exit`, so the thread either sees the flag before its next `KVM_RUN` or
/// has that `KVM_RUN` return at once.
pub fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    for t in &threads {
        if t.is_finished() {
            continue;
        }
        if let Err(e) = t.kill(VCPU_KICK_SIGNAL()) {
            // ESRCH: the thread ended between the check and the signal.
            log::debug!("kicking a vCPU thread: {e}");
        }
    }
    for t in threads {
        if t.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::vstate::{memory, vm};

    /// A kick delivered *before* `KVM_RUN` (the window between the stop-flag check and the
    /// ioctl) must still make the next `KVM_RUN` return at once, although the guest spins
    /// in `jmp $` and would never exit on its own.
    #[test]
    fn kick_before_kvm_run_is_not_lost() {
        if std::fs::metadata("/dev/kvm").is_err() {
            eprintln!("SKIPPED: /dev/kvm is absent on this machine");
            return;
        }
        let (_kvm, vm) = vm::create_vm().unwrap();
        let mem = memory::create_guest_memory(16 << 20).unwrap();
        memory::register_with_kvm(&vm, &mem).unwrap();
        mem.write_slice(&[0xeb, 0xfe], GuestAddress(0x1000))
            .unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        vcpu.set_regs(&kvm_bindings::kvm_regs {
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        })
        .unwrap();

        install_kick_handler();
        let guard = ImmediateExitGuard::publish(&mut vcpu);
        // SAFETY: pthread_self is always valid for the calling thread.
        let me = unsafe { libc::pthread_self() };
        // SAFETY: signalling our own live thread; the handler is installed.
        assert_eq!(unsafe { libc::pthread_kill(me, VCPU_KICK_SIGNAL()) }, 0);
        // A safety net so a broken kick fails the test instead of hanging it: a second
        // signal after 3 s interrupts KVM_RUN the ordinary way.
        let me_addr = me as usize;
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if finished.recv_timeout(Duration::from_secs(3)).is_err() {
                // SAFETY: the test thread is still alive: it joins this thread before
                // ending.
                unsafe { libc::pthread_kill(me_addr as libc::pthread_t, VCPU_KICK_SIGNAL()) };
            }
        });
        let t = Instant::now();
        let r = vcpu.run().map(|_| ());
        let took = t.elapsed();
        drop(guard);
        let _ = done.send(());
        watchdog.join().unwrap();
        assert_eq!(r.unwrap_err().errno(), libc::EINTR);
        assert!(
            took < Duration::from_secs(1),
            "KVM_RUN returned after {took:?}"
        );
        vcpu.set_kvm_immediate_exit(0);
    }
}
