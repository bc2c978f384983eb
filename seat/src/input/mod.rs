//! The PC's keyboards and pointers: every `/dev/input/event*` that is a keyboard (has
//! A..Z or Enter) or a pointer (relative X/Y, or absolute X/Y with a left button or
//! touch), each grabbed with `EVIOCGRAB` so that only the seat reads it: not the
//! kernel's console, not SysRq, not its Ctrl+Alt+Delete. A device that cannot be
//! grabbed is skipped with a warning: reading it ungrabbed would let the VT see keys.
//!
//! Hot-plug: inotify on `/dev/input` reports new `event*` nodes; opening is retried for
//! a while, since without udev the node appears before its permissions settle. A
//! device that answers `ENODEV` was unplugged and is dropped.
//!
//! Absolute axes are mapped onto the tablet range (0..=32767) here, with each device's
//! own min and max, so the seat sees one kind of absolute pointer.

pub mod pointer;

use crate::keys::code::*;
use crate::{Error, InputEvent};
use evdev::raw_stream::RawDevice;
use evdev::{AbsoluteAxisCode, KeyCode, RelativeAxisCode};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const INPUT_DIR: &str = "/dev/input";
/// How long a new node may take to become openable.
const RETRY_FOR: Duration = Duration::from_secs(3);
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// What one device is for the seat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub keyboard: bool,
    pub pointer: bool,
}

/// One grabbed device.
struct Device {
    path: PathBuf,
    raw: RawDevice,
    caps: Capabilities,
    /// (min, max) of ABS_X and ABS_Y.
    abs: [(i32, i32); 2],
}

/// Every grabbed input device, and the hot-plug watch.
pub struct Devices {
    devices: Vec<Device>,
    inotify: Option<OwnedFd>,
    /// New nodes not yet openable: (path, first seen).
    pending: Vec<(PathBuf, Instant)>,
    next_retry: Option<Instant>,
}

/// Which devices the seat wants, from what they report.
pub fn classify(raw: &RawDevice) -> Capabilities {
    let keys = raw.supported_keys();
    let has_key = |k: u16| keys.is_some_and(|s| s.contains(KeyCode::new(k)));
    let rel = raw.supported_relative_axes();
    let has_rel = |a: u16| rel.is_some_and(|s| s.contains(RelativeAxisCode(a)));
    let abs = raw.supported_absolute_axes();
    let has_abs = |a: u16| abs.is_some_and(|s| s.contains(AbsoluteAxisCode(a)));
    let keyboard = (has_key(KEY_A) && has_key(KEY_Z)) || has_key(KEY_ENTER);
    let pointer = (has_rel(REL_X) && has_rel(REL_Y))
        || (has_abs(ABS_X) && has_abs(ABS_Y) && (has_key(BTN_LEFT) || has_key(BTN_TOUCH)));
    Capabilities { keyboard, pointer }
}

