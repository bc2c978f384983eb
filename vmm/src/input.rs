//! Keyboard and pointer input for a VM, as the embedding program (the seat) sees it.
//!
//! The seat merges every host input device into fixed virtio-input devices (a keyboard and
//! a tablet): it pushes Linux input events, each packet ended by `SYN_REPORT`, into an
//! [`InputQueue`]; the device's worker moves them into the guest's event buffers. The
//! queue is bounded: a guest that stops taking events cannot make the host buffer grow.
//! The guest's LED state (Caps Lock, ...) comes back the other way, readable with
//! [`InputQueue::leds`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Events the queue holds at most; [`InputQueue::send`] refuses what does not fit.
pub const QUEUE_CAPACITY: usize = 4096;

/// Linux event types and codes the devices use (`linux/input-event-codes.h`).
pub mod codes {
    #![allow(missing_docs)]
    pub const EV_SYN: u16 = 0x00;
    pub const EV_KEY: u16 = 0x01;
    pub const EV_REL: u16 = 0x02;
    pub const EV_ABS: u16 = 0x03;
    pub const EV_LED: u16 = 0x11;
    pub const EV_REP: u16 = 0x14;
    pub const SYN_REPORT: u16 = 0;
    pub const REL_HWHEEL: u16 = 0x06;
    pub const REL_WHEEL: u16 = 0x08;
    pub const ABS_X: u16 = 0x00;
    pub const ABS_Y: u16 = 0x01;
    pub const BTN_LEFT: u16 = 0x110;
    pub const BTN_RIGHT: u16 = 0x111;
    pub const BTN_MIDDLE: u16 = 0x112;
    pub const BTN_SIDE: u16 = 0x113;
    pub const BTN_EXTRA: u16 = 0x114;
    pub const LED_NUML: u16 = 0x00;
    pub const LED_CAPSL: u16 = 0x01;
    pub const LED_SCROLLL: u16 = 0x02;
    pub const REP_DELAY: u16 = 0x00;
    pub const REP_PERIOD: u16 = 0x01;
    pub const BUS_VIRTUAL: u16 = 0x06;
    /// Highest key code the keyboard declares (`KEY_MICMUTE`): 1..=248.
    pub const KEY_MAX_DECLARED: u16 = 248;
    /// Largest absolute coordinate of the tablet.
    pub const ABS_MAX_TABLET: u32 = 32767;
}

/// One Linux input event (`struct input_event` without the time stamp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct InputEvent {
    /// `EV_*`.
    pub kind: u16,
    /// Key, axis or LED code.
    pub code: u16,
    /// Value (key: 0 up, 1 down, 2 repeat; axis: position or delta).
    pub value: i32,
}

impl InputEvent {
    /// An event.
    pub const fn new(kind: u16, code: u16, value: i32) -> Self {
        Self { kind, code, value }
    }

    /// The `SYN_REPORT` that ends a packet.
    pub const fn syn() -> Self {
        Self::new(codes::EV_SYN, codes::SYN_REPORT, 0)
    }
}

/// Which device a virtio-input instance is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// Keys 1..=248, autorepeat, the Num/Caps/Scroll Lock LEDs.
    Keyboard,
    /// Absolute pointer 0..=32767 on both axes, five buttons, both wheels.
    Tablet,
}

/// One virtio-input device of a VM.
#[derive(Debug)]
pub struct InputConfig {
    /// Keyboard or tablet.
    pub kind: InputKind,
    /// The name the guest sees (at most 128 bytes; empty: "Collective keyboard"/"tablet").
    pub name: String,
    /// Where its events come from.
    pub queue: InputQueue,
}

impl InputConfig {
    /// What a graphical appliance gets from a seat: a keyboard, and a tablet (an absolute
    /// pointer, so that the seat keeps the pointer's position across switches), fed by
    /// these queues and named by the device's defaults.
    pub fn keyboard_and_tablet(keyboard: InputQueue, tablet: InputQueue) -> Vec<InputConfig> {
        vec![
            InputConfig {
                kind: InputKind::Keyboard,
                name: String::new(),
                queue: keyboard,
            },
            InputConfig {
                kind: InputKind::Tablet,
                name: String::new(),
                queue: tablet,
            },
        ]
    }
}

