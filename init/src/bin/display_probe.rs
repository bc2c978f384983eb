//! The program of the display test appliance (after its initramfs has loaded the
//! drivers): draws [`collective_init::test_pattern`] on the virtio-gpu's screen through
//! KMS, as a desktop's compositor would, prints `DISPLAY-PROBE drawn WIDTHxHEIGHT seed N`, then prints every
//! input event from `/dev/input/event*` as `DISPLAY-PROBE input TYPE CODE VALUE`, so a
//! system test can see which keys and pointer moves reached the appliance. Redraws when
//! the screen size changes. Usage: `display-probe SEED [HOST:PORT]`: with an address, every
//! line also goes there as a UDP datagram (the serial console of a graphical appliance is
//! the terminal's to show, not the test's to read), retried until the network is up.
//! `display-probe SEED HOST:PORT|- HOST:PORT/PATH` also fetches that page over HTTP once
//! the network is up and reports `UPLINK-FETCH <first line of the body>`. A fourth
//! argument `mark-keys` repaints the top-left corner at every key press
//! ([`test_pattern::key_mark_colour`]): what a key-to-pixel latency benchmark watches.

use collective_init::test_pattern;
use seat::output::{KmsOutput, Output};
use seat::Rect;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Where the lines go: the serial console, and a UDP listener if one was named.
struct Reporter {
    udp: Option<(std::net::UdpSocket, String)>,
    /// Lines not yet sent (no address yet), oldest first.
    pending: std::collections::VecDeque<String>,
}

impl Reporter {
    fn new(to: Option<String>) -> Reporter {
        let udp = to.and_then(|to| Some((std::net::UdpSocket::bind("0.0.0.0:0").ok()?, to)));
        Reporter {
            udp,
            pending: Default::default(),
        }
    }

    fn say(&mut self, text: &str) {
        let line = format!("DISPLAY-PROBE {text}");
        if let Ok(mut c) = OpenOptions::new().write(true).open("/dev/console") {
            let _ = write!(c, "{line}\r\n");
        }
        if self.udp.is_some() && self.pending.len() < 10_000 {
            self.pending.push_back(line);
        }
        self.flush();
    }

    fn flush(&mut self) {
        let Some((sock, to)) = &self.udp else { return };
        while let Some(line) = self.pending.front() {
            if sock.send_to(line.as_bytes(), to.as_str()).is_err() {
                return;
            }
            self.pending.pop_front();
        }
    }
}

/// The preferred mode of the first connected monitor, from sysfs (`WIDTHxHEIGHT`, the
/// first line of the connector's `modes`); it changes when the terminal's monitor does.
fn preferred_mode() -> Option<(u32, u32)> {
    let mut connectors: Vec<_> = fs::read_dir("/sys/class/drm")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains('-'))
        })
        .collect();
    connectors.sort();
    connectors.into_iter().find_map(|c| {
        if fs::read_to_string(c.join("status")).ok()?.trim() != "connected" {
            return None;
        }
        let modes = fs::read_to_string(c.join("modes")).ok()?;
        let (w, h) = modes.lines().next()?.split_once('x')?;
        let h: String = h.chars().take_while(char::is_ascii_digit).collect();
        Some((w.parse().ok()?, h.parse().ok()?))
    })
}

/// Shows the pattern the way a desktop's compositor does: as DRM master on the card, in a
/// dumb buffer, set on the CRTC with a page flip (the fbdev emulation is the kernel
/// console's, and its writes do not always reach the device). The output must be kept:
/// closing the card gives the screen back to the console.
fn draw(seed: u32) -> Result<Box<dyn Output>, String> {
    let mut out: Box<dyn Output> =
        Box::new(KmsOutput::open().map_err(|e| format!("no KMS output: {e}"))?);
    let ((w, h), stride) = (out.size(), out.stride());
    let buf = out.back_buffer();
    for y in 0..h {
        for x in 0..w {
            let at = y as usize * stride + x as usize * 4;
            if let Some(p) = buf.get_mut(at..at + 4) {
                p.copy_from_slice(&test_pattern::pixel(x, y, w, h, seed).to_le_bytes());
            }
        }
    }
    let whole = Rect {
        x: 0,
        y: 0,
        width: w,
        height: h,
    };
    out.present(&[whole])
        .map_err(|e| format!("presenting: {e}"))?;
    // Let the flip complete, so the buffer is on the screen before "drawn" is said.
    wait_for_flip(out.as_mut());
    Ok(out)
}

/// Waits (at most 2 s) for the page flip of the last present.
fn wait_for_flip(out: &mut dyn Output) {
    if let Some(fd) = out.poll_fd() {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, 2000) } > 0 {
            let _ = out.dispatch();
        }
    }
}

