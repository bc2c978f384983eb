//! The server under slow and hostile clients, on loopback, with real sockets: 500 slow
//! clients (headers that never end, bodies that never come, idle keep-alive connections)
//! while 20 honest terminals log in and fetch manifests and chunks; an endless header line,
//! an endless chunked body and a 10 GB Content-Length; more connections than allowed.
//!
//! The server runs as a child process (`collective-repo serve`), so its memory is its own
//! (VmRSS from /proc/PID/status) and the test's client threads do not share its runtime.
//!
//! Slow clients come from 127.0.1.x and 127.0.2.1, honest ones from 127.0.0.1 (all of
//! 127.0.0.0/8 is loopback): the per-address bounds are what keeps one hostile address
//! from taking what others need, so the attack is spread over addresses, and one address
//! that goes over its body bound is checked to get 503 with Retry-After.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use appliance::wire::*;
use appliance::SignedManifest;
use common::process::ServerProcess;
use common::*;

/// Honest requests must each finish within this.
const HONEST_MAX: Duration = Duration::from_secs(2);
/// The server's resident memory may grow at most this much under the slow clients.
const SLOW_RSS_BOUND_KB: u64 = 64 * 1024;
/// ... and at most this much for one endless header, chunked body or huge Content-Length.
const HOSTILE_RSS_BOUND_KB: u64 = 16 * 1024;

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into()).unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect from {from}: {e}"));
    s.into()
}

/// One honest terminal: logs in, fetches its manifest and every chunk of it, `rounds`
/// times over one keep-alive agent. Returns the slowest request.
fn honest_terminal(base: &str, trusted: &[appliance::PublicKey], rounds: usize) -> Duration {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build();
    let mut slowest = Duration::ZERO;
    let mut timed = |what: &str, f: &mut dyn FnMut() -> Result<Vec<u8>, String>| -> Vec<u8> {
        let t = Instant::now();
        let r = f();
        let took = t.elapsed();
        slowest = slowest.max(took);
        let body = r.unwrap_or_else(|e| panic!("honest {what}: {e}"));
        assert!(took < HONEST_MAX, "honest {what} took {took:?}");
        body
    };
    for _ in 0..rounds {
        let login = timed("login", &mut || {
            agent
                .post(&format!("{base}api/v1/login"))
                .send_json(serde_json::json!({"user": "alice", "password": PASSWORD}))
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    let mut b = Vec::new();
                    r.into_reader()
                        .read_to_end(&mut b)
                        .map_err(|e| e.to_string())?;
                    Ok(b)
                })
        });
        let login: LoginResponse = serde_json::from_slice(&login).unwrap();
        let app = &login.appliances[0];
        let get = |path: String| {
            let agent = &agent;
            move || -> Result<Vec<u8>, String> {
                let r = agent
                    .get(&format!("{base}{path}"))
                    .call()
                    .map_err(|e| e.to_string())?;
                let mut b = Vec::new();
                r.into_reader()
                    .read_to_end(&mut b)
                    .map_err(|e| e.to_string())?;
                Ok(b)
            }
        };
        let bytes = timed("manifest", &mut get(app.manifest_path.clone()));
        let m = SignedManifest::verify_bytes(&bytes, trusted).unwrap();
        for blob in [&m.kernel, &m.disk("system").unwrap().image] {
            for id in blob.distinct_chunks() {
                let stored = timed("chunk", &mut get(chunk_path(&id)));
                appliance::decode_chunk(&id, &stored).expect("chunk verifies");
            }
        }
    }
    slowest
}

/// What one slow client does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Slow {
    /// A request header that never ends (one more byte now and then).
    Header,
    /// A login that announces 64 KiB of body and sends a byte now and then.
    Body,
    /// A complete request, then an idle keep-alive connection.
    Idle,
}

fn open_slow(kind: Slow, from: &str, to: SocketAddr) -> TcpStream {
    let mut s = connect_from(from, to);
    let start: &[u8] = match kind {
        Slow::Header => b"GET /manifests/desk/1.json HTTP/1.1\r\nHost: repo\r\nX-Slow: a",
        Slow::Body => {
            b"POST /api/v1/login HTTP/1.1\r\nHost: repo\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n{"
        }
        Slow::Idle => b"GET /manifests/desk/1.json HTTP/1.1\r\nHost: repo\r\n\r\n",
    };
    s.write_all(start).unwrap();
    s
}

