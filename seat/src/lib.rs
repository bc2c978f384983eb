//! The seat: the terminal firmware's owner of the PC's screen, keyboards and pointers
//! while a user session runs.
//!
//! The session creates a [`Seat`], registers each appliance, and starts it. The seat
//! thread then presents the focused appliance's display (only damaged rectangles, at
//! most once per vblank, nothing at all when nothing changes), routes keyboard and
//! pointer input to it as Linux input events, and draws the terminal's own screens: the
//! menu behind the secure attention key (Ctrl+Alt+Delete, which no appliance ever
//! sees), the lock screen, and the text surface of console appliances. Ctrl+Alt+F1..F12
//! switch directly. At shutdown it blanks the screen, drops DRM master and every grab,
//! so the text login returns with nothing of the session visible.
//!
//! Modules, one job each: [`output`] (KMS, fbdev, memory), [`input`] (evdev devices,
//! grabs, hot-plug, the pointer model), [`keys`] (codes, chords, US keymap), [`focus`]
//! (held keys per appliance), [`screens`] (menu, lock, console), `rect` (damage
//! coalescing), `core` (the seat's state machine) and `thread` (its poll loop).
//! See `docs/seat.md`.

mod core;
pub mod focus;
mod font;
pub mod input;
pub mod keys;
pub mod output;
mod pixels;
mod rect;
pub mod screens;
mod thread;

pub use output::{MemoryOutput, MemoryProbe, Output};
pub use rect::{Damage, MAX_RECTS};

use crate::screens::console::Terminal;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A rectangle of pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A Linux input event (`struct input_event` without its time): type, code, value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

/// Pixels of an appliance's display, read when presenting (XRGB8888 into dst rows).
///
/// `copy_rect` writes the pixels of `rect` (already clipped to [`SurfaceSource::size`])
/// into `dst`: row `i` of the rectangle starts at `dst[i * dst_stride]`, 4 bytes a
/// pixel. `dst` begins at the rectangle's top-left pixel on the screen.
pub trait SurfaceSource: Send + Sync {
    fn size(&self) -> (u32, u32);
    fn copy_rect(&self, rect: Rect, dst: &mut [u8], dst_stride: usize);
}

/// Where an appliance's input goes (its virtio keyboard or tablet).
pub trait InputSink: Send + Sync {
    fn send(&self, events: &[InputEvent]);
    /// The appliance's keyboard LEDs (bit n = LED code n), to mirror on the PC's keyboard.
    fn leds(&self) -> u32 {
        0
    }
}

/// The session, as the seat needs it.
pub trait SessionControl: Send + Sync {
    fn user(&self) -> String;
    /// Checks the user's password for unlocking.
    fn unlock(&self, password: &str) -> bool;
    /// The person asked to log out (from the menu).
    fn logout(&self);
}

/// What an appliance shows and takes.
pub enum ApplianceKind {
    Graphical {
        keyboard: Arc<dyn InputSink>,
        tablet: Arc<dyn InputSink>,
    },
    Console {
        to_guest: Box<dyn std::io::Write + Send>,
    },
}

/// Why the seat could not open.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No KMS device with a connected monitor and no usable framebuffer: the session
    /// keeps its serial text console.
    #[error("no display: no KMS card with a connected monitor and no usable /dev/fb0")]
    NoDisplay,
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The device works in a way the seat does not support.
    #[error("{0}")]
    Unsupported(String),
}

/// A pointer image (premultiplied ARGB8888, `width` x `height`, as DRM cursor planes take
/// it) and its hot spot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CursorImage {
    pub width: u32,
    pub height: u32,
    pub hot_x: u32,
    pub hot_y: u32,
    pub pixels: Vec<u32>,
}

/// An appliance as VM threads and the seat thread share it.
pub(crate) struct AppShared {
    pub name: String,
    pub surface: Option<Arc<dyn SurfaceSource>>,
    /// The surface, cursor image or ended state changed: redraw it whole.
    pub changed: bool,
    pub damage: Damage,
    pub cursor: Option<Arc<CursorImage>>,
    pub cursor_changed: bool,
    pub terminal: Option<Terminal>,
    pub terminal_changed: bool,
    pub ended: Option<String>,
    pub leds_changed: bool,
}

/// The state behind the seat's one lock.
pub(crate) struct State {
    pub apps: Vec<AppShared>,
    /// The appliance whose own pixels are on screen: only its updates wake the seat.
    pub visible: Option<usize>,
    /// A wake-up is pending on the eventfd (so a flood of damage costs one write).
    pub woken: bool,
    pub injected: Vec<InputEvent>,
    pub shutdown: bool,
    /// Console grid size (columns, rows) for the screen.
    pub console_size: (usize, usize),
}

/// What VM threads, the seat thread and the session share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// An eventfd the seat thread polls: written when there is something to do.
    wake: OwnedFd,
    pub stats: StatsCounters,
}

#[derive(Default)]
pub(crate) struct StatsCounters {
    pub presents: AtomicU64,
    pub wakeups: AtomicU64,
    pub last_frame_ns: AtomicU64,
}

