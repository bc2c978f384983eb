//! Queue processing shared by the devices: pull validated chains, hand each to the
//! device's [`ChainHandler`], return it to the used ring and interrupt the driver; and the
//! worker that does this for every queue of a device on an [`EventLoop`].

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::chain::{Chain, ChainError};
use super::event_loop::{EventHandler, EventLoop, Token, Watch};
use super::{ActivateContext, Interrupt};
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

/// Starts worker thread `name` serving every queue of `ctx` with `handler` (the devices
/// whose queues need nothing but chains: block, rng).
pub fn serve_queues<H: ChainHandler>(
    name: String,
    handler: H,
    ctx: ActivateContext,
) -> std::io::Result<EventLoop> {
    let queues = QueueWorker {
        name: name.clone(),
        handler,
        queues: ctx.queues,
        evts: ctx.queue_evts,
        mem: ctx.mem,
        irq: ctx.interrupt,
        failed: false,
    };
    EventLoop::spawn(name, queues)
}

/// Serves every queue of a device through one [`ChainHandler`]; the queue index is the
/// event token.
struct QueueWorker<H> {
    name: String,
    handler: H,
    queues: Vec<Queue>,
    evts: Vec<EventFd>,
    mem: Arc<GuestMemoryMmap>,
    irq: Arc<Interrupt>,
    /// Set on the first error: the device serves nothing more until the driver resets it.
    failed: bool,
}

impl<H: ChainHandler> QueueWorker<H> {
    fn serve(&mut self, index: usize) {
        if self.failed {
            return;
        }
        let Some(q) = self.queues.get_mut(index) else {
            return;
        };
        match process_queue(&mut self.handler, index, q, &self.mem) {
            Ok(true) => self.irq.signal_used_queue(),
            Ok(false) => {}
            Err(e) => {
                log::error!("{}: queue {index}: {e}; device needs reset", self.name);
                self.failed = true;
                self.irq.fail();
            }
        }
    }
}

impl<H: ChainHandler> EventHandler for QueueWorker<H> {
    fn sources(&self) -> Vec<(RawFd, Token)> {
        self.evts
            .iter()
            .enumerate()
            .map(|(i, e)| (e.as_raw_fd(), i as Token))
            .collect()
    }

    fn start(&mut self, _: &mut Watch<'_>) {
        for i in 0..self.queues.len() {
            self.serve(i);
        }
    }

    fn ready(&mut self, token: Token, _: &mut Watch<'_>) {
        let Ok(index) = usize::try_from(token) else {
            return;
        };
        if let Some(evt) = self.evts.get(index) {
            // Drained even once failed, or the level-triggered wait would spin.
            let _ = evt.read();
        }
        self.serve(index);
    }
}