#[test]
fn slow_clients_do_not_stop_honest_terminals() {
    let f = Fixture::new();
    let server = ServerProcess::start(&f, &[]);
    let base = server.base();
    // Warm up (first login, first reads), then the baseline memory.
    honest_terminal(&base, &f.trusted(), 1);
    let rss_before = server.rss_kb();

    // 420 slow clients over 10 addresses (14 bodies each: under the per-address bound),
    // and 80 slow bodies from one address (over its bound of 64).
    let kinds = [Slow::Header, Slow::Body, Slow::Idle];
    let mut slow: Vec<(Slow, TcpStream)> = (0..420)
        .map(|i| {
            let kind = kinds[i % 3];
            let from = format!("127.0.1.{}", 1 + i % 10);
            (kind, open_slow(kind, &from, server.addr))
        })
        .collect();
    let mut greedy: Vec<TcpStream> = (0..80)
        .map(|_| open_slow(Slow::Body, "127.0.2.1", server.addr))
        .collect();
    assert_eq!(slow.len() + greedy.len(), 500);

    // While they hang on (and trickle a byte each now and then), 20 honest terminals fill.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let stop = stop.clone();
        let mut conns: Vec<TcpStream> = slow
            .iter()
            .filter(|(k, _)| *k != Slow::Idle)
            .map(|(_, s)| s.try_clone().unwrap())
            .collect();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for c in &mut conns {
                    let _ = c.write_all(b"a");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let t = Instant::now();
    let honest: Vec<_> = (0..20)
        .map(|_| {
            let (base, trusted) = (base.clone(), f.trusted());
            std::thread::spawn(move || honest_terminal(&base, &trusted, 3))
        })
        .collect();
    let slowest = honest
        .into_iter()
        .map(|h| h.join().expect("an honest terminal failed"))
        .max()
        .unwrap();
    let fill_time = t.elapsed();
    let rss_during = server.rss_kb();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickler.join().unwrap();
    eprintln!(
        "20 honest terminals x 3 fills with 500 slow clients: {fill_time:?}, slowest request {slowest:?}; server RSS {rss_before} KiB -> {rss_during} KiB"
    );
    assert!(
        rss_during < rss_before + SLOW_RSS_BOUND_KB,
        "RSS grew from {rss_before} KiB to {rss_during} KiB"
    );

    // The slow clients are still connected (none was served or dropped for the honest
    // ones' sake): the idle ones got their reply and their connection is open.
    for (kind, s) in slow.iter_mut().filter(|(k, _)| *k == Slow::Idle).take(5) {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200", "{kind:?}");
    }
    // The address over its body bound got 503 + Retry-After for the bodies past it.
    // (They were answered long ago; whatever has not arrived within a moment is not a 503.)
    std::thread::sleep(Duration::from_millis(200));
    let mut refused = 0;
    for s in &mut greedy {
        s.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.starts_with("HTTP/1.1 503") {
            assert!(text.to_lowercase().contains("retry-after: "), "{text}");
            refused += 1;
        }
    }
    assert_eq!(
        refused,
        80 - 64,
        "bodies past the per-address bound are refused"
    );
}

/// Sends `data` repeatedly until the server stops taking it; returns the bytes it took.
fn send_until_refused(s: &mut TcpStream, data: &[u8], max: u64) -> u64 {
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sent = 0;
    while sent < max {
        match s.write(data) {
            Ok(0) | Err(_) => break,
            Ok(n) => sent += n as u64,
        }
    }
    sent
}

/// The status line the server answered with (empty if it closed without one).
fn status_line(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = s.read(&mut byte) {
        if byte[0] == b'\n' {
            break;
        }
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).trim().to_owned()
}

#[test]
fn endless_headers_and_huge_bodies_are_refused_in_bounded_memory() {
    let f = Fixture::new();
    let server = ServerProcess::start(&f, &[]);
    let base = server.base();
    honest_terminal(&base, &f.trusted(), 1);
    let rss_before = server.rss_kb();
    let chunk = vec![b'a'; 64 * 1024];
    const GIB: u64 = 1 << 30;

    // An endless header line: 431 after the 16 KiB bound, then the connection closes.
    let mut s = connect_from("127.0.0.1", server.addr);
    s.write_all(b"GET /manifests/desk/1.json HTTP/1.1\r\nX-Endless: ")
        .unwrap();
    let sent = send_until_refused(&mut s, &chunk, GIB);
    assert!(
        sent < 64 << 20,
        "the server took {sent} bytes of one header line"
    );
    let status = status_line(&mut s);
    eprintln!("endless header: refused after {sent} bytes with {status:?}");
    assert!(
        status.is_empty() || status.starts_with("HTTP/1.1 431"),
        "endless header: {status:?}"
    );

    // A 10 GB Content-Length, logged in or not: 413 before a byte of body is read.
    let token = {
        let r: LoginResponse = ureq::post(&format!("{base}api/v1/login"))
            .send_json(serde_json::json!({"user": "alice", "password": PASSWORD}))
            .unwrap()
            .into_json()
            .unwrap();
        r.token
    };
    let id = f.repo.list_chunks().unwrap()[0].0;
    for (what, head) in [
        (
            "login",
            "POST /api/v1/login HTTP/1.1\r\nHost: r\r\nContent-Length: 10000000000\r\n\r\n".to_owned(),
        ),
        (
            "chunk upload",
            format!(
                "PUT {} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {token}\r\nContent-Length: 10000000000\r\n\r\n",
                chunk_upload_path(&id)
            ),
        ),
        (
            "commit",
            format!(
                "PUT {} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {token}\r\nContent-Length: 10000000000\r\n\r\n",
                user_disk_api_path("desk", "user")
            ),
        ),
    ] {
        let mut s = connect_from("127.0.0.1", server.addr);
        let t = Instant::now();
        s.write_all(head.as_bytes()).unwrap();
        let status = status_line(&mut s);
        assert!(status.starts_with("HTTP/1.1 413"), "{what}: {status:?}");
        assert!(t.elapsed() < HONEST_MAX, "{what}: {:?}", t.elapsed());
        let sent = send_until_refused(&mut s, &chunk, GIB);
        assert!(sent < 64 << 20, "{what}: the server took {sent} bytes of body");
    }

    // An endless chunked body (no Content-Length): 413 at the call's limit.
    let mut s = connect_from("127.0.0.1", server.addr);
    s.write_all(b"POST /api/v1/login HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
    framed.extend_from_slice(&chunk);
    framed.extend_from_slice(b"\r\n");
    let sent = send_until_refused(&mut s, &framed, GIB);
    assert!(sent < 64 << 20, "chunked: the server took {sent} bytes");
    let status = status_line(&mut s);
    assert!(
        status.is_empty() || status.starts_with("HTTP/1.1 413"),
        "chunked: {status:?}"
    );

    let rss_after = server.rss_kb();
    eprintln!("server RSS {rss_before} KiB -> {rss_after} KiB after the hostile requests");
    assert!(
        rss_after < rss_before + HOSTILE_RSS_BOUND_KB,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // And it still serves.
    honest_terminal(&base, &f.trusted(), 1);
}

#[test]
fn connections_past_the_bound_get_503_with_retry_after() {
    let f = Fixture::new();
    let server = ServerProcess::start(&f, &["--max-connections-per-client", "20"]);
    let held: Vec<TcpStream> = (0..20)
        .map(|_| connect_from("127.0.3.1", server.addr))
        .collect();
    // Accepting is asynchronous: give the server a moment to count them.
    std::thread::sleep(Duration::from_millis(300));
    let mut s = connect_from("127.0.3.1", server.addr);
    s.write_all(b"GET /manifests/desk/1.json HTTP/1.1\r\nHost: r\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("Retry-After: "), "{reply}");
    assert!(reply.contains("\"overloaded\""), "{reply}");
    // Another address is served meanwhile.
    let bytes = get(&server.base(), &manifest_path("desk", 1)).unwrap();
    SignedManifest::verify_bytes(&bytes, &f.trusted()).unwrap();
    drop(held);
}