impl Shared {
    fn new(console_size: (usize, usize)) -> io::Result<Shared> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Shared {
            state: Mutex::new(State {
                apps: Vec::new(),
                visible: None,
                woken: false,
                injected: Vec::new(),
                shutdown: false,
                console_size,
            }),
            // SAFETY: fd was just created and is owned by nobody else.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
            stats: StatsCounters::default(),
        })
    }

    /// The state; a poisoned lock (a panic elsewhere) still gives it, since every field
    /// stays meaningful on its own.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the seat thread unless a wake-up is already pending.
    pub fn wake(&self, state: &mut State) {
        if state.woken {
            return;
        }
        state.woken = true;
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a local to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// The eventfd, for poll.
    pub fn wake_fd(&self) -> i32 {
        self.wake.as_raw_fd()
    }

    /// Empties the eventfd (the seat thread, before looking at the state).
    pub fn drain_wake(&self) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a local from our non-blocking eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// The seat, before it runs.
pub struct Seat {
    output: Box<dyn Output>,
    control: Arc<dyn SessionControl>,
    shared: Arc<Shared>,
    devices: Option<input::Devices>,
    kinds: Mutex<Vec<ApplianceKind>>,
}

impl Seat {
    /// Opens the display and input devices (KMS, else fbdev; all evdev devices grabbed). Error::NoDisplay when the PC has no display.
    pub fn open(control: Arc<dyn SessionControl>) -> Result<Seat, Error> {
        let output = <dyn Output>::open()?;
        let devices = match input::Devices::open() {
            Ok(d) => Some(d),
            Err(e) => {
                log::warn!("seat: no input devices: {e}");
                None
            }
        };
        let mut seat = Seat::build(output, control).map_err(|source| Error::Io {
            what: "creating the seat's eventfd".into(),
            source,
        })?;
        seat.devices = devices;
        Ok(seat)
    }

    /// For tests and the benchmark: any Output and no evdev devices.
    ///
    /// # Panics
    /// When the process cannot create an eventfd (out of file descriptors).
    pub fn with_output(output: Box<dyn Output>, control: Arc<dyn SessionControl>) -> Seat {
        Seat::build(output, control).expect("creating the seat's eventfd")
    }

    fn build(output: Box<dyn Output>, control: Arc<dyn SessionControl>) -> io::Result<Seat> {
        let (w, h) = output.size();
        let g = screens::Grid::for_screen(w, h, 0, 0);
        Ok(Seat {
            output,
            control,
            shared: Arc::new(Shared::new((g.cols, g.rows))?),
            devices: None,
            kinds: Mutex::new(Vec::new()),
        })
    }

    /// The monitor's size and EDID, for the appliances' virtual displays.
    pub fn mode(&self) -> (u32, u32) {
        self.output.size()
    }

    /// See [`Seat::mode`].
    pub fn edid(&self) -> Option<Vec<u8>> {
        self.output.edid()
    }

    /// Registers an appliance; the first one registered gets focus. Returns its handle.
    pub fn add_appliance(&self, name: &str, kind: ApplianceKind) -> ApplianceHandle {
        let mut state = self.shared.lock();
        let graphical = matches!(kind, ApplianceKind::Graphical { .. });
        let (cols, rows) = state.console_size;
        state.apps.push(AppShared {
            name: name.to_string(),
            surface: None,
            changed: false,
            damage: Damage::new(),
            cursor: None,
            cursor_changed: false,
            terminal: (!graphical).then(|| Terminal::new(cols, rows)),
            terminal_changed: false,
            ended: None,
            leds_changed: false,
        });
        let index = state.apps.len() - 1;
        self.kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(kind);
        log::info!(
            "seat: appliance {} is {name} ({})",
            index + 1,
            if graphical { "graphical" } else { "console" }
        );
        ApplianceHandle {
            shared: self.shared.clone(),
            index,
        }
    }

    /// Runs the seat (presenting, input, screens) in its own thread until `shutdown`.
    pub fn start(self) -> std::io::Result<SeatThread> {
        let kinds = self.kinds.into_inner().unwrap_or_else(|e| e.into_inner());
        let shared = self.shared.clone();
        let core = core::Core::new(self.output, self.control, self.shared, kinds);
        let devices = self.devices;
        let join = std::thread::Builder::new()
            .name("seat".into())
            .spawn(move || thread::run(core, devices))?;
        Ok(SeatThread {
            shared,
            join: Some(join),
        })
    }
}

/// An appliance's side of the seat; Send + Sync, cheap to clone; called from VM threads.
#[derive(Clone)]
pub struct ApplianceHandle {
    shared: Arc<Shared>,
    index: usize,
}

impl ApplianceHandle {
    fn with<R>(&self, f: impl FnOnce(&mut AppShared, bool) -> (R, bool)) -> R {
        let mut state = self.shared.lock();
        let visible = state.visible == Some(self.index);
        let Some(app) = state.apps.get_mut(self.index) else {
            unreachable!("appliance handles are only made for registered appliances")
        };
        let (r, wake) = f(app, visible);
        if wake {
            self.shared.wake(&mut state);
        }
        r
    }

    /// The appliance's display image (None: it has none yet / disabled).
    pub fn set_surface(&self, surface: Option<Arc<dyn SurfaceSource>>) {
        self.with(|app, visible| {
            app.surface = surface;
            app.changed = true;
            ((), visible)
        })
    }

    /// A rectangle of its display changed.
    ///
    /// Only the appliance on screen is woken for: the others are copied whole when
    /// they get focus, so their damage is not even kept.
    pub fn damage(&self, rect: Rect) {
        self.with(|app, visible| {
            if visible {
                app.damage.add(rect);
            }
            ((), visible)
        })
    }

    /// Pointer image (ARGB8888, w*h) with hot spot; None hides it. And pointer moves.
    ///
    /// `image` is (width, height, hot_x, hot_y, pixels). The seat draws the image in
    /// software at its own pointer position (it owns the absolute pointer); `x`, `y`
    /// are recorded but do not move it, see [`ApplianceHandle::move_cursor`].
    pub fn cursor(&self, image: Option<(u32, u32, u32, u32, Vec<u32>)>, x: u32, y: u32) {
        let image = image.and_then(|(width, height, hot_x, hot_y, pixels)| {
            let valid = width > 0
                && height > 0
                && width <= 512
                && height <= 512
                && pixels.len() == width as usize * height as usize;
            if !valid {
                log::debug!("seat: ignoring a {width}x{height} cursor image");
            }
            valid.then(|| {
                Arc::new(CursorImage {
                    width,
                    height,
                    hot_x: hot_x.min(width - 1),
                    hot_y: hot_y.min(height - 1),
                    pixels,
                })
            })
        });
        let _ = (x, y);
        self.with(|app, visible| {
            app.cursor = image;
            app.cursor_changed = true;
            ((), visible)
        })
    }

    /// The guest moved its pointer. The seat's pointer is absolute (a tablet) and owned
    /// by the seat, so a guest cannot warp it; the seat draws at its own position, which
    /// is ahead of the guest's echo of it. Accepted for completeness, ignored.
    pub fn move_cursor(&self, x: u32, y: u32) {
        let _ = (x, y);
    }

    /// Serial output of a console appliance.
    pub fn console_output(&self, bytes: &[u8]) {
        self.with(|app, visible| match app.terminal.as_mut() {
            Some(t) => {
                t.feed(bytes);
                app.terminal_changed = true;
                ((), visible)
            }
            None => ((), false),
        })
    }

    /// The appliance stopped (shows a line on its screen; stays in the list).
    pub fn ended(&self, why: &str) {
        log::info!("seat: appliance {} ended: {why}", self.index + 1);
        self.with(|app, _| {
            app.ended = Some(why.to_string());
            app.surface = None;
            app.cursor = None;
            app.changed = true;
            if let Some(t) = app.terminal.as_mut() {
                t.feed(format!("\r\n[{} stopped: {why}]\r\n", app.name).as_bytes());
                app.terminal_changed = true;
            }
            ((), true)
        })
    }

    /// The appliance's keyboard LEDs changed ([`InputSink::leds`]): mirror them on the
    /// PC's keyboards if it has focus.
    pub fn leds_changed(&self) {
        self.with(|app, visible| {
            app.leds_changed = true;
            ((), visible)
        })
    }
}

/// What the seat thread did, for tests, the benchmark and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames presented.
    pub presents: u64,
    /// Times the seat thread woke from poll.
    pub wakeups: u64,
    /// Time the last frame took to draw and present.
    pub last_frame: Duration,
}

