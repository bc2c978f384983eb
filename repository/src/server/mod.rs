//! `collective-repo serve`: static immutable content plus the JSON API, over HTTP or HTTPS
//! (tiny_http, rustls), with an access log.

pub mod access_log;
mod api;
mod files;
pub mod sessions;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use appliance::wire::ApiError;
use appliance::KdfParams;
use tiny_http::{Header, Request, Response, Server, StatusCode};

use crate::error::{Error, Result};
use crate::store::Repo;
use access_log::AccessLog;
use sessions::{RateLimiter, Sessions};

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080` (port 0 picks a free one).
    pub listen: String,
    /// PEM certificate chain and private key for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Access log file (`None`: no file, lines still go to the debug log).
    pub access_log: Option<PathBuf>,
    /// Worker threads.
    pub threads: usize,
    /// Session lifetime.
    pub session_ttl: Duration,
    /// argon2 cost of the dummy verification done for unknown users (so that timing does
    /// not tell which user names exist).
    pub dummy_kdf: KdfParams,
}

impl ServeConfig {
    /// Defaults: 8 threads, 12-hour sessions, access log in `DIR/logs/access.log`.
    pub fn new(repo: &Repo, listen: &str) -> ServeConfig {
        ServeConfig {
            listen: listen.to_owned(),
            tls: None,
            access_log: Some(repo.default_access_log()),
            threads: 8,
            session_ttl: Duration::from_secs(12 * 3600),
            dummy_kdf: KdfParams::DEFAULT,
        }
    }
}

/// State shared by the worker threads.
pub(crate) struct State {
    pub repo: Repo,
    pub sessions: Sessions,
    pub limiter: RateLimiter,
    pub log: AccessLog,
    /// Serializes user-disk commits (compare-and-swap).
    pub commit_lock: Mutex<()>,
    pub dummy_kdf: KdfParams,
    pub dummy_verifier: Mutex<Option<String>>,
}

/// A running server.
pub struct RunningServer {
    addr: SocketAddr,
    server: Arc<Server>,
    workers: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops (it runs until the process ends).
    pub fn wait(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }

    /// Stops accepting requests and waits for the workers.
    pub fn shutdown(self) {
        for _ in &self.workers {
            self.server.unblock();
        }
        self.wait();
    }
}

/// Binds `listen` with `TCP_NODELAY` set on the listening socket; Linux copies it to every
/// accepted connection. tiny_http never sets it, and without it the tail of each response
/// waits for the client's delayed ACK (Nagle): about 40 ms per 64 KiB chunk, 10 MiB/s on
/// loopback.
fn bind_nodelay(listen: &str) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind(listen)?;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd owned by `listener`, and a pointer to a live c_int of the
    // size passed.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        log::warn!(
            "cannot set TCP_NODELAY on {listen}: {}; responses may be slow",
            std::io::Error::last_os_error()
        );
    }
    Ok(listener)
}

/// Binds and starts the worker threads.
pub fn start(repo: Repo, config: &ServeConfig) -> Result<RunningServer> {
    let listener = bind_nodelay(&config.listen).map_err(|e| {
        Error::Usage(format!(
            "cannot listen on {}: {e}; pick another address or port",
            config.listen
        ))
    })?;
    let server = match &config.tls {
        None => Server::from_listener(listener, None),
        Some((cert, key)) => {
            let certificate = std::fs::read(cert).map_err(|e| Error::Input {
                what: "TLS certificate",
                path: cert.clone(),
                why: e.to_string(),
            })?;
            let private_key = std::fs::read(key).map_err(|e| Error::Input {
                what: "TLS key",
                path: key.clone(),
                why: e.to_string(),
            })?;
            Server::from_listener(
                listener,
                Some(tiny_http::SslConfig {
                    certificate,
                    private_key,
                }),
            )
        }
    }
    .map_err(|e| {
        Error::Usage(format!(
            "cannot listen on {}: {e}; pick another address or port",
            config.listen
        ))
    })?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| Error::Usage(format!("{} is not an IP address", config.listen)))?;
    let server = Arc::new(server);
    let state = Arc::new(State {
        repo,
        sessions: Sessions::new(config.session_ttl),
        limiter: RateLimiter::default(),
        log: AccessLog::open(config.access_log.as_deref())?,
        commit_lock: Mutex::new(()),
        dummy_kdf: config.dummy_kdf,
        dummy_verifier: Mutex::new(None),
    });
    let workers = (0..config.threads.max(1))
        .map(|_| {
            let server = server.clone();
            let state = state.clone();
            std::thread::spawn(move || loop {
                match server.recv() {
                    Ok(req) => handle(&state, req),
                    Err(e) => {
                        log::debug!("serve: {e}");
                        break;
                    }
                }
            })
        })
        .collect();
    log::info!(
        "serving {} on {}://{addr}",
        state.repo.root().display(),
        if config.tls.is_some() {
            "https"
        } else {
            "http"
        }
    );
    Ok(RunningServer {
        addr,
        server,
        workers,
    })
}

/// What a handler answers.
pub(crate) enum Reply {
    /// JSON body.
    Json(u16, Vec<u8>),
    /// An immutable file.
    File(std::fs::File, u64, &'static str),
    /// Status without body.
    Empty(u16),
    /// An error body, with an optional Retry-After.
    Error(u16, ApiError),
}

impl Reply {
    pub(crate) fn json<T: serde::Serialize>(status: u16, v: &T) -> Reply {
        match serde_json::to_vec(v) {
            Ok(b) => Reply::Json(status, b),
            Err(e) => Reply::Error(
                500,
                ApiError::new("internal", format!("cannot encode the reply: {e}")),
            ),
        }
    }
    pub(crate) fn err(status: u16, code: &str, msg: impl Into<String>) -> Reply {
        Reply::Error(status, ApiError::new(code, msg))
    }
}

fn header(k: &str, v: &str) -> Header {
    Header::from_bytes(k.as_bytes(), v.as_bytes())
        .expect("static header names and ASCII values are valid")
}

fn handle(state: &State, mut req: Request) {
    let start = Instant::now();
    let peer = req
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    let method = req.method().as_str().to_owned();
    let path = req.url().split('?').next().unwrap_or("").to_owned();
    let reply = route(state, &mut req, &method, &path, &peer);
    let (status, bytes) = match reply {
        Reply::Json(status, body) => {
            let n = body.len() as u64;
            let r = Response::from_data(body)
                .with_status_code(StatusCode(status))
                .with_header(header("Content-Type", "application/json"));
            respond(req, r);
            (status, n)
        }
        Reply::File(file, len, ctype) => {
            let r = Response::from_file(file)
                .with_header(header("Content-Type", ctype))
                .with_header(header(
                    "Cache-Control",
                    "public, max-age=31536000, immutable",
                ));
            let n = if method == "HEAD" { 0 } else { len };
            respond(req, r);
            (200, n)
        }
        Reply::Empty(status) => {
            respond(req, Response::empty(StatusCode(status)));
            (status, 0)
        }
        Reply::Error(status, err) => {
            let retry = err.retry_after_secs;
            let body = serde_json::to_vec(&err).unwrap_or_default();
            let n = body.len() as u64;
            let mut r = Response::from_data(body)
                .with_status_code(StatusCode(status))
                .with_header(header("Content-Type", "application/json"));
            if let Some(s) = retry {
                r = r.with_header(header("Retry-After", &s.to_string()));
            }
            respond(req, r);
            (status, n)
        }
    };
    state
        .log
        .record(&peer, &method, &path, status, bytes, start.elapsed());
}

fn respond<R: Read>(req: Request, r: Response<R>) {
    if let Err(e) = req.respond(r) {
        log::debug!("client went away: {e}");
    }
}

fn route(state: &State, req: &mut Request, method: &str, path: &str, peer: &str) -> Reply {
    if path.starts_with("/api/") {
        return api::route(state, req, method, path, peer);
    }
    match method {
        "GET" | "HEAD" => files::serve(&state.repo, path),
        _ => Reply::err(
            405,
            "bad_request",
            format!("{method} is not allowed on {path}: immutable content is read-only"),
        ),
    }
}
