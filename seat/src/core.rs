//! The seat's state machine, run by the seat thread: which screen is shown, where input
//! goes, and drawing frames. It touches no device itself (the thread loop feeds it input
//! and polls for it), so the unit tests drive it through the public API with a memory
//! output.

use crate::focus::{syn, Held};
use crate::input::pointer::Pointer;
use crate::keys::{self, code::*, Chord, Modifiers};
use crate::screens::lock::{Lock, LockAction};
use crate::screens::menu::{Entry, Menu, MenuAction};
use crate::screens::{colors, Grid};
use crate::{
    pixels, ApplianceKind, CursorImage, Damage, InputEvent, InputSink, Output, Rect,
    SessionControl, Shared, SurfaceSource,
};
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Black, outside an appliance's display.
const BLACK: u32 = 0;

/// The seat thread's side of one appliance.
struct App {
    name: String,
    keyboard: Option<Arc<dyn InputSink>>,
    tablet: Option<Arc<dyn InputSink>>,
    to_guest: Option<Box<dyn Write + Send>>,
    held: Held,
    pointer: Pointer,
    surface: Option<Arc<dyn SurfaceSource>>,
    cursor: Option<Arc<CursorImage>>,
    ended: bool,
}

/// What is on screen.
enum Screen {
    /// The focused appliance.
    Appliance,
    Menu(Menu),
    Lock(Lock),
}

/// How the current screen is drawn.
enum Scene {
    Surface(Arc<dyn SurfaceSource>),
    Text(Grid),
}

/// The seat's state; see the module documentation.
pub(crate) struct Core {
    output: Box<dyn Output>,
    width: u32,
    height: u32,
    control: Arc<dyn SessionControl>,
    pub(crate) shared: Arc<Shared>,
    apps: Vec<App>,
    focus: usize,
    screen: Screen,
    mods: Modifiers,
    /// Keys that completed a seat chord: their repeats and release go nowhere.
    swallowed: BTreeSet<u16>,
    key_packet: Vec<InputEvent>,
    pointer_packet: Vec<InputEvent>,
    /// Screen rectangles to redraw from the scene.
    damage: Damage,
    /// The text grid on screen, when the screen is text.
    shown_grid: Option<Grid>,
    /// The text screen must be rebuilt and compared.
    text_dirty: bool,
    /// Where the pointer image was drawn last.
    cursor_drawn: Option<Rect>,
    /// The pointer moved or changed since the last frame.
    cursor_dirty: bool,
    last_present: Option<Instant>,
    /// LED state to write to the PC's keyboards.
    pub(crate) leds: Option<u32>,
}

impl Core {
    pub(crate) fn new(
        output: Box<dyn Output>,
        control: Arc<dyn SessionControl>,
        shared: Arc<Shared>,
        kinds: Vec<ApplianceKind>,
    ) -> Core {
        let (width, height) = output.size();
        let names: Vec<String> = shared.lock().apps.iter().map(|a| a.name.clone()).collect();
        let apps = kinds
            .into_iter()
            .zip(names)
            .map(|(kind, name)| {
                let (keyboard, tablet, to_guest) = match kind {
                    ApplianceKind::Graphical { keyboard, tablet } => {
                        (Some(keyboard), Some(tablet), None)
                    }
                    ApplianceKind::Console { to_guest } => (None, None, Some(to_guest)),
                };
                App {
                    name,
                    keyboard,
                    tablet,
                    to_guest,
                    held: Held::default(),
                    pointer: Pointer::default(),
                    surface: None,
                    cursor: None,
                    ended: false,
                }
            })
            .collect();
        let mut core = Core {
            output,
            width,
            height,
            control,
            shared,
            apps,
            focus: 0,
            screen: Screen::Appliance,
            mods: Modifiers::default(),
            swallowed: BTreeSet::new(),
            key_packet: Vec::new(),
            pointer_packet: Vec::new(),
            damage: Damage::new(),
            shown_grid: None,
            text_dirty: true,
            cursor_drawn: None,
            cursor_dirty: false,
            last_present: None,
            leds: None,
        };
        core.show();
        core
    }

