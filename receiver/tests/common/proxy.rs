//! A fault-injecting HTTP/1.1 proxy for tests: forwards requests to an upstream server and
//! spoils responses of chosen paths: drops the connection in the middle of a body, delays,
//! flips a bit in a body. It parses just enough HTTP (request line, headers,
//! Content-Length) to know where bodies are.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Fault rates in per-mille of matching responses.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Only responses to request paths starting with this are spoiled.
    pub path_prefix: String,
    /// Cut the connection halfway through the body.
    pub drop_per_mille: u64,
    /// Flip one bit of the body.
    pub flip_per_mille: u64,
    /// Delay before every response (any path).
    pub delay: Duration,
    /// Answer a matching request with `503 Service Unavailable` and `Retry-After:
    /// busy_retry_after_secs` instead of forwarding it (a busy repository).
    pub busy_per_mille: u64,
    pub busy_retry_after_secs: u64,
    /// The status of those answers: 503 if 0, or 429 (a front's request limit).
    pub busy_status: u16,
}

#[derive(Default)]
pub struct Counters {
    pub responses: AtomicU64,
    pub dropped: AtomicU64,
    pub flipped: AtomicU64,
    pub busy: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub faults: Arc<Mutex<Faults>>,
    pub counters: Arc<Counters>,
    upstream: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Mutex::new(faults));
        let counters = Arc::new(Counters::default());
        let upstream = Arc::new(Mutex::new(upstream));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, c, u, s) = (
            faults.clone(),
            counters.clone(),
            upstream.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let seed = AtomicU64::new(0x1234_5678);
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let up = *u.lock().unwrap();
                let (f, c) = (f.clone(), c.clone());
                let seed = seed.fetch_add(0x9e37_79b9, Ordering::Relaxed);
                std::thread::spawn(move || {
                    let _ = handle(client, up, f, c, seed);
                });
            }
        });
        Proxy {
            addr,
            faults,
            counters,
            upstream,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn set_faults(&self, f: Faults) {
        *self.faults.lock().unwrap() = f;
    }

    pub fn set_upstream(&self, a: SocketAddr) {
        *self.upstream.lock().unwrap() = a;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Reads one header block (through the empty line); None at EOF.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            return Ok(Some(head));
        }
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

fn handle(
    client: TcpStream,
    upstream: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    counters: Arc<Counters>,
    mut seed: u64,
) -> std::io::Result<()> {
    let server = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))?;
    let mut cr = BufReader::new(client.try_clone()?);
    let mut cw = client;
    let mut sr = BufReader::new(server.try_clone()?);
    let mut sw = server;
    loop {
        // One request, client -> server.
        let Some(head) = read_head(&mut cr)? else {
            return Ok(());
        };
        let path = String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let n = content_length(&head).unwrap_or(0);
        let mut body = vec![0u8; n];
        cr.read_exact(&mut body)?;
        let f = faults.lock().unwrap().clone();
        if !f.path_prefix.is_empty()
            && path.starts_with(&f.path_prefix)
            && rand(&mut seed) % 1000 < f.busy_per_mille
        {
            counters.busy.fetch_add(1, Ordering::Relaxed);
            let body = format!(
                "{{\"code\":\"overloaded\",\"message\":\"busy\",\"retry_after_secs\":{}}}",
                f.busy_retry_after_secs
            );
            let status = match f.busy_status {
                0 | 503 => "503 Service Unavailable",
                _ => "429 Too Many Requests",
            };
            write!(
                cw,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nRetry-After: {}\r\nContent-Length: {}\r\n\r\n{body}",
                f.busy_retry_after_secs,
                body.len()
            )?;
            continue;
        }
        sw.write_all(&head)?;
        sw.write_all(&body)?;
        // Its response, server -> client.
        let Some(rhead) = read_head(&mut sr)? else {
            return Ok(());
        };
        let chunked = String::from_utf8_lossy(&rhead)
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let mut rbody = match (chunked, content_length(&rhead)) {
            (true, _) => read_chunked(&mut sr)?,
            (false, Some(n)) => {
                let mut b = vec![0u8; n];
                sr.read_exact(&mut b)?;
                b
            }
            (false, None) => {
                // Not length-delimited: pass the rest through untouched.
                cw.write_all(&rhead)?;
                std::io::copy(&mut sr, &mut cw)?;
                return Ok(());
            }
        };
        let n = rbody.len();
        let f = faults.lock().unwrap().clone();
        counters.responses.fetch_add(1, Ordering::Relaxed);
        if !f.delay.is_zero() {
            std::thread::sleep(f.delay);
        }
        let spoil = !f.path_prefix.is_empty() && path.starts_with(&f.path_prefix) && n > 16;
        if spoil && rand(&mut seed) % 1000 < f.drop_per_mille {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            cw.write_all(&rhead)?;
            write_body(&mut cw, &rbody[..n / 2], chunked, false)?;
            let _ = cw.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        if spoil && rand(&mut seed) % 1000 < f.flip_per_mille {
            counters.flipped.fetch_add(1, Ordering::Relaxed);
            let i = (rand(&mut seed) as usize) % n;
            rbody[i] ^= 1 << (rand(&mut seed) % 8);
        }
        cw.write_all(&rhead)?;
        write_body(&mut cw, &rbody, chunked, true)?;
    }
}

/// Reads a chunked body (and its trailer) into one buffer.
fn read_chunked(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        if size == 0 {
            // Trailer: lines up to the empty one.
            loop {
                let mut t = String::new();
                if r.read_line(&mut t)? == 0 || t == "\r\n" || t == "\n" {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

/// Writes a body back in the framing it came in; `complete` false leaves it unfinished.
fn write_body(
    w: &mut impl Write,
    body: &[u8],
    chunked: bool,
    complete: bool,
) -> std::io::Result<()> {
    if !chunked {
        return w.write_all(body);
    }
    if !body.is_empty() {
        write!(w, "{:x}\r\n", body.len())?;
        w.write_all(body)?;
        w.write_all(b"\r\n")?;
    }
    if complete {
        w.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}
