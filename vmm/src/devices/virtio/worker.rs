//! The per-device worker thread: waits on queue notifications, pulls validated chains,
//! hands them to the device, returns them to the used ring and interrupts the driver.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::chain::{Chain, ChainError};
use super::Interrupt;
use crate::vstate::memory::GuestMemoryMmap;

/// Why a queue could not be processed; each puts the device into the failed state.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A malformed descriptor chain.
    #[error("malformed descriptor chain: {0}")]
    Chain(#[from] ChainError),
    /// The rings themselves are unusable (bad avail index, unwritable used ring).
    #[error("virtqueue error: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// A chain that is well formed but cannot be a request of this device.
    #[error("malformed request: {0}")]
    Request(&'static str),
}

/// What a device does with each chain.
pub trait ChainHandler: Send + 'static {
    /// Largest chain (sum of buffer lengths) the device accepts.
    fn max_chain_bytes(&self) -> u64;
    /// Serves one request from queue `queue`; returns the number of bytes written into the
    /// chain's writable buffers (the used length).
    fn handle(
        &mut self,
        queue: usize,
        chain: &Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<u32, DeviceError>;
}

/// Pops the next available chain of `q`, validated.
pub fn next_chain(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    max_bytes: u64,
) -> Result<Option<Chain>, DeviceError> {
    let head = {
        let mut iter = q.iter(mem)?;
        match iter.next() {
            Some(dc) => dc.head_index(),
            None => return Ok(None),
        }
    };
    Ok(Some(Chain::parse(
        mem,
        GuestAddress(q.desc_table()),
        q.size(),
        head,
        max_bytes,
    )?))
}

/// Serves every available chain of queue `index`; returns whether the driver must be
/// interrupted. Uses the EVENT_IDX-aware enable/disable dance of virtio-queue so a chain
/// added while we were finishing is not missed.
pub fn process_queue<H: ChainHandler>(
    handler: &mut H,
    index: usize,
    q: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<bool, DeviceError> {
    let mut used_any = false;
    loop {
        q.disable_notification(mem)?;
        while let Some(chain) = next_chain(q, mem, handler.max_chain_bytes())? {
            let len = handler.handle(index, &chain, mem)?;
            q.add_used(mem, chain.head, len)?;
            used_any = true;
        }
        if !q.enable_notification(mem)? {
            break;
        }
    }
    Ok(used_any && q.needs_notification(mem)?)
}

/// A running worker thread.
pub struct Worker {
    kill: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a thread serving `queues` (notified through `evts`) with `handler`.
    pub fn spawn<H: ChainHandler>(
        name: String,
        mut handler: H,
        mut queues: Vec<Queue>,
        evts: Vec<EventFd>,
        mem: Arc<GuestMemoryMmap>,
        irq: Arc<Interrupt>,
    ) -> std::io::Result<Worker> {
        let kill = EventFd::new(EFD_NONBLOCK)?;
        let kill_rx = kill.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let mut fds: Vec<libc::pollfd> = std::iter::once(kill_rx.as_raw_fd())
                    .chain(evts.iter().map(|e| e.as_raw_fd()))
                    .map(|fd| libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                let mut failed = false;
                // Chains may already be waiting (the driver can kick before DRIVER_OK).
                let mut pending: Vec<bool> = vec![true; queues.len()];
                loop {
                    for (i, p) in pending.iter_mut().enumerate() {
                        if !std::mem::take(p) || failed {
                            continue;
                        }
                        match process_queue(&mut handler, i, &mut queues[i], &mem) {
                            Ok(true) => irq.signal_used_queue(),
                            Ok(false) => {}
                            Err(e) => {
                                log::error!("{name}: queue {i}: {e}; device needs reset");
                                failed = true;
                                irq.fail();
                            }
                        }
                    }
                    for f in fds.iter_mut() {
                        f.revents = 0;
                    }
                    // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
                    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
                    if r < 0 {
                        if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                        {
                            continue;
                        }
                        log::error!("{name}: poll failed: {}", std::io::Error::last_os_error());
                        return;
                    }
                    if fds[0].revents != 0 {
                        return;
                    }
                    for (i, f) in fds[1..].iter().enumerate() {
                        if f.revents != 0 {
                            let _ = evts[i].read();
                            pending[i] = true;
                        }
                    }
                }
            })?;
        Ok(Worker {
            kill,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (finishing the request it is serving, if any).
    pub fn stop(&mut self) {
        let _ = self.kill.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}