    pub(crate) fn output(&mut self) -> &mut dyn Output {
        self.output.as_mut()
    }

    fn full(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// The screen or focus changed: everything is redrawn, and only the appliance now on
    /// screen may wake the seat with its damage.
    fn show(&mut self) {
        self.damage = Damage::new();
        self.damage.add(self.full());
        self.shown_grid = None;
        self.text_dirty = true;
        self.cursor_drawn = None;
        let visible = match self.screen {
            Screen::Appliance if !self.apps.is_empty() => Some(self.focus),
            _ => None,
        };
        let mut state = self.shared.lock();
        state.visible = visible;
        if let Some(app) = visible.and_then(|i| state.apps.get_mut(i)) {
            // Its pending damage is covered by the full redraw.
            app.damage = Damage::new();
        }
    }

    /// Takes what VM threads reported; true when the seat must stop.
    pub(crate) fn sync(&mut self) -> (bool, Vec<InputEvent>) {
        let mut state = self.shared.lock();
        state.woken = false;
        let injected = std::mem::take(&mut state.injected);
        let shutdown = state.shutdown;
        let on_screen = matches!(self.screen, Screen::Appliance);
        for (i, shared) in state.apps.iter_mut().enumerate() {
            let Some(app) = self.apps.get_mut(i) else {
                continue;
            };
            let focused = i == self.focus && on_screen;
            if shared.changed {
                shared.changed = false;
                app.surface = shared.surface.clone();
                app.ended = shared.ended.is_some();
                if focused {
                    self.damage.add(Rect::new(0, 0, self.width, self.height));
                    self.text_dirty = true;
                    self.cursor_drawn = None;
                }
            }
            if shared.cursor_changed {
                shared.cursor_changed = false;
                app.cursor = shared.cursor.clone();
                if focused {
                    self.cursor_dirty = true;
                }
            }
            if shared.terminal_changed {
                shared.terminal_changed = false;
                if focused {
                    self.text_dirty = true;
                }
            }
            if focused {
                for r in shared.damage.take() {
                    self.damage.add(r);
                }
                if shared.leds_changed {
                    self.leds = Some(app.keyboard.as_ref().map_or(0, |k| k.leds()));
                }
            }
            shared.leds_changed = false;
        }
        (shutdown, injected)
    }

    // ---- input ----

    /// One event from a PC keyboard or pointer (absolute axes already in tablet units).
    pub(crate) fn input(&mut self, ev: InputEvent) {
        match ev.kind {
            EV_SYN if ev.code == SYN_REPORT => self.flush_packets(),
            EV_KEY if keys::is_button(ev.code) => self.button(ev),
            EV_KEY => self.key(ev.code, ev.value),
            EV_REL => self.relative(ev),
            EV_ABS => self.absolute(ev),
            _ => {}
        }
    }

    fn focused_graphical(&mut self) -> Option<&mut App> {
        if !matches!(self.screen, Screen::Appliance) {
            return None;
        }
        self.apps.get_mut(self.focus).filter(|a| a.tablet.is_some())
    }

    fn button(&mut self, ev: InputEvent) {
        let code = if ev.code == BTN_TOUCH {
            BTN_LEFT
        } else {
            ev.code
        };
        if let Some(app) = self.focused_graphical() {
            if app.held.forward(code, ev.value) {
                self.pointer_packet.push(InputEvent { code, ..ev });
            }
        }
    }

    fn relative(&mut self, ev: InputEvent) {
        let (w, h) = (self.width, self.height);
        let Some(app) = self.focused_graphical() else {
            return;
        };
        match ev.code {
            REL_X => app.pointer.move_relative(ev.value, 0, w, h),
            REL_Y => app.pointer.move_relative(0, ev.value, w, h),
            REL_WHEEL | REL_HWHEEL => {
                self.pointer_packet.push(ev);
                return;
            }
            _ => return,
        }
        self.pointer_moved();
    }

    fn absolute(&mut self, ev: InputEvent) {
        let Some(app) = self.focused_graphical() else {
            return;
        };
        match ev.code {
            ABS_X => app.pointer.set_x(ev.value),
            ABS_Y => app.pointer.set_y(ev.value),
            _ => return,
        }
        self.pointer_moved();
    }

    /// The pointer packet carries the new absolute position (one ABS_X and one ABS_Y).
    fn pointer_moved(&mut self) {
        let (x, y) = self.apps[self.focus].pointer.position();
        self.pointer_packet
            .retain(|e| !(e.kind == EV_ABS && (e.code == ABS_X || e.code == ABS_Y)));
        for (code, value) in [(ABS_X, x), (ABS_Y, y)] {
            self.pointer_packet.push(InputEvent {
                kind: EV_ABS,
                code,
                value,
            });
        }
        if self.apps[self.focus].cursor.is_some() {
            self.cursor_dirty = true;
        }
    }

    /// Sends the packets gathered since the last SYN_REPORT.
    fn flush_packets(&mut self) {
        let keys = std::mem::take(&mut self.key_packet);
        let pointer = std::mem::take(&mut self.pointer_packet);
        let Some(app) = self.apps.get(self.focus) else {
            return;
        };
        for (mut packet, sink) in [(keys, &app.keyboard), (pointer, &app.tablet)] {
            if let (false, Some(sink)) = (packet.is_empty(), sink) {
                packet.push(syn());
                sink.send(&packet);
            }
        }
    }

    /// Key-ups for everything the focused appliance holds (it is losing the keyboard).
    fn release_focused(&mut self) {
        self.flush_packets();
        let Some(app) = self.apps.get_mut(self.focus) else {
            return;
        };
        let (keys, buttons) = app.held.release_all();
        if let (false, Some(k)) = (keys.is_empty(), &app.keyboard) {
            k.send(&keys);
        }
        if let (false, Some(t)) = (buttons.is_empty(), &app.tablet) {
            t.send(&buttons);
        }
    }

    fn key(&mut self, code: u16, value: i32) {
        let chord = keys::chord(&self.mods, code, value);
        self.mods.update(code, value);
        if let Some(chord) = chord {
            self.swallowed.insert(code);
            match chord {
                Chord::SecureAttention => {
                    log::info!("seat: secure attention key");
                    self.open_menu();
                }
                Chord::Switch(n) if n < self.apps.len() => self.switch_to(n),
                Chord::Switch(n) => log::debug!("seat: no appliance {}", n + 1),
            }
            return;
        }
        if self.swallowed.contains(&code) {
            if value == 0 {
                self.swallowed.remove(&code);
            }
            return;
        }
        let count = self.apps.len();
        match &mut self.screen {
            Screen::Appliance => self.key_to_appliance(code, value),
            Screen::Menu(menu) if value == 1 => {
                let action = menu.key(code, &self.mods, count);
                self.text_dirty = true;
                self.menu_action(action);
            }
            Screen::Lock(lock) if value == 1 => {
                let action = lock.key(code, &self.mods);
                self.text_dirty = true;
                if let LockAction::Check(password) = action {
                    if self.control.unlock(&password) {
                        log::info!("seat: unlocked");
                        self.screen = Screen::Appliance;
                        self.regain_focus();
                    } else {
                        log::info!("seat: wrong password at the lock screen");
                        lock.wrong();
                    }
                }
            }
            _ => {}
        }
    }

    fn key_to_appliance(&mut self, code: u16, value: i32) {
        let mods = self.mods;
        let Some(app) = self.apps.get_mut(self.focus) else {
            return;
        };
        if app.keyboard.is_some() {
            if app.held.forward(code, value) {
                self.key_packet.push(InputEvent {
                    kind: EV_KEY,
                    code,
                    value,
                });
            }
            return;
        }
        if value == 0 {
            return;
        }
        // A console appliance: Shift+PageUp/PageDown scroll, other keys become bytes.
        if mods.shift() && (code == KEY_PAGEUP || code == KEY_PAGEDOWN) {
            let mut state = self.shared.lock();
            if let Some(t) = state
                .apps
                .get_mut(self.focus)
                .and_then(|a| a.terminal.as_mut())
            {
                let rows = t.rows() as isize;
                t.scroll(if code == KEY_PAGEUP { rows } else { -rows });
            }
            self.text_dirty = true;
            return;
        }
        let Some(bytes) = keys::console_bytes(code, &mods) else {
            return;
        };
        {
            let mut state = self.shared.lock();
            if let Some(t) = state
                .apps
                .get_mut(self.focus)
                .and_then(|a| a.terminal.as_mut())
            {
                t.scroll_to_live();
            }
        }
        self.text_dirty = true;
        if let Some(w) = app.to_guest.as_mut() {
            if let Err(e) = w.write_all(&bytes).and_then(|_| w.flush()) {
                log::debug!("seat: {}: console input: {e}", app.name);
            }
        }
    }

    fn menu_action(&mut self, action: MenuAction) {
        match action {
            MenuAction::None => {}
            MenuAction::Switch(n) => self.switch_to(n),
            MenuAction::Back => {
                self.screen = Screen::Appliance;
                self.regain_focus();
            }
            MenuAction::Lock => {
                log::info!("seat: locked");
                self.screen = Screen::Lock(Lock::new());
                self.show();
            }
            MenuAction::Logout => {
                log::info!("seat: log out asked from the menu");
                self.control.logout();
            }
            MenuAction::SendCtrlAltDel => {
                if let Some(k) = self.apps.get(self.focus).and_then(|a| a.keyboard.as_ref()) {
                    let ev = |code, value| InputEvent {
                        kind: EV_KEY,
                        code,
                        value,
                    };
                    k.send(&[
                        ev(KEY_LEFTCTRL, 1),
                        ev(KEY_LEFTALT, 1),
                        ev(KEY_DELETE, 1),
                        syn(),
                        ev(KEY_DELETE, 0),
                        ev(KEY_LEFTALT, 0),
                        ev(KEY_LEFTCTRL, 0),
                        syn(),
                    ]);
                }
                self.screen = Screen::Appliance;
                self.regain_focus();
            }
        }
    }

    /// The secure attention key: the focused appliance loses the keyboard (key-ups for
    /// all it holds, so it never sees a whole Ctrl+Alt+Delete) and the menu shows.
    fn open_menu(&mut self) {
        if matches!(self.screen, Screen::Lock(_)) {
            return;
        }
        self.release_focused();
        self.screen = Screen::Menu(Menu::new(self.focus));
        self.show();
    }

    /// Focus to appliance `n`.
    fn switch_to(&mut self, n: usize) {
        if matches!(self.screen, Screen::Lock(_)) {
            return;
        }
        self.release_focused();
        log::info!("seat: focus to appliance {}", n + 1);
        self.focus = n;
        self.screen = Screen::Appliance;
        self.regain_focus();
    }

    /// The focused appliance is on screen again: redraw it, mirror its LEDs.
    fn regain_focus(&mut self) {
        self.show();
        let leds = self
            .apps
            .get(self.focus)
            .and_then(|a| a.keyboard.as_ref())
            .map_or(0, |k| k.leds());
        self.leds = Some(leds);
    }

    // ---- drawing ----

    /// The grid of the current text screen, or the appliance's surface.
    fn scene(&self) -> Scene {
        let user = || self.control.user();
        match &self.screen {
            Screen::Menu(menu) => {
                let entries: Vec<Entry> = self
                    .apps
                    .iter()
                    .map(|a| Entry {
                        name: a.name.clone(),
                        graphical: a.keyboard.is_some(),
                        ended: a.ended,
                    })
                    .collect();
                Scene::Text(menu.grid(&user(), &entries, self.width, self.height))
            }
            Screen::Lock(lock) => Scene::Text(lock.grid(&user(), self.width, self.height)),
            Screen::Appliance => {
                let Some(app) = self.apps.get(self.focus) else {
                    let mut g =
                        Grid::for_screen(self.width, self.height, colors::TEXT, colors::SEAT_BG);
                    g.put(2, 1, "No appliances.", colors::TEXT, colors::SEAT_BG);
                    return Scene::Text(g);
                };
                if app.keyboard.is_none() {
                    let state = self.shared.lock();
                    if let Some(t) = state.apps.get(self.focus).and_then(|a| a.terminal.as_ref()) {
                        return Scene::Text(t.grid());
                    }
                }
                if let (Some(s), false) = (&app.surface, app.ended) {
                    return Scene::Surface(s.clone());
                }
                let mut g = Grid::for_screen(self.width, self.height, colors::TEXT, BLACK);
                let line = match self
                    .shared
                    .lock()
                    .apps
                    .get(self.focus)
                    .and_then(|a| a.ended.clone())
                {
                    Some(why) => format!("{} stopped: {why}", app.name),
                    None => format!("{}: no display yet", app.name),
                };
                g.put(2, 1, &line, colors::TEXT, BLACK);
                Scene::Text(g)
            }
        }
    }

    /// Whether a frame is waiting to be drawn.
    pub(crate) fn has_work(&self) -> bool {
        !self.damage.is_empty() || self.text_dirty || self.cursor_dirty
    }

    /// When the next frame may be drawn: `None` when there is nothing to draw or the
    /// output's event will say (a flip in flight, unless the output gives a time to look
    /// again); `Some(0)` for now.
    pub(crate) fn next_frame_in(&self) -> Option<Duration> {
        if !self.has_work() {
            return None;
        }
        if !self.output.can_present() {
            return self.output.present_retry_in();
        }
        match (self.output.frame_interval(), self.last_present) {
            (Some(interval), Some(last)) => Some(interval.saturating_sub(last.elapsed())),
            _ => Some(Duration::ZERO),
        }
    }

    /// Draws and presents a frame if one is due.
    pub(crate) fn frame(&mut self) {
        if self.next_frame_in() != Some(Duration::ZERO) {
            return;
        }
        let started = Instant::now();
        let scene = self.scene();
        if let Scene::Text(grid) = &scene {
            if self.text_dirty {
                let rows = match &self.shown_grid {
                    Some(shown) => grid.changed_rows(shown),
                    None => (0..grid.rows).collect(),
                };
                for r in rows {
                    self.damage.add(grid.row_rect(r, self.width, self.height));
                }
            }
        }
        self.text_dirty = false;
        // The pointer: where it was and where it is need redrawing.
        let cursor_rect = match &scene {
            Scene::Surface(_) => self.cursor_rect(),
            Scene::Text(_) => None,
        };
        if self.cursor_dirty || cursor_rect != self.cursor_drawn {
            if let Some(old) = self.cursor_drawn {
                self.damage.add(old);
            }
            if let Some(new) = cursor_rect {
                self.damage.add(new);
            }
        }
        self.cursor_dirty = false;
        if let Some(c) = cursor_rect {
            if self.damage.intersects(&c) {
                self.damage.add(c);
            }
        }
        let rects: Vec<Rect> = self
            .damage
            .take()
            .into_iter()
            .map(|r| r.clip(self.width, self.height))
            .filter(|r| !r.is_empty())
            .collect();
        if rects.is_empty() {
            return;
        }
        let (width, height) = (self.width, self.height);
        let stride = self.output.stride();
        let cursor = self.apps.get(self.focus).and_then(|a| a.cursor.clone());
        let position = self.apps.get(self.focus).map(|a| a.pointer);
        let buf = self.output.back_buffer();
        match &scene {
            Scene::Surface(surface) => {
                for r in &rects {
                    copy_surface(surface.as_ref(), *r, buf, stride);
                }
                if let (Some(c), Some(image), Some(p)) = (cursor_rect, cursor, position) {
                    let (px, py) = p.on_screen(width, height);
                    draw_cursor(surface.as_ref(), &image, px, py, c, buf, stride);
                }
            }
            Scene::Text(grid) => {
                for r in &rects {
                    grid.draw(buf, stride, *r, width, height);
                }
                self.shown_grid = Some(grid.clone());
            }
        }
        self.cursor_drawn = cursor_rect;
        if let Err(e) = self.output.present(&rects) {
            log::error!("seat: presenting: {e}");
        }
        self.last_present = Some(Instant::now());
        let stats = &self.shared.stats;
        stats.presents.fetch_add(1, Ordering::SeqCst);
        stats
            .last_frame_ns
            .store(started.elapsed().as_nanos() as u64, Ordering::SeqCst);
    }

    /// Where the focused appliance's pointer image goes, clipped to the screen.
    fn cursor_rect(&self) -> Option<Rect> {
        let app = self.apps.get(self.focus)?;
        let image = app.cursor.as_ref()?;
        let (px, py) = app.pointer.on_screen(self.width, self.height);
        let x = i64::from(px) - i64::from(image.hot_x);
        let y = i64::from(py) - i64::from(image.hot_y);
        let x0 = x.max(0);
        let y0 = y.max(0);
        let x1 = (x + i64::from(image.width)).min(i64::from(self.width));
        let y1 = (y + i64::from(image.height)).min(i64::from(self.height));
        (x1 > x0 && y1 > y0)
            .then(|| Rect::new(x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32))
    }

    /// Key-ups to the focused appliance and black on screen, at shutdown.
    pub(crate) fn finish(&mut self) {
        self.release_focused();
        self.output.release();
    }
}

/// Copies `rect` of the screen from an appliance's surface (black where the surface
/// does not reach).
fn copy_surface(surface: &dyn SurfaceSource, rect: Rect, buf: &mut [u8], stride: usize) {
    let (sw, sh) = surface.size();
    let inside = rect.clip(sw, sh);
    if !inside.is_empty() {
        let at = inside.y as usize * stride + inside.x as usize * 4;
        let needed = (inside.height as usize - 1) * stride + inside.width as usize * 4;
        if let Some(dst) = buf.get_mut(at..).filter(|d| d.len() >= needed) {
            surface.copy_rect(inside, dst, stride);
        }
    }
    if inside != rect {
        // The parts of `rect` right of and below the surface.
        let right = Rect::new(sw, rect.y, rect.right().saturating_sub(sw), rect.height);
        let below = Rect::new(rect.x, sh, rect.width, rect.bottom().saturating_sub(sh));
        for part in [right.intersect(&rect), below.intersect(&rect)] {
            if !part.is_empty() {
                pixels::fill_rect(buf, stride, part, BLACK);
            }
        }
    }
}

/// Draws the pointer image over the surface in `rect` (its clipped place on screen):
/// the surface pixels under it are read from the surface (never from the output, which
/// may be slow to read), blended with the image, and written once.
fn draw_cursor(
    surface: &dyn SurfaceSource,
    image: &CursorImage,
    px: u32,
    py: u32,
    rect: Rect,
    buf: &mut [u8],
    stride: usize,
) {
    let tmp_stride = rect.width as usize * 4;
    let mut tmp = vec![0u8; tmp_stride * rect.height as usize];
    let (sw, sh) = surface.size();
    let inside = rect.clip(sw, sh);
    if !inside.is_empty() {
        let off = (inside.y - rect.y) as usize * tmp_stride + (inside.x - rect.x) as usize * 4;
        surface.copy_rect(inside, &mut tmp[off..], tmp_stride);
    }
    let origin_x = i64::from(px) - i64::from(image.hot_x);
    let origin_y = i64::from(py) - i64::from(image.hot_y);
    for row in 0..rect.height {
        for col in 0..rect.width {
            let ix = (i64::from(rect.x + col) - origin_x) as usize;
            let iy = (i64::from(rect.y + row) - origin_y) as usize;
            let Some(&argb) = image.pixels.get(iy * image.width as usize + ix) else {
                continue;
            };
            let at = row as usize * tmp_stride + col as usize * 4;
            let under = pixels::pixel(&tmp, tmp_stride, col, row).unwrap_or(0);
            let out = pixels::over_premultiplied(argb, under);
            tmp[at..at + 4].copy_from_slice(&out.to_le_bytes());
        }
    }
    pixels::copy_rect_at(&tmp, tmp_stride, buf, stride, rect);
}