/// The running seat.
pub struct SeatThread {
    shared: Arc<Shared>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl SeatThread {
    /// Clears the screen, releases the display and every grab, joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.shutdown = true;
            self.shared.wake(&mut state);
        }
        if let Some(join) = self.join.take() {
            if join.join().is_err() {
                log::error!("seat: the seat thread panicked");
            }
        }
    }

    /// For tests: synthetic input as if from a PC keyboard/pointer.
    ///
    /// Absolute pointer events (`EV_ABS` `ABS_X`/`ABS_Y`) are in tablet units
    /// (0..=32767).
    pub fn inject(&self, events: &[InputEvent]) {
        let mut state = self.shared.lock();
        state.injected.extend_from_slice(events);
        self.shared.wake(&mut state);
    }

    /// What the seat thread did so far.
    pub fn stats(&self) -> Stats {
        let s = &self.shared.stats;
        Stats {
            presents: s.presents.load(Ordering::SeqCst),
            wakeups: s.wakeups.load(Ordering::SeqCst),
            last_frame: Duration::from_nanos(s.last_frame_ns.load(Ordering::SeqCst)),
        }
    }
}

impl Drop for SeatThread {
    /// A seat thread dropped without `shutdown` still releases the screen and grabs.
    fn drop(&mut self) {
        if self.join.is_some() {
            self.stop();
        }
    }
}