fn is_event_node(name: &str) -> bool {
    name.strip_prefix("event")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Devices {
    /// Opens and grabs every keyboard and pointer, and watches for new ones.
    pub fn open() -> Result<Devices, Error> {
        let mut devices = Devices {
            devices: Vec::new(),
            inotify: watch(INPUT_DIR)
                .map_err(|e| log::warn!("seat: no hot-plug of input devices: {e}"))
                .ok(),
            pending: Vec::new(),
            next_retry: None,
        };
        let entries = std::fs::read_dir(INPUT_DIR).map_err(|source| Error::Io {
            what: format!("listing {INPUT_DIR}"),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_str().is_some_and(is_event_node))
            .map(|e| e.path())
            .collect();
        paths.sort();
        for path in paths {
            if let Err(e) = devices.add(&path) {
                log::info!("seat: {}: {e}", path.display());
            }
        }
        Ok(devices)
    }

    /// Opens, classifies and grabs one device.
    fn add(&mut self, path: &Path) -> io::Result<()> {
        if self.devices.iter().any(|d| d.path == path) {
            return Ok(());
        }
        let mut raw = RawDevice::open(path)?;
        let caps = classify(&raw);
        let name = raw.name().unwrap_or("unnamed").to_string();
        if !caps.keyboard && !caps.pointer {
            log::debug!(
                "seat: {}: {name}: neither keyboard nor pointer",
                path.display()
            );
            return Ok(());
        }
        if let Err(e) = raw.grab() {
            log::warn!(
                "seat: {}: {name}: cannot grab ({e}); not using it",
                path.display()
            );
            return Ok(());
        }
        set_nonblocking(raw.as_raw_fd())?;
        let mut abs = [(0, TABLET_RANGE), (0, TABLET_RANGE)];
        if let Ok(infos) = raw.get_absinfo() {
            for (axis, info) in infos {
                if axis.0 == ABS_X || axis.0 == ABS_Y {
                    abs[usize::from(axis.0)] = (info.minimum(), info.maximum());
                }
            }
        }
        log::info!(
            "seat: {}: {name}: grabbed ({}{})",
            path.display(),
            if caps.keyboard { "keyboard " } else { "" },
            if caps.pointer { "pointer" } else { "" }
        );
        self.devices.push(Device {
            path: path.to_path_buf(),
            raw,
            caps,
            abs,
        });
        Ok(())
    }

    /// The descriptors to poll: the inotify watch and every device.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.inotify.iter().map(|f| f.as_raw_fd()).collect();
        fds.extend(self.devices.iter().map(|d| d.raw.as_raw_fd()));
        fds
    }

    /// How long until a pending new node should be tried again.
    pub fn retry_in(&self) -> Option<Duration> {
        self.next_retry
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// Reads what the readable descriptors in `ready` have, and retries pending nodes
    /// that are due. Absolute X/Y come out in tablet units.
    pub fn read(&mut self, ready: &[RawFd], out: &mut Vec<InputEvent>) {
        if let Some(fd) = self.inotify.as_ref().map(|f| f.as_raw_fd()) {
            if ready.contains(&fd) {
                for name in read_inotify(fd) {
                    if is_event_node(&name) {
                        self.pending
                            .push((Path::new(INPUT_DIR).join(name), Instant::now()));
                    }
                }
            }
        }
        if self.next_retry.is_none_or(|t| t <= Instant::now()) {
            self.retry_pending();
        }
        let mut gone = Vec::new();
        for (i, dev) in self.devices.iter_mut().enumerate() {
            if !ready.contains(&dev.raw.as_raw_fd()) {
                continue;
            }
            match dev.raw.fetch_events() {
                Ok(events) => {
                    for ev in events {
                        let (kind, code, mut value) = (ev.event_type().0, ev.code(), ev.value());
                        if kind == EV_ABS {
                            if code != ABS_X && code != ABS_Y {
                                continue;
                            }
                            let (min, max) = dev.abs[usize::from(code)];
                            value = pointer::map_absolute(value, min, max);
                        }
                        if matches!(kind, EV_SYN | EV_KEY | EV_REL | EV_ABS) {
                            out.push(InputEvent { kind, code, value });
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::info!("seat: {}: gone ({e})", dev.path.display());
                    gone.push(i);
                }
            }
        }
        for i in gone.into_iter().rev() {
            self.devices.remove(i);
        }
    }

    fn retry_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for (path, since) in pending {
            match self.add(&path) {
                Ok(()) => {}
                Err(e) if since.elapsed() < RETRY_FOR => {
                    log::debug!("seat: {}: not yet ({e})", path.display());
                    self.pending.push((path, since));
                }
                Err(e) => log::warn!("seat: {}: giving up: {e}", path.display()),
            }
        }
        self.next_retry = (!self.pending.is_empty()).then(|| Instant::now() + RETRY_EVERY);
    }

    /// Mirrors an appliance's keyboard LEDs (bit n = LED n) on every keyboard.
    pub fn set_leds(&mut self, leds: u32) {
        for dev in self.devices.iter_mut().filter(|d| d.caps.keyboard) {
            let mut events: Vec<evdev::InputEvent> = (0..=LED_MAX)
                .filter(|&led| {
                    dev.raw
                        .supported_leds()
                        .is_some_and(|s| s.contains(evdev::LedCode(led)))
                })
                .map(|led| evdev::InputEvent::new(EV_LED, led, ((leds >> led) & 1) as i32))
                .collect();
            if events.is_empty() {
                continue;
            }
            events.push(evdev::InputEvent::new(EV_SYN, SYN_REPORT, 0));
            if let Err(e) = dev.raw.send_events(&events) {
                log::debug!("seat: {}: setting LEDs: {e}", dev.path.display());
            }
        }
    }

    /// Lets go of every device (ungrab, close).
    pub fn release(&mut self) {
        for mut dev in self.devices.drain(..) {
            let _ = dev.raw.ungrab();
        }
    }
}

const TABLET_RANGE: i32 = pointer::TABLET_MAX;

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An inotify descriptor watching `dir` for new and changed nodes.
fn watch(dir: &str) -> io::Result<OwnedFd> {
    // SAFETY: inotify_init1 takes flags only; a non-negative result is our fd.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is new and ours.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = std::ffi::CString::new(dir).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: a valid descriptor and NUL-terminated path.
    let wd =
        unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_CREATE | libc::IN_ATTRIB) };
    if wd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// The names in the pending inotify events.
fn read_inotify(fd: RawFd) -> Vec<String> {
    let mut names = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading into a local buffer of the given size.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return names;
        }
        let n = n as usize;
        let header = std::mem::size_of::<libc::inotify_event>();
        let mut at = 0;
        while at + header <= n {
            // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            let name_len = ev.len as usize;
            let name_bytes = buf.get(at + header..at + header + name_len).unwrap_or(&[]);
            if let Ok(name) = CStr::from_bytes_until_nul(name_bytes) {
                names.push(name.to_string_lossy().into_owned());
            }
            at += header + name_len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_node_names() {
        assert!(is_event_node("event0"));
        assert!(is_event_node("event12"));
        assert!(!is_event_node("event"));
        assert!(!is_event_node("mouse0"));
        assert!(!is_event_node("event1x"));
    }
}
