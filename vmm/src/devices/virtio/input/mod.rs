//! virtio-input: a keyboard or a tablet fed by the seat through an [`InputQueue`].
//!
//! Queue 0 (eventq) carries events to the driver, one 8-byte `virtio_input_event` per
//! buffer; queue 1 (statusq) carries the driver's LED changes back. The worker wakes on
//! either queue's notification and on the queue's own eventfd (the seat sent events), and
//! moves as many waiting events as the guest has buffers for; the rest wait, bounded by
//! [`crate::input::QUEUE_CAPACITY`].

pub mod config;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_INPUT;
use virtio_bindings::virtio_input::virtio_input_event;
use virtio_queue::{Queue, QueueT};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

use self::config::query;
use super::event_loop::{EventHandler, EventLoop, Token, Watch};
use super::worker::{next_chain, DeviceError};
use super::{features, ActivateContext, ActivateError, Interrupt, VirtioDevice};
use crate::input::codes::EV_LED;
use crate::input::{InputConfig, InputEvent, InputKind, InputQueue};
use crate::vstate::memory::GuestMemoryMmap;

/// Queue size offered (both queues).
pub const QUEUE_SIZE: u16 = 64;
/// Bytes of one event on the wire.
pub const EVENT_SIZE: usize = std::mem::size_of::<WireEvent>();
/// Largest chain accepted: an event buffer is 8 bytes; allow some slack.
const MAX_CHAIN_BYTES: u64 = 4096;

const EVENTQ: usize = 0;
const STATUSQ: usize = 1;
const WAKE: Token = 2;

/// `struct virtio_input_event` (little-endian type, code, value).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct WireEvent(pub virtio_input_event);

// SAFETY: `virtio_input_event` is `#[repr(C)]` {u16, u16, u32}: no padding, every byte
// pattern is valid.
unsafe impl ByteValued for WireEvent {}

impl From<InputEvent> for WireEvent {
    fn from(e: InputEvent) -> Self {
        Self(virtio_input_event {
            type_: e.kind.to_le(),
            code: e.code.to_le(),
            value: (e.value as u32).to_le(),
        })
    }
}

impl From<WireEvent> for InputEvent {
    fn from(e: WireEvent) -> Self {
        InputEvent::new(
            u16::from_le(e.0.type_),
            u16::from_le(e.0.code),
            u32::from_le(e.0.value) as i32,
        )
    }
}

/// A virtio-input device.
pub struct Input {
    kind: InputKind,
    name: String,
    queue: InputQueue,
    select: u8,
    subsel: u8,
    worker: Option<EventLoop>,
}

impl Input {
    /// The device of `config` (an empty name becomes "Collective keyboard"/"tablet").
    pub fn new(config: InputConfig) -> Self {
        let name = if config.name.is_empty() {
            match config.kind {
                InputKind::Keyboard => "Collective keyboard".to_string(),
                InputKind::Tablet => "Collective tablet".to_string(),
            }
        } else {
            config.name
        };
        Self {
            kind: config.kind,
            name,
            queue: config.queue,
            select: 0,
            subsel: 0,
            worker: None,
        }
    }
}

impl VirtioDevice for Input {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_INPUT
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX
    }
    fn config_space(&self) -> Vec<u8> {
        query(self.kind, &self.name, self.select, self.subsel)
            .as_slice()
            .to_vec()
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only select (byte 0) and subsel (byte 1) are writable; a write may cover both.
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(0) => self.select = b,
                Some(1) => self.subsel = b,
                _ => {}
            }
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.reset();
        let worker = InputWorker::new(self.queue.clone(), ctx)?;
        let name = match self.kind {
            InputKind::Keyboard => "input-kbd",
            InputKind::Tablet => "input-tablet",
        };
        self.worker = Some(EventLoop::spawn(name.into(), worker)?);
        Ok(())
    }
    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        self.select = 0;
        self.subsel = 0;
    }
}

