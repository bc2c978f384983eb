//! The seat through its public API, with a memory output and injected input.

use seat::keys::code::*;
use seat::screens::{colors, Grid};
use seat::{
    ApplianceKind, InputEvent, InputSink, MemoryOutput, MemoryProbe, Rect, Seat, SeatThread,
    SessionControl, SurfaceSource,
};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const W: u32 = 320;
const H: u32 = 200;

/// A display of one colour that counts the pixels copied out of it.
struct Pattern {
    size: (u32, u32),
    color: AtomicU32,
    copied: AtomicU64,
}

impl Pattern {
    fn new(w: u32, h: u32, color: u32) -> Arc<Pattern> {
        Arc::new(Pattern {
            size: (w, h),
            color: AtomicU32::new(color),
            copied: AtomicU64::new(0),
        })
    }
    fn copied(&self) -> u64 {
        self.copied.load(Ordering::SeqCst)
    }
}

impl SurfaceSource for Pattern {
    fn size(&self) -> (u32, u32) {
        self.size
    }
    fn copy_rect(&self, rect: Rect, dst: &mut [u8], dst_stride: usize) {
        let px = self.color.load(Ordering::SeqCst).to_le_bytes();
        for row in 0..rect.height as usize {
            let line = &mut dst[row * dst_stride..row * dst_stride + rect.width as usize * 4];
            for p in line.chunks_exact_mut(4) {
                p.copy_from_slice(&px);
            }
        }
        self.copied.fetch_add(rect.area(), Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<InputEvent>>,
    leds: AtomicU32,
}

impl Recorder {
    fn take(&self) -> Vec<InputEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
    fn seen(&self) -> Vec<InputEvent> {
        self.events.lock().unwrap().clone()
    }
}

impl InputSink for Recorder {
    fn send(&self, events: &[InputEvent]) {
        self.events.lock().unwrap().extend_from_slice(events);
    }
    fn leds(&self) -> u32 {
        self.leds.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Control {
    tried: Mutex<Vec<String>>,
    logged_out: AtomicBool,
}

impl SessionControl for Control {
    fn user(&self) -> String {
        "ann".into()
    }
    fn unlock(&self, password: &str) -> bool {
        self.tried.lock().unwrap().push(password.into());
        password == "secret"
    }
    fn logout(&self) {
        self.logged_out.store(true, Ordering::SeqCst);
    }
}

/// A writer other threads can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the seat has been quiet (no present) for a while.
fn settle(probe: &MemoryProbe) {
    let mut last = probe.presents();
    loop {
        std::thread::sleep(Duration::from_millis(60));
        let now = probe.presents();
        if now == last {
            return;
        }
        last = now;
    }
}

fn key(code: u16, value: i32) -> [InputEvent; 2] {
    [
        InputEvent {
            kind: EV_KEY,
            code,
            value,
        },
        InputEvent {
            kind: EV_SYN,
            code: SYN_REPORT,
            value: 0,
        },
    ]
}

fn press(t: &SeatThread, code: u16) {
    t.inject(&key(code, 1));
    t.inject(&key(code, 0));
}

fn chord(t: &SeatThread, keys: &[u16]) {
    for &k in keys {
        t.inject(&key(k, 1));
    }
    for &k in keys.iter().rev() {
        t.inject(&key(k, 0));
    }
}

struct Graphical {
    pattern: Arc<Pattern>,
    keyboard: Arc<Recorder>,
    tablet: Arc<Recorder>,
    handle: seat::ApplianceHandle,
}

fn graphical(seat: &Seat, name: &str, color: u32) -> Graphical {
    let keyboard = Arc::new(Recorder::default());
    let tablet = Arc::new(Recorder::default());
    let handle = seat.add_appliance(
        name,
        ApplianceKind::Graphical {
            keyboard: keyboard.clone(),
            tablet: tablet.clone(),
        },
    );
    let pattern = Pattern::new(W, H, color);
    handle.set_surface(Some(pattern.clone()));
    Graphical {
        pattern,
        keyboard,
        tablet,
        handle,
    }
}

fn new_seat() -> (Seat, MemoryProbe, Arc<Control>) {
    let (out, probe) = MemoryOutput::new(W, H);
    let control = Arc::new(Control::default());
    (
        Seat::with_output(Box::new(out), control.clone()),
        probe,
        control,
    )
}

const RED: u32 = 0x00ff_0000;
const GREEN: u32 = 0x0000_ff00;

#[test]
fn first_appliance_is_shown_and_only_damaged_rects_are_copied() {
    let (seat, probe, _) = new_seat();
    assert_eq!(seat.mode(), (W, H));
    let a = graphical(&seat, "desk", RED);
    let t = seat.start().unwrap();
    wait_until("first frame", || probe.pixel(5, 5) == RED);
    settle(&probe);
    assert_eq!(
        a.pattern.copied(),
        u64::from(W * H),
        "one full copy at start"
    );
    let before = probe.presents();
    a.pattern.copied.store(0, Ordering::SeqCst);
    a.pattern.color.store(GREEN, Ordering::SeqCst);
    let damaged = Rect::new(10, 20, 30, 5);
    for _ in 0..50 {
        a.handle.damage(damaged);
    }
    wait_until("damage shown", || probe.pixel(10, 20) == GREEN);
    settle(&probe);
    assert_eq!(probe.pixel(39, 24), GREEN);
    assert_eq!(probe.pixel(40, 24), RED, "right of the damage");
    assert_eq!(probe.pixel(10, 25), RED, "below the damage");
    let presents = probe.presents() - before;
    assert!(
        (1..=2).contains(&presents),
        "{presents} presents for one burst"
    );
    assert_eq!(a.pattern.copied(), damaged.area() * presents);
    // Many scattered rects coalesce into a bounded list.
    for i in 0..100 {
        a.handle.damage(Rect::new(i * 3 % W, i * 2 % H, 2, 2));
    }
    settle(&probe);
    assert!(probe
        .damage()
        .iter()
        .all(|d| d.len() <= seat::MAX_RECTS + 2));
    t.shutdown();
    assert_eq!(probe.pixel(5, 5), 0, "black after shutdown");
}

#[test]
fn an_idle_seat_presents_nothing_and_does_not_wake() {
    let (seat, probe, _) = new_seat();
    let _a = graphical(&seat, "desk", RED);
    let t = seat.start().unwrap();
    wait_until("first frame", || probe.presents() > 0);
    settle(&probe);
    let before = t.stats();
    std::thread::sleep(Duration::from_millis(400));
    let after = t.stats();
    assert_eq!(after.presents, before.presents);
    assert_eq!(after.wakeups, before.wakeups);
    t.shutdown();
}

#[test]
fn background_damage_costs_nothing_and_a_switch_is_one_full_copy() {
    let (seat, probe, _) = new_seat();
    let a = graphical(&seat, "one", RED);
    let b = graphical(&seat, "two", GREEN);
    let t = seat.start().unwrap();
    wait_until("first frame", || probe.pixel(0, 0) == RED);
    settle(&probe);
    let stats = t.stats();
    for _ in 0..20 {
        b.handle.damage(Rect::new(0, 0, 10, 10));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        t.stats().wakeups,
        stats.wakeups,
        "background damage woke the seat"
    );
    assert_eq!(b.pattern.copied(), 0);
    a.pattern.copied.store(0, Ordering::SeqCst);
    let presents = probe.presents();

    t.inject(&key(KEY_LEFTCTRL, 1));
    t.inject(&key(KEY_LEFTALT, 1));
    t.inject(&key(KEY_F1 + 1, 1));
    wait_until("switched", || probe.pixel(0, 0) == GREEN);
    settle(&probe);
    assert_eq!(probe.presents() - presents, 1, "one present for the switch");
    assert_eq!(b.pattern.copied(), u64::from(W * H), "one full copy");
    assert_eq!(a.pattern.copied(), 0);
    // The old appliance saw Ctrl and Alt go down, then up; never F2.
    let seen = a.keyboard.seen();
    assert!(
        seen.iter()
            .all(|e| e.code != KEY_F1 + 1 || e.kind != EV_KEY),
        "{seen:?}"
    );
    let ups: Vec<u16> = seen
        .iter()
        .filter(|e| e.kind == EV_KEY && e.value == 0)
        .map(|e| e.code)
        .collect();
    assert_eq!(ups, vec![KEY_LEFTCTRL, KEY_LEFTALT]);
    assert_eq!(seen.last().map(|e| e.kind), Some(EV_SYN));
    // Releasing the chord reaches nobody: the new appliance never saw those keys go down.
    t.inject(&key(KEY_F1 + 1, 0));
    t.inject(&key(KEY_LEFTALT, 0));
    t.inject(&key(KEY_LEFTCTRL, 0));
    press(&t, KEY_A);
    wait_until("key to the new appliance", || {
        b.keyboard
            .seen()
            .iter()
            .any(|e| e.code == KEY_A && e.value == 0)
    });
    let got: Vec<(u16, i32)> = b
        .keyboard
        .seen()
        .iter()
        .filter(|e| e.kind == EV_KEY)
        .map(|e| (e.code, e.value))
        .collect();
    assert_eq!(got, vec![(KEY_A, 1), (KEY_A, 0)]);
    // Ctrl+Alt+F9: no such appliance, nothing happens.
    chord(&t, &[KEY_RIGHTCTRL, KEY_RIGHTALT, KEY_F1 + 8]);
    settle(&probe);
    assert_eq!(probe.pixel(0, 0), GREEN);
    t.shutdown();
}

#[test]
fn the_secure_attention_key_never_reaches_the_appliance() {
    let (seat, probe, control) = new_seat();
    let a = graphical(&seat, "desk", RED);
    let t = seat.start().unwrap();
    wait_until("first frame", || probe.pixel(0, 0) == RED);
    t.inject(&key(KEY_LEFTCTRL, 1));
    t.inject(&key(KEY_RIGHTALT, 1));
    t.inject(&key(KEY_DELETE, 1));
    t.inject(&key(KEY_DELETE, 2));
    t.inject(&key(KEY_DELETE, 0));
    t.inject(&key(KEY_RIGHTALT, 0));
    t.inject(&key(KEY_LEFTCTRL, 0));
    wait_until("menu shown", || probe.pixel(0, 0) == colors::SEAT_BG);
    settle(&probe);
    let seen: Vec<(u16, u16, i32)> = a
        .keyboard
        .take()
        .iter()
        .map(|e| (e.kind, e.code, e.value))
        .collect();
    assert_eq!(
        seen,
        vec![
            (EV_KEY, KEY_LEFTCTRL, 1),
            (EV_SYN, SYN_REPORT, 0),
            (EV_KEY, KEY_RIGHTALT, 1),
            (EV_SYN, SYN_REPORT, 0),
            (EV_KEY, KEY_LEFTCTRL, 0),
            (EV_KEY, KEY_RIGHTALT, 0),
            (EV_SYN, SYN_REPORT, 0),
        ]
    );
    // The menu is the seat's: nothing of the appliance's pattern on screen.
    let frame = probe.frame();
    assert!(frame
        .chunks(4)
        .all(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) != RED));
    // Typing in the menu reaches nobody.
    press(&t, KEY_A);
    // C: Ctrl+Alt+Delete to the appliance, on purpose, then back to it.
    press(&t, KEY_C);
    wait_until("back to the appliance", || probe.pixel(0, 0) == RED);
    let sent: Vec<(u16, i32)> = a
        .keyboard
        .take()
        .iter()
        .filter(|e| e.kind == EV_KEY)
        .map(|e| (e.code, e.value))
        .collect();
    assert_eq!(
        sent,
        vec![
            (KEY_LEFTCTRL, 1),
            (KEY_LEFTALT, 1),
            (KEY_DELETE, 1),
            (KEY_DELETE, 0),
            (KEY_LEFTALT, 0),
            (KEY_LEFTCTRL, 0)
        ]
    );
    // Menu, Esc: back; the C key's release went nowhere.
    chord(&t, &[KEY_LEFTCTRL, KEY_LEFTALT, KEY_DELETE]);
    wait_until("menu again", || probe.pixel(0, 0) == colors::SEAT_BG);
    press(&t, KEY_ESC);
    wait_until("back again", || probe.pixel(0, 0) == RED);
    // Log out needs confirming.
    chord(&t, &[KEY_LEFTCTRL, KEY_LEFTALT, KEY_DELETE]);
    press(&t, KEY_O);
    press(&t, KEY_N);
    press(&t, KEY_O);
    press(&t, KEY_Y);
    wait_until("logged out", || control.logged_out.load(Ordering::SeqCst));
    settle(&probe);
    assert!(a
        .keyboard
        .seen()
        .iter()
        .all(|e| e.code != KEY_DELETE && e.code != KEY_O));
    t.shutdown();
}

#[test]
fn the_lock_screen_needs_the_password() {
    let (seat, probe, control) = new_seat();
    let a = graphical(&seat, "desk", RED);
    a.keyboard.leds.store(0b10, Ordering::SeqCst);
    let t = seat.start().unwrap();
    wait_until("first frame", || probe.pixel(0, 0) == RED);
    chord(&t, &[KEY_LEFTCTRL, KEY_LEFTALT, KEY_DELETE]);
    press(&t, KEY_L);
    let type_word = |word: &str| {
        for c in word.chars() {
            let code = match c {
                's' => 31,
                'e' => 18,
                'c' => 46,
                'r' => 19,
                't' => 20,
                'x' => 45,
                _ => unreachable!(),
            };
            press(&t, code);
        }
        press(&t, KEY_ENTER);
    };
    type_word("sex");
    wait_until("first try", || control.tried.lock().unwrap().len() == 1);
    // Damage from the appliance while locked shows nothing of it.
    a.handle.damage(Rect::new(0, 0, W, H));
    settle(&probe);
    let frame = probe.frame();
    assert!(frame
        .chunks(4)
        .all(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) != RED));
    assert_eq!(probe.pixel(0, 0), colors::SEAT_BG);
    // Ctrl+Alt+F1 does not unlock either.
    chord(&t, &[KEY_LEFTCTRL, KEY_LEFTALT, KEY_F1]);
    type_word("secret");
    wait_until("unlocked", || probe.pixel(0, 0) == RED);
    assert_eq!(
        *control.tried.lock().unwrap(),
        vec!["sex".to_string(), "secret".into()]
    );
    assert!(a
        .keyboard
        .seen()
        .iter()
        .all(|e| e.code != 31 && e.code != KEY_ENTER));
    t.shutdown();
}

#[test]
fn a_console_appliance_is_drawn_as_text_and_gets_bytes() {
    let (seat, probe, _) = new_seat();
    let input = Shared::default();
    let h = seat.add_appliance(
        "router",
        ApplianceKind::Console {
            to_guest: Box::new(input.clone()),
        },
    );
    h.console_output(b"Hi\r\n");
    let t = seat.start().unwrap();
    wait_until("first frame", || probe.presents() > 0);
    settle(&probe);
    // The cell at (0, 0) holds exactly the glyph the seat's font draws for 'H'.
    let mut expected = Grid::for_screen(W, H, colors::CONSOLE_FG, colors::CONSOLE_BG);
    expected.put(0, 0, "Hi", colors::CONSOLE_FG, colors::CONSOLE_BG);
    let stride = W as usize * 4;
    let mut buf = vec![0u8; stride * H as usize];
    expected.draw(&mut buf, stride, Rect::new(0, 0, W, 20), W, H);
    let frame = probe.frame();
    let cell = |b: &[u8]| -> Vec<u8> {
        (0..20)
            .flat_map(|y| b[y * stride..y * stride + 10 * 4].to_vec())
            .collect()
    };
    assert_eq!(cell(&frame), cell(&buf));
    assert!(
        cell(&frame).chunks(4).any(|p| p[0] > 0x80),
        "the glyph has ink"
    );
    // Output while shown appears; keys become bytes.
    h.console_output(b"\x1b[2J\x1b[Hok");
    wait_until("cleared", || {
        probe.frame()[..stride * 20] != frame[..stride * 20]
    });
    t.inject(&key(KEY_LEFTSHIFT, 1));
    press(&t, KEY_A);
    t.inject(&key(KEY_LEFTSHIFT, 0));
    press(&t, KEY_ENTER);
    press(&t, KEY_UP);
    wait_until("bytes", || input.0.lock().unwrap().len() >= 5);
    assert_eq!(&*input.0.lock().unwrap(), b"A\r\x1b[A");
    h.ended("powered off");
    settle(&probe);
    t.shutdown();
}

#[test]
fn the_pointer_is_absolute_clamped_and_drawn() {
    let (seat, probe, _) = new_seat();
    let a = graphical(&seat, "desk", RED);
    let arrow = vec![0xff00_00ffu32; 4 * 4];
    a.handle.cursor(Some((4, 4, 0, 0, arrow)), 0, 0);
    let t = seat.start().unwrap();
    wait_until("first frame", || probe.presents() > 0);
    // The pointer starts in the middle; its image is drawn there.
    wait_until("cursor drawn", || probe.pixel(W / 2, H / 2) == 0x0000_00ff);
    let rel = |code, value| InputEvent {
        kind: EV_REL,
        code,
        value,
    };
    let syn = InputEvent {
        kind: EV_SYN,
        code: SYN_REPORT,
        value: 0,
    };
    t.inject(&[rel(REL_X, 2), rel(REL_Y, -1), syn]);
    wait_until("tablet event", || !a.tablet.seen().is_empty());
    let got = a.tablet.take();
    let step_x = 32768 / W as i32;
    let step_y = 32768 / H as i32;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!((got[0].kind, got[0].code), (EV_ABS, ABS_X));
    assert!((got[0].value - (16383 + 2 * step_x)).abs() <= 2, "{got:?}");
    assert!((got[1].value - (16383 - step_y)).abs() <= 2, "{got:?}");
    wait_until("cursor moved", || {
        probe.pixel(W / 2 + 2, H / 2 - 1) == 0x0000_00ff
    });
    settle(&probe);
    assert_eq!(probe.pixel(W / 2 - 1, H / 2 + 3), RED, "old place repaired");
    // Far right: clamped at the tablet's edge.
    for _ in 0..50 {
        t.inject(&[rel(REL_X, 200), syn]);
    }
    t.inject(&[
        InputEvent {
            kind: EV_KEY,
            code: BTN_LEFT,
            value: 1,
        },
        syn,
    ]);
    wait_until("button", || {
        a.tablet.seen().iter().any(|e| e.code == BTN_LEFT)
    });
    let got = a.tablet.take();
    let last_x = got
        .iter()
        .rev()
        .find(|e| e.kind == EV_ABS && e.code == ABS_X);
    assert_eq!(last_x.map(|e| e.value), Some(32767));
    // Switching away releases the button.
    chord(&t, &[KEY_LEFTCTRL, KEY_LEFTALT, KEY_DELETE]);
    wait_until("button released", || {
        a.tablet
            .seen()
            .iter()
            .any(|e| e.code == BTN_LEFT && e.value == 0)
    });
    t.shutdown();
}

/// An output whose page flips never report completion, like a lost DRM event: it gives
/// up after `timeout`, as the KMS output does.
struct LostFlips {
    inner: MemoryOutput,
    sent: Option<Instant>,
    timeout: Duration,
}

impl seat::Output for LostFlips {
    fn size(&self) -> (u32, u32) {
        self.inner.size()
    }
    fn stride(&self) -> usize {
        self.inner.stride()
    }
    fn back_buffer(&mut self) -> &mut [u8] {
        self.inner.back_buffer()
    }
    fn present(&mut self, damage: &[Rect]) -> Result<(), seat::Error> {
        self.sent = Some(Instant::now());
        self.inner.present(damage)
    }
    fn can_present(&self) -> bool {
        self.sent.is_none_or(|s| s.elapsed() >= self.timeout)
    }
    fn present_retry_in(&self) -> Option<Duration> {
        self.sent.map(|s| self.timeout.saturating_sub(s.elapsed()))
    }
    fn frame_interval(&self) -> Option<Duration> {
        None
    }
}

#[test]
fn a_flip_whose_event_never_comes_does_not_freeze_the_screen() {
    let (out, probe) = MemoryOutput::new(W, H);
    let lost = LostFlips {
        inner: out,
        sent: None,
        timeout: Duration::from_millis(50),
    };
    let seat = Seat::with_output(Box::new(lost), Arc::new(Control::default()));
    let a = graphical(&seat, "desk", RED);
    let t = seat.start().unwrap();
    wait_until("first frame", || probe.pixel(5, 5) == RED);
    // No event ever says the first flip is done: the next damage still reaches the
    // screen, and the terminal's menu still opens.
    a.pattern.color.store(GREEN, Ordering::SeqCst);
    a.handle.damage(Rect::new(0, 0, W, H));
    wait_until("damage after a lost flip", || probe.pixel(5, 5) == GREEN);
    chord(&t, &[KEY_LEFTCTRL, KEY_LEFTALT, KEY_DELETE]);
    wait_until("the menu after lost flips", || probe.pixel(5, 5) != GREEN);
    t.shutdown();
}