type LedCallback = Box<dyn Fn(u32) + Send + Sync>;

struct Pending {
    events: VecDeque<InputEvent>,
    /// A refusal was logged; re-armed once the queue drains.
    warned: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the device's worker; `None` if it could not be created (the device then
    /// refuses to activate).
    wake: Option<EventFd>,
    leds: AtomicU32,
    on_leds: Mutex<Option<LedCallback>>,
}

/// The seat's end of a virtio-input device (thread-safe, cheap to clone).
#[derive(Clone)]
pub struct InputQueue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InputQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputQueue")
            .field("pending", &self.pending())
            .field("leds", &self.leds())
            .finish()
    }
}

impl Default for InputQueue {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InputQueue {
    /// An empty queue.
    pub fn new() -> Self {
        let wake = EventFd::new(EFD_NONBLOCK)
            .map_err(|e| log::error!("input queue: cannot create its eventfd: {e}"))
            .ok();
        Self {
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending {
                    events: VecDeque::new(),
                    warned: false,
                }),
                wake,
                leds: AtomicU32::new(0),
                on_leds: Mutex::new(None),
            }),
        }
    }

    /// Queues `events` for the guest, all or none (send whole packets, each ended by
    /// `SYN_REPORT`, so the guest never sees half of one). Returns false, queuing nothing,
    /// when they do not fit in the [`QUEUE_CAPACITY`] events the queue holds (the guest is
    /// not taking events). Events queued while no driver runs the device are dropped when
    /// one starts.
    pub fn send(&self, events: &[InputEvent]) -> bool {
        {
            let mut p = lock(&self.shared.pending);
            if p.events.len() + events.len() > QUEUE_CAPACITY {
                if !p.warned {
                    p.warned = true;
                    log::warn!(
                        "input queue full ({} events): the guest is not taking input; refusing more",
                        p.events.len()
                    );
                }
                return false;
            }
            p.events.extend(events.iter().copied());
        }
        if let Some(w) = &self.shared.wake {
            let _ = w.write(1);
        }
        true
    }

    /// The guest's LED state: bit `LED_*` set when that LED is on.
    pub fn leds(&self) -> u32 {
        self.shared.leds.load(Ordering::SeqCst)
    }

    /// Calls `f` with the new LED state each time the guest changes it (from the device's
    /// worker thread: return quickly).
    pub fn on_leds(&self, f: impl Fn(u32) + Send + Sync + 'static) {
        *lock(&self.shared.on_leds) = Some(Box::new(f));
    }

    /// Events waiting for the guest.
    pub fn pending(&self) -> usize {
        lock(&self.shared.pending).events.len()
    }

    /// The eventfd that wakes the device when events arrive.
    pub(crate) fn wake_fd(&self) -> Option<&EventFd> {
        self.shared.wake.as_ref()
    }

    /// Drops every waiting event (a driver is starting: they were meant for no one).
    pub(crate) fn clear(&self) {
        let mut p = lock(&self.shared.pending);
        p.events.clear();
        p.warned = false;
    }

    /// Runs `f` on the waiting events (the device pops what it delivered).
    pub(crate) fn with_pending<R>(&self, f: impl FnOnce(&mut VecDeque<InputEvent>) -> R) -> R {
        let mut p = lock(&self.shared.pending);
        let r = f(&mut p.events);
        if p.events.len() < QUEUE_CAPACITY / 2 {
            p.warned = false;
        }
        r
    }

    /// Records an LED change from the guest.
    pub(crate) fn set_led(&self, code: u16, on: bool) {
        if code >= 32 {
            return;
        }
        let bit = 1u32 << code;
        let old = if on {
            self.shared.leds.fetch_or(bit, Ordering::SeqCst)
        } else {
            self.shared.leds.fetch_and(!bit, Ordering::SeqCst)
        };
        let new = if on { old | bit } else { old & !bit };
        if new != old {
            if let Some(f) = lock(&self.shared.on_leds).as_ref() {
                f(new);
            }
        }
    }
}