/// Moves waiting events of `input` into eventq buffers until either runs out; returns
/// whether to interrupt the guest. A buffer that is device-readable or shorter than an
/// event is a broken driver: the device fails.
pub fn deliver_events(
    input: &InputQueue,
    q: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<bool, DeviceError> {
    let mut used = false;
    loop {
        q.disable_notification(mem)?;
        let starved = input.with_pending(|pending| -> Result<bool, DeviceError> {
            while let Some(&ev) = pending.front() {
                let Some(chain) = next_chain(q, mem, MAX_CHAIN_BYTES)? else {
                    return Ok(true);
                };
                if !chain.readable.is_empty() || chain.writable_len() < EVENT_SIZE as u64 {
                    return Err(DeviceError::Request(
                        "virtio-input event buffer is not an 8-byte writable buffer",
                    ));
                }
                let n = chain.write_at(mem, 0, WireEvent::from(ev).as_slice());
                q.add_used(mem, chain.head, n as u32)?;
                pending.pop_front();
                used = true;
            }
            Ok(false)
        })?;
        // Notifications stay on: events may come before buffers do.
        if !q.enable_notification(mem)? || !starved {
            break;
        }
    }
    Ok(used && q.needs_notification(mem)?)
}

/// Takes the driver's status events: LED changes are recorded in `input`, anything else
/// is discarded. A malformed status buffer is returned unread (and logged), not fatal:
/// losing an LED update must not cost the guest its keyboard.
pub fn process_status(
    input: &InputQueue,
    q: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<bool, DeviceError> {
    let mut used = false;
    loop {
        q.disable_notification(mem)?;
        while let Some(chain) = next_chain(q, mem, MAX_CHAIN_BYTES)? {
            match chain.read_obj::<WireEvent>(mem, 0) {
                Some(w) if chain.writable.is_empty() => {
                    let ev = InputEvent::from(w);
                    if ev.kind == EV_LED {
                        input.set_led(ev.code, ev.value != 0);
                    }
                }
                _ => log::debug!("virtio-input: malformed status buffer ignored"),
            }
            q.add_used(mem, chain.head, 0)?;
            used = true;
        }
        if !q.enable_notification(mem)? {
            break;
        }
    }
    Ok(used && q.needs_notification(mem)?)
}

/// The device's worker: eventq, statusq and the seat's wake-up on one [`EventLoop`].
struct InputWorker {
    input: InputQueue,
    eventq: Queue,
    statusq: Queue,
    evts: [EventFd; 2],
    mem: Arc<GuestMemoryMmap>,
    irq: Arc<Interrupt>,
    failed: bool,
}

impl InputWorker {
    fn new(input: InputQueue, ctx: ActivateContext) -> Result<Self, ActivateError> {
        let got = ctx.queues.len();
        let [eventq, statusq]: [Queue; 2] = ctx
            .queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { need: 2, got })?;
        let got = ctx.queue_evts.len();
        let evts: [EventFd; 2] = ctx
            .queue_evts
            .try_into()
            .map_err(|_| ActivateError::QueueCount { need: 2, got })?;
        if input.wake_fd().is_none() {
            return Err(ActivateError::Worker(std::io::Error::other(
                "the input queue has no eventfd",
            )));
        }
        input.clear();
        Ok(Self {
            input,
            eventq,
            statusq,
            evts,
            mem: ctx.mem,
            irq: ctx.interrupt,
            failed: false,
        })
    }

    fn outcome(&mut self, r: Result<bool, DeviceError>) {
        match r {
            Ok(true) => self.irq.signal_used_queue(),
            Ok(false) => {}
            Err(e) => {
                log::error!("virtio-input: {e}; device needs reset");
                self.failed = true;
                self.irq.fail();
            }
        }
    }

    fn events(&mut self) {
        if !self.failed {
            let r = deliver_events(&self.input, &mut self.eventq, &self.mem);
            self.outcome(r);
        }
    }

    fn status(&mut self) {
        if !self.failed {
            let r = process_status(&self.input, &mut self.statusq, &self.mem);
            self.outcome(r);
        }
    }
}

impl EventHandler for InputWorker {
    fn sources(&self) -> Vec<(RawFd, Token)> {
        let mut v = vec![
            (self.evts[EVENTQ].as_raw_fd(), EVENTQ as Token),
            (self.evts[STATUSQ].as_raw_fd(), STATUSQ as Token),
        ];
        if let Some(w) = self.input.wake_fd() {
            v.push((w.as_raw_fd(), WAKE));
        }
        v
    }

    fn start(&mut self, _: &mut Watch<'_>) {
        self.status();
        self.events();
    }

    fn ready(&mut self, token: Token, _: &mut Watch<'_>) {
        match token {
            t if t == EVENTQ as Token => {
                let _ = self.evts[EVENTQ].read();
                self.events();
            }
            t if t == STATUSQ as Token => {
                let _ = self.evts[STATUSQ].read();
                self.status();
            }
            WAKE => {
                if let Some(w) = self.input.wake_fd() {
                    let _ = w.read();
                }
                self.events();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
