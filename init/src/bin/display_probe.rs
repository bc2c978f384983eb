//! The program of the display test appliance (after its initramfs has loaded the
//! drivers): draws [`collective_init::test_pattern`] on `/dev/fb0` (the virtio-gpu's
//! framebuffer), prints `DISPLAY-PROBE drawn WIDTHxHEIGHT seed N`, then prints every
//! input event from `/dev/input/event*` as `DISPLAY-PROBE input TYPE CODE VALUE`, so a
//! system test can see which keys and pointer moves reached the appliance. Redraws when
//! the screen size changes. Usage: `display-probe SEED [HOST:PORT]`: with an address, every
//! line also goes there as a UDP datagram (the serial console of a graphical appliance is
//! the terminal's to show, not the test's to read), retried until the network is up.
//! `display-probe SEED HOST:PORT|- HOST:PORT/PATH` also fetches that page over HTTP once
//! the network is up and reports `UPLINK-FETCH <first line of the body>`.

use collective_init::test_pattern;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
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

fn sysfs(name: &str) -> Option<String> {
    fs::read_to_string(format!("/sys/class/graphics/fb0/{name}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// (width, height, stride) of fb0, once it exists.
fn geometry() -> Option<(u32, u32, u32)> {
    let size = sysfs("virtual_size")?;
    let (w, h) = size.split_once(',')?;
    let stride = sysfs("stride")?.parse().ok()?;
    Some((w.parse().ok()?, h.parse().ok()?, stride))
}

/// Keeps the kernel's text console off the framebuffer, so only our pixels are there.
fn unbind_fbcon() {
    if let Ok(entries) = fs::read_dir("/sys/class/vtconsole") {
        for e in entries.flatten() {
            let name = fs::read_to_string(e.path().join("name")).unwrap_or_default();
            if name.contains("frame buffer") {
                let _ = fs::write(e.path().join("bind"), "0");
            }
        }
    }
    let _ = fs::write("/sys/class/graphics/fbcon/cursor_blink", "0");
}

fn draw(seed: u32) -> Result<(u32, u32), String> {
    let (w, h, stride) = geometry().ok_or("no /dev/fb0 geometry")?;
    let mut fb = OpenOptions::new()
        .write(true)
        .open("/dev/fb0")
        .map_err(|e| format!("/dev/fb0: {e}"))?;
    let mut row = vec![0u8; stride as usize];
    for y in 0..h {
        for x in 0..w {
            let p = test_pattern::pixel(x, y, w, h, seed).to_le_bytes();
            row[x as usize * 4..x as usize * 4 + 4].copy_from_slice(&p);
        }
        fb.seek(SeekFrom::Start(u64::from(y) * u64::from(stride)))
            .and_then(|_| fb.write_all(&row))
            .map_err(|e| format!("writing /dev/fb0: {e}"))?;
    }
    Ok((w, h))
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
    let mut fetch = std::env::args().nth(3);
    let mut last_fetch = Instant::now() - Duration::from_secs(10);
    let start = Instant::now();
    while geometry().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            out.say("FAILED no framebuffer after 60 s (is virtio_gpu loaded?)");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unbind_fbcon();
    let mut drawn = match draw(seed) {
        Ok(size) => size,
        Err(e) => {
            out.say(&format!("FAILED {e}"));
            return;
        }
    };
    out.say(&format!("drawn {}x{} seed {seed}", drawn.0, drawn.1));
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
        if let Some((w, h, _)) = geometry() {
            if (w, h) != drawn {
                if let Ok(size) = draw(seed) {
                    drawn = size;
                    out.say(&format!("drawn {}x{} seed {seed}", size.0, size.1));
                }
            }
        }
    }
}