/// Paints the mark for `presses` and shows it.
fn mark(screen: &mut dyn Output, presses: u64) {
    let ((w, h), stride) = (screen.size(), screen.stride());
    let (mw, mh) = (test_pattern::KEY_MARK.min(w), test_pattern::KEY_MARK.min(h));
    let colour = test_pattern::key_mark_colour(presses).to_le_bytes();
    let buf = screen.back_buffer();
    for y in 0..mh as usize {
        for x in 0..mw as usize {
            if let Some(p) = buf.get_mut(y * stride + x * 4..y * stride + x * 4 + 4) {
                p.copy_from_slice(&colour);
            }
        }
    }
    let rect = Rect {
        x: 0,
        y: 0,
        width: mw,
        height: mh,
    };
    if screen.present(&[rect]).is_ok() {
        wait_for_flip(screen);
    }
}

/// Keeps the kernel's text console from drawing (blinking its cursor, printing) while
/// the probe owns the screen: the console goes to graphics mode, as an X server puts it.
fn quiet_console() {
    const KDSETMODE: libc::c_ulong = 0x4B3A;
    const KD_GRAPHICS: libc::c_ulong = 1;
    for tty in ["/dev/tty0", "/dev/tty1"] {
        if let Ok(f) = OpenOptions::new().write(true).open(tty) {
            // SAFETY: KDSETMODE takes an integer argument. Closing the tty keeps the mode.
            unsafe { libc::ioctl(f.as_raw_fd(), KDSETMODE, KD_GRAPHICS) };
        }
    }
}

/// GET http://HOST:PORT/PATH; the body, or None while the network is not there yet.
fn http_get(url: &str) -> Option<String> {
    let (host, path) = url.split_once('/').unwrap_or((url, ""));
    let addr: std::net::SocketAddr = host.parse().ok()?;
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(conn, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).ok()?;
    let (_, body) = reply.split_once("\r\n\r\n")?;
    Some(body.to_string())
}

fn main() {
    let seed: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut out = Reporter::new(std::env::args().nth(2).filter(|a| a != "-"));
    let mut fetch = std::env::args().nth(3).filter(|a| a != "-");
    // `mark-keys`: repaint the corner on every key press (see [`mark`]).
    let mark_keys = std::env::args().nth(4).as_deref() == Some("mark-keys");
    let mut presses: u64 = 0;
    let mut last_fetch = Instant::now() - Duration::from_secs(10);
    let start = Instant::now();
    while preferred_mode().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            out.say("FAILED no connected monitor after 60 s (is virtio_gpu loaded?)");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    quiet_console();
    let mut screen = match draw(seed) {
        Ok(screen) => screen,
        Err(e) => {
            out.say(&format!("FAILED {e}"));
            return;
        }
    };
    let (w, h) = screen.size();
    out.say(&format!("drawn {w}x{h} seed {seed}"));
    let mut devices: Vec<(String, File)> = Vec::new();
    loop {
        // Devices appear as their drivers bind; pick up new ones every round.
        if let Ok(entries) = fs::read_dir("/dev/input") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("event") && !devices.iter().any(|(n, _)| *n == name) {
                    if let Ok(f) = File::open(e.path()) {
                        out.say(&format!("device {name}"));
                        devices.push((name, f));
                    }
                }
            }
        }
        let mut fds: Vec<libc::pollfd> = devices
            .iter()
            .map(|(_, f)| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 500) };
        if n > 0 {
            for (i, pfd) in fds.iter().enumerate() {
                if pfd.revents & libc::POLLIN == 0 {
                    continue;
                }
                let mut buf = [0u8; 24 * 64];
                let Ok(len) = devices[i].1.read(&mut buf) else {
                    continue;
                };
                for ev in buf[..len].chunks_exact(24) {
                    let kind = u16::from_le_bytes([ev[16], ev[17]]);
                    let code = u16::from_le_bytes([ev[18], ev[19]]);
                    let value = i32::from_le_bytes([ev[20], ev[21], ev[22], ev[23]]);
                    if kind != 0 {
                        out.say(&format!("input {kind} {code} {value}"));
                    }
                    if mark_keys && kind == 1 && value == 1 {
                        presses += 1;
                        mark(screen.as_mut(), presses);
                    }
                }
            }
        }
        out.flush();
        if fetch.is_some() && last_fetch.elapsed() > Duration::from_secs(1) {
            last_fetch = Instant::now();
            if let Some(body) = fetch.as_deref().and_then(http_get) {
                out.say(&format!(
                    "UPLINK-FETCH {}",
                    body.lines().next().unwrap_or("")
                ));
                fetch = None;
            }
        }
        if preferred_mode().is_some_and(|m| m != screen.size()) {
            // The monitor changed: let go of the card and draw at the new mode.
            screen.release();
            drop(screen);
            match draw(seed) {
                Ok(s) => {
                    let (w, h) = s.size();
                    out.say(&format!("drawn {w}x{h} seed {seed}"));
                    screen = s;
                }
                Err(e) => {
                    out.say(&format!("FAILED {e}"));
                    return;
                }
            }
        }
    }
}
