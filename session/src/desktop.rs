//! The session on the PC's own screen, keyboard and pointer: the seat (crate `seat`) owns
//! them, each appliance with a display gets a virtio-gpu, a virtio keyboard and a virtio
//! tablet wired to it, and appliances without one show their serial console on the seat.
//!
//! This module is only glue: it turns the VMM's display and input ends
//! (`vmm::display`, `vmm::input`) into the seat's (`seat::SurfaceSource`,
//! `seat::InputSink`) and back, so neither crate knows the other. Everything runs in this
//! process: a guest's framebuffer is read straight from its memory when the seat presents,
//! with no copy in between.

use crate::runner::StopAll;
use seat::{ApplianceHandle, ApplianceKind, InputEvent, InputSink, Rect, SeatThread};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use vmm::display::{CursorImage, DisplayConfig, DisplaySink, Framebuffer};
use vmm::input::{InputConfig, InputQueue};

/// Whether `tty` is a virtual terminal on the PC's screen (`/dev/tty1`..), as opposed to
/// a serial line: only a person at the PC gets the seat.
pub fn on_pc_screen(tty: &File) -> bool {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", tty.as_raw_fd()));
    let Ok(path) = link else { return false };
    let name = path.to_string_lossy();
    name.strip_prefix("/dev/tty")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What the seat asks of the session: who is logged in, unlocking, logging out.
struct Control {
    user: String,
    salt: [u8; 16],
    /// sha256(salt, password): the password itself is not kept for the lock screen.
    verifier: [u8; 32],
    stop: Arc<StopAll>,
}

fn salted(salt: &[u8], password: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(salt)
        .chain_update(password.as_bytes())
        .finalize()
        .into()
}

impl seat::SessionControl for Control {
    fn user(&self) -> String {
        self.user.clone()
    }

    fn unlock(&self, password: &str) -> bool {
        let got = salted(&self.salt, password);
        // Constant time: every byte is compared whatever the first difference.
        got.iter()
            .zip(self.verifier.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    fn logout(&self) {
        log::info!("logout asked for on the terminal's menu");
        self.stop.stop();
    }
}

/// A guest's scanout as the seat reads it.
struct Scanout(Arc<Framebuffer>);

impl seat::SurfaceSource for Scanout {
    fn size(&self) -> (u32, u32) {
        (self.0.width(), self.0.height())
    }

    fn copy_rect(&self, rect: Rect, dst: &mut [u8], dst_stride: usize) {
        self.0.copy_rect_to(
            vmm::display::Rect {
                x: rect.x,
                y: rect.y,
                width: rect.width,
                height: rect.height,
            },
            dst,
            dst_stride,
        );
    }
}

/// Logs the complete lines of a graphical appliance's console output (`pending` keeps an
/// unfinished line, at most 1 KiB of it, for the next read).
fn log_console_lines(name: &str, pending: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' || pending.len() >= 1024 {
            let text = String::from_utf8_lossy(pending);
            let text = text.trim_end_matches('\r');
            if !text.is_empty() {
                log::debug!("{name} console: {text}");
            }
            pending.clear();
        }
        if b != b'\n' {
            pending.push(b);
        }
    }
}

/// The VMM's display end, forwarding to the appliance's place on the seat.
struct SeatDisplay(ApplianceHandle);

impl DisplaySink for SeatDisplay {
    fn set_scanout(&self, fb: Option<Arc<Framebuffer>>) {
        self.0
            .set_surface(fb.map(|fb| Arc::new(Scanout(fb)) as Arc<dyn seat::SurfaceSource>));
    }

    fn flush(&self, rect: vmm::display::Rect) {
        self.0.damage(Rect {
            x: rect.x,
            y: rect.y,
            width: rect.width,
            height: rect.height,
        });
    }

    fn cursor(&self, image: Option<Arc<CursorImage>>, x: u32, y: u32) {
        let image = image.map(|c| (c.width, c.height, c.hot_x, c.hot_y, c.pixels.clone()));
        self.0.cursor(image, x, y);
    }

    fn move_cursor(&self, x: u32, y: u32) {
        self.0.move_cursor(x, y);
    }
}

/// The seat's input end, feeding an appliance's virtio keyboard or tablet.
struct VirtioInput(InputQueue);

impl InputSink for VirtioInput {
    fn send(&self, events: &[InputEvent]) {
        let events: Vec<vmm::input::InputEvent> = events
            .iter()
            .map(|e| vmm::input::InputEvent {
                kind: e.kind,
                code: e.code,
                value: e.value,
            })
            .collect();
        // A full queue drops the packet (the VMM logs it): a guest that reads nothing
        // must not make the seat wait.
        let _ = self.0.send(&events);
    }

    fn leds(&self) -> u32 {
        self.0.leds()
    }
}

/// An appliance's display and input devices, made once and given to each of its boots.
#[derive(Clone)]
pub struct Graphics {
    width: u32,
    height: u32,
    edid: Option<Vec<u8>>,
    sink: Arc<dyn DisplaySink>,
    keyboard: InputQueue,
    tablet: InputQueue,
}

impl Graphics {
    /// The VMM's devices for one boot.
    pub fn devices(&self) -> (DisplayConfig, Vec<InputConfig>) {
        (
            DisplayConfig {
                width: self.width,
                height: self.height,
                edid: self.edid.clone(),
                sink: self.sink.clone(),
            },
            InputConfig::keyboard_and_tablet(self.keyboard.clone(), self.tablet.clone()),
        )
    }
}

/// One appliance as the desktop is asked to show it.
pub struct Member {
    pub name: String,
    /// Whether it has a display (`Manifest::display`); otherwise its serial console shows.
    pub display: bool,
    /// Its serial console: what it prints, and where keys for it go.
    pub from_guest: Box<dyn Read + Send>,
    pub to_guest: Box<dyn std::io::Write + Send>,
}

/// The seat running for this session.
pub struct Desktop {
    thread: SeatThread,
    handles: Vec<ApplianceHandle>,
    graphics: Vec<Option<Graphics>>,
}

impl Desktop {
    /// Opens the PC's screen and input devices and registers `members` in order. `Err`
    /// (with the members given back) when the PC has no display the seat can drive; the
    /// session then keeps its text console.
    pub fn open(
        user: &str,
        password: &str,
        stop: Arc<StopAll>,
        members: Vec<Member>,
    ) -> Result<Desktop, (String, Vec<Member>)> {
        let mut salt = [0u8; 16];
        if let Ok(mut random) = File::open("/dev/urandom") {
            let _ = random.read_exact(&mut salt);
        }
        let control = Arc::new(Control {
            user: user.to_string(),
            salt,
            verifier: salted(&salt, password),
            stop,
        });
        let seat = match seat::Seat::open(control) {
            Ok(s) => s,
            Err(e) => return Err((e.to_string(), members)),
        };
        let (width, height) = seat.mode();
        let edid = seat.edid();
        log::info!("the seat shows {width}x{height} on the PC's screen");
        let mut handles = Vec::new();
        let mut graphics = Vec::new();
        let mut readers = Vec::new();
        for m in members {
            if m.display {
                let (keyboard, tablet) = (InputQueue::new(), InputQueue::new());
                let handle = seat.add_appliance(
                    &m.name,
                    ApplianceKind::Graphical {
                        keyboard: Arc::new(VirtioInput(keyboard.clone())),
                        tablet: Arc::new(VirtioInput(tablet.clone())),
                    },
                );
                let leds = handle.clone();
                keyboard.on_leds(move |_| leds.leds_changed());
                graphics.push(Some(Graphics {
                    width,
                    height,
                    edid: edid.clone(),
                    sink: Arc::new(SeatDisplay(handle.clone())),
                    keyboard,
                    tablet,
                }));
                // A graphical appliance's serial console is read (left unread, the guest
                // would block writing to it) and goes to the log at debug level only
                // (`collective.log=debug`): it is where a guest says why it reset.
                readers.push((m.name, m.from_guest, None));
                handles.push(handle);
            } else {
                let handle = seat.add_appliance(
                    &m.name,
                    ApplianceKind::Console {
                        to_guest: m.to_guest,
                    },
                );
                graphics.push(None);
                readers.push((m.name, m.from_guest, Some(handle.clone())));
                handles.push(handle);
            }
        }
        let thread = seat
            .start()
            .map_err(|e| (format!("cannot start the seat: {e}"), Vec::new()))?;
        for (name, mut from_guest, handle) in readers {
            let who = name.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("console-{name}"))
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut line = Vec::new();
                    while let Ok(n) = from_guest.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        match &handle {
                            Some(h) => h.console_output(&buf[..n]),
                            None if log::log_enabled!(log::Level::Debug) => {
                                log_console_lines(&who, &mut line, &buf[..n])
                            }
                            None => {}
                        }
                    }
                });
            if let Err(e) = spawned {
                log::warn!("{name}: cannot read its console: {e}");
            }
        }
        Ok(Desktop {
            thread,
            handles,
            graphics,
        })
    }

    /// The display and input devices of member `index`, if it has a display.
    pub fn graphics(&self, index: usize) -> Option<Graphics> {
        self.graphics.get(index).cloned().flatten()
    }

    /// Member `index` ended (or never started); its place on the seat says why.
    pub fn ended(&self, index: usize, why: &str) {
        if let Some(h) = self.handles.get(index) {
            h.ended(why);
        }
    }

    /// Clears the screen and gives it, and the keyboard, back to the text console.
    pub fn close(self) {
        self.thread.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seat::SessionControl;

    #[test]
    fn unlock_takes_only_the_password() {
        let salt = [7u8; 16];
        let c = Control {
            user: "alice".into(),
            salt,
            verifier: salted(&salt, "walk-up-and-work"),
            stop: Arc::new(StopAll::default()),
        };
        assert!(c.unlock("walk-up-and-work"));
        assert!(!c.unlock("walk-up-and-wor"));
        assert!(!c.unlock(""));
    }

    #[test]
    fn serial_lines_are_not_the_pc_screen() {
        let null = File::open("/dev/null").unwrap();
        assert!(!on_pc_screen(&null));
    }
}
