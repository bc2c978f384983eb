//! `collective-repo serve`: static immutable content plus the JSON API, over HTTP or HTTPS,
//! with an access log.
//!
//! Built for a whole office logging in at once and for clients that are slow or hostile:
//! hyper (HTTP/1.1) on tokio, so a connection costs a task and a small buffer rather than a
//! thread, and a slow client only holds what it was given. The bounds (header size, body
//! size per call, timeouts, connections and bodies per client address, handler threads and
//! their queue) are in [`limits::Limits`]; past them a client gets 503 with `Retry-After`
//! (or 413/431 for something too large), and the others are served as before.
//!
//! Request flow: the connection task reads the header (hyper, bounded in size and time),
//! finds the call, checks the session token and the declared body length, takes a body
//! slot of the client's address, reads the body within its deadline, and only then hands
//! the call to a handler thread (argon2, the file system) from a bounded pool.

pub mod access_log;
mod api;
mod body;
mod credentials;
mod files;
pub mod limits;
pub mod login_limit;
pub mod sessions;
mod timeout_io;
pub mod tls;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use appliance::wire::ApiError;
use appliance::KdfParams;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::error::{Error, Result};
use crate::store::Repo;
use access_log::AccessLog;
pub use body::Body;
use body::{Content, LogLine};
use credentials::Credentials;
pub use limits::Limits;
use limits::{Clients, Slot};
use login_limit::LoginLimiter;
use sessions::Sessions;
use timeout_io::TimeoutIo;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080` (port 0 picks a free one).
    pub listen: String,
    /// PEM certificate chain and private key for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Access log file (`None`: no file, lines still go to the debug log).
    pub access_log: Option<PathBuf>,
    /// API handlers (logins, uploads, commits) running at once; connections and static
    /// files do not take one.
    pub threads: usize,
    /// Session lifetime.
    pub session_ttl: Duration,
    /// argon2 cost of the dummy verification done for unknown users (so that timing does
    /// not tell which user names exist).
    pub dummy_kdf: KdfParams,
    /// Sizes, timeouts and counts (its `handler_threads` is taken from `threads`).
    pub limits: Limits,
}

impl ServeConfig {
    /// Defaults: 8 handler threads, 12-hour sessions, access log in `DIR/logs/access.log`,
    /// [`Limits::default`].
    pub fn new(repo: &Repo, listen: &str) -> ServeConfig {
        ServeConfig {
            listen: listen.to_owned(),
            tls: None,
            access_log: Some(repo.default_access_log()),
            threads: 8,
            session_ttl: Duration::from_secs(12 * 3600),
            dummy_kdf: KdfParams::DEFAULT,
            limits: Limits::default(),
        }
    }
}

/// State shared by every connection and handler.
pub(crate) struct State {
    pub repo: Repo,
    pub sessions: Sessions,
    /// The users' current credentials, against which every token is checked.
    pub credentials: Credentials,
    pub limiter: LoginLimiter,
    pub log: Arc<AccessLog>,
    /// Serializes user-disk commits (compare-and-swap).
    pub commit_lock: Mutex<()>,
    pub dummy_kdf: KdfParams,
    pub dummy_verifier: Mutex<Option<String>>,
    /// For the quota, per user since their last commit: bytes their committed disks held
    /// then, and bytes of new chunks uploaded since.
    pub uploaded: Mutex<std::collections::HashMap<String, (u64, u64)>>,
    pub(crate) limits: Limits,
    clients: Arc<Clients>,
    handlers: Arc<Semaphore>,
    queued: AtomicUsize,
    connections: AtomicUsize,
    max_connections: usize,
}

/// A running server; dropping it stops it.
pub struct RunningServer {
    addr: SocketAddr,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops (it runs until the process ends).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops accepting connections, ends the open ones, and waits for that.
    pub fn shutdown(self) {
        drop(self)
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `listen` with `TCP_NODELAY` set on the listening socket; Linux copies it to every
/// accepted connection. Without it the tail of each response waits for the client's
/// delayed ACK (Nagle): about 40 ms per 64 KiB chunk, 10 MiB/s on loopback.
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

/// Raises the soft open-file limit to the hard one and returns it: every connection is a
/// file descriptor, and the default soft limit (1024) is smaller than an office.
fn raise_file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// Binds and starts serving on a thread of its own (with its own tokio runtime).
pub fn start(repo: Repo, config: &ServeConfig) -> Result<RunningServer> {
    let mut limits = config.limits.clone();
    limits.handler_threads = config.threads.max(1);
    limits.max_header_bytes = limits.max_header_bytes.max(8192);
    let tls = match &config.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
            cert, key,
        )?)),
        None => None,
    };
    let listener = bind_nodelay(&config.listen).map_err(|e| {
        Error::Usage(format!(
            "cannot listen on {}: {e}; pick another address or port",
            config.listen
        ))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", config.listen)))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", config.listen)))?;
    // Room for the files a process needs besides its connections.
    let max_connections = limits
        .max_connections
        .min(raise_file_limit().saturating_sub(128).max(16));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(2, 8),
        )
        .max_blocking_threads(limits.handler_threads + 64)
        .thread_name("collective-serve")
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the server's runtime: {e}")))?;
    let listener = {
        let _guard = runtime.enter();
        TcpListener::from_std(listener)
            .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", config.listen)))?
    };
    let state = Arc::new(State {
        repo,
        sessions: Sessions::new(config.session_ttl),
        credentials: Credentials::default(),
        limiter: LoginLimiter::new(limits.login.clone()),
        log: Arc::new(AccessLog::open(config.access_log.as_deref())?),
        commit_lock: Mutex::new(()),
        dummy_kdf: config.dummy_kdf,
        dummy_verifier: Mutex::new(None),
        uploaded: Mutex::new(std::collections::HashMap::new()),
        handlers: Arc::new(Semaphore::new(limits.handler_threads)),
        limits,
        clients: Arc::new(Clients::default()),
        queued: AtomicUsize::new(0),
        connections: AtomicUsize::new(0),
        max_connections,
    });
    log::info!(
        "serving {} on {}://{addr} (at most {max_connections} connections)",
        state.repo.root().display(),
        if tls.is_some() { "https" } else { "http" }
    );
    let (stop, stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("collective-serve".into())
        .spawn(move || {
            runtime.block_on(accept_loop(listener, state, tls, stopped));
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(|e| Error::Usage(format!("cannot start the server thread: {e}")))?;
    Ok(RunningServer {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Counts a connection for as long as it lives.
struct Open {
    state: Arc<State>,
    _slot: Slot,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.state.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, or the like: back off instead of spinning.
                log::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let n = state.connections.fetch_add(1, Ordering::Relaxed);
        // A trusted proxy carries many clients: only the overall bound applies to it.
        let per_client = if state.limits.trusted_proxies.contains(&peer.ip()) {
            state.max_connections
        } else {
            state.limits.max_connections_per_client
        };
        let slot = if n < state.max_connections {
            state.clients.connection(peer.ip(), per_client)
        } else {
            None
        };
        let Some(slot) = slot else {
            state.connections.fetch_sub(1, Ordering::Relaxed);
            log::warn!("refusing a connection from {peer}: too many connections");
            let plain = tls.is_none();
            let retry = state.limits.retry_after_secs;
            tokio::spawn(refuse(tcp, plain, retry));
            continue;
        };
        let open = Open {
            state: state.clone(),
            _slot: slot,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let io = TimeoutIo::new(tcp, open.state.limits.io_timeout);
            match tls {
                None => serve_connection(io, peer, &open.state).await,
                Some(acceptor) => {
                    let t = open.state.limits.header_timeout;
                    match tokio::time::timeout(t, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, &open.state).await,
                        Ok(Err(e)) => log::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => log::debug!("TLS handshake with {peer} timed out"),
                    }
                }
            }
            drop(open);
        });
    }
}

/// Answers a connection the server has no room for: a 503 on plain HTTP (best effort,
/// within a second), then closes it.
async fn refuse(mut tcp: TcpStream, plain: bool, retry: u64) {
    if plain {
        let mut e = ApiError::new(
            "overloaded",
            format!("the repository has too many connections: try again in {retry} s"),
        );
        e.retry_after_secs = Some(retry);
        let body = serde_json::to_string(&e).unwrap_or_default();
        let msg = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: {retry}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(msg.as_bytes())).await;
    }
}

async fn serve_connection<I>(io: I, peer: SocketAddr, state: &Arc<State>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = state.clone();
    let service = hyper::service::service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(handle(st, req, peer).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_timeout)
        .max_buf_size(state.limits.max_header_bytes)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = conn.await {
        log::debug!("connection from {peer}: {e}");
    }
}

/// What a handler answers.
pub(crate) enum Reply {
    /// JSON body.
    Json(u16, Vec<u8>),
    /// An immutable file (or only its length, for HEAD).
    File(Option<Box<Content>>, u64, &'static str),
    /// Status without body.
    Empty(u16),
    /// An error body, with an optional Retry-After.
    Error(u16, ApiError),
}

impl Reply {
    pub(crate) fn json<T: serde::Serialize>(status: u16, v: &T) -> Reply {
        match serde_json::to_vec(v) {
            Ok(b) => Reply::Json(status, b),
            Err(e) => Reply::err(500, "internal", format!("cannot encode the reply: {e}")),
        }
    }
    pub(crate) fn err(status: u16, code: &str, msg: impl Into<String>) -> Reply {
        Reply::Error(status, ApiError::new(code, msg))
    }
    /// 503 with `Retry-After`: the server is at one of its limits.
    pub(crate) fn overloaded(state: &State, why: &str) -> Reply {
        let secs = state.limits.retry_after_secs;
        let mut e = ApiError::new("overloaded", format!("{why}: try again in {secs} s"));
        e.retry_after_secs = Some(secs);
        Reply::Error(503, e)
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let peer = state.limits.client(peer, forwarded);
    let reply = route(&state, req, &method, &path, peer).await;
    let mut line = LogLine {
        log: state.log.clone(),
        peer: peer.to_string(),
        method,
        path,
        status: 0,
        bytes: 0,
        start,
    };
    let json = HeaderValue::from_static("application/json");
    let (status, content, headers): (u16, Content, Vec<(&str, HeaderValue)>) = match reply {
        Reply::Json(status, body) => {
            line.bytes = body.len() as u64;
            (status, Content::bytes(body), vec![("content-type", json)])
        }
        Reply::File(content, len, ctype) => {
            line.bytes = if content.is_some() { len } else { 0 };
            let mut h = vec![
                ("content-type", HeaderValue::from_static(ctype)),
                (
                    "cache-control",
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
            ];
            if content.is_none() {
                h.push(("content-length", HeaderValue::from(len)));
            }
            (200, content.map_or_else(Content::empty, |c| *c), h)
        }
        Reply::Empty(status) => (status, Content::empty(), vec![]),
        Reply::Error(status, err) => {
            let mut h = vec![("content-type", json)];
            if let Some(s) = err.retry_after_secs {
                h.push(("retry-after", HeaderValue::from(s)));
            }
            // The body may not have been read: do not try to read the next request after it.
            if matches!(status, 408 | 413 | 503) {
                h.push(("connection", HeaderValue::from_static("close")));
            }
            let body = serde_json::to_vec(&err).unwrap_or_default();
            line.bytes = body.len() as u64;
            (status, Content::bytes(body), h)
        }
    };
    line.status = status;
    let mut resp = Response::new(Body::new(content, Some(line)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in headers {
        resp.headers_mut().insert(k, v);
    }
    resp
}

async fn route(
    state: &Arc<State>,
    req: Request<Incoming>,
    method: &str,
    path: &str,
    peer: SocketAddr,
) -> Reply {
    if path.starts_with("/api/") {
        return api_call(state, req, method, path, peer).await;
    }
    match method {
        "GET" | "HEAD" => static_file(state, path, method == "HEAD").await,
        _ => Reply::err(
            405,
            "bad_request",
            format!("{method} is not allowed on {path}: immutable content is read-only"),
        ),
    }
}

/// Files up to this size are read in one go; larger ones are streamed.
const READ_WHOLE: u64 = 1 << 20;

async fn static_file(state: &Arc<State>, path: &str, head: bool) -> Reply {
    let (file, ctype) = match files::resolve(&state.repo, path) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let opened = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        use std::io::Read;
        let mut f = std::fs::File::open(&file)?;
        let len = f.metadata()?.len();
        if head {
            return Ok((None, len));
        }
        if len <= READ_WHOLE {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf)?;
            return Ok((Some(Content::bytes(buf)), len));
        }
        Ok((Some(Content::file(tokio::fs::File::from_std(f), len)), len))
    })
    .await;
    match opened {
        Ok(Ok((content, len))) => {
            let len = match &content {
                Some(Content::Bytes(b)) => b.as_ref().map_or(0, |b| b.len() as u64),
                _ => len,
            };
            Reply::File(content.map(Box::new), len, ctype)
        }
        _ => files::not_found(path),
    }
}

fn peer_ip(peer: SocketAddr) -> IpAddr {
    peer.ip()
}

async fn api_call(
    state: &Arc<State>,
    req: Request<Incoming>,
    method: &str,
    path: &str,
    peer: SocketAddr,
) -> Reply {
    let call = match api::parse(method, path) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (user, token) = if call.needs_auth() {
        let auth = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match api::authenticate(state, auth) {
            Ok(ut) => ut,
            Err(r) => return r,
        }
    } else {
        (String::new(), String::new())
    };
    let limit = if call.limit_reads_files() {
        let (c, u) = (call.clone(), user.clone());
        match run_handler(state, move |s| c.body_limit(s, &u)).await {
            Ok(l) => l,
            Err(r) => return r,
        }
    } else {
        match call.body_limit(state, &user) {
            Ok(l) => l,
            Err(r) => return r,
        }
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit);
    }
    let has_body = !hyper::body::Body::is_end_stream(req.body());
    let body = if has_body {
        let Some(slot) = state
            .clients
            .body(peer_ip(peer), state.limits.max_bodies_per_client)
        else {
            log::warn!("refusing a request body from {peer}: too many bodies in flight from it");
            return Reply::overloaded(
                state,
                &format!(
                    "{} requests from your address are sending their bodies already",
                    state.limits.max_bodies_per_client
                ),
            );
        };
        let deadline = state
            .limits
            .body_timeout(declared.unwrap_or(limit as u64).min(limit as u64));
        let body = read_body(req.into_body(), limit, deadline).await;
        drop(slot);
        match body {
            Ok(b) => b,
            Err(r) => return r,
        }
    } else {
        Bytes::new()
    };
    run_handler(state, move |s| {
        Ok::<_, Reply>(api::handle(s, call, &user, &token, &body, peer))
    })
    .await
    .unwrap_or_else(|r| r)
}

fn too_large(limit: usize) -> Reply {
    Reply::err(
        413,
        "too_large",
        format!("the body is larger than this call's {limit}-byte limit"),
    )
}

/// Reads a whole body of at most `limit` bytes within `deadline`.
async fn read_body(
    mut body: Incoming,
    limit: usize,
    deadline: Duration,
) -> std::result::Result<Bytes, Reply> {
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Reply::err(
                    400,
                    "bad_request",
                    format!("cannot read the request body: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large(limit));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(Reply::err(
            408,
            "timeout",
            format!(
                "the request body did not arrive within {} s",
                deadline.as_secs()
            ),
        )),
    }
}

/// Runs `f` on a handler thread once one is free. At most `max_queued` requests wait, for
/// at most `queue_timeout`; the others get 503 at once.
async fn run_handler<T, F>(state: &Arc<State>, f: F) -> std::result::Result<T, Reply>
where
    T: Send + 'static,
    F: FnOnce(&State) -> std::result::Result<T, Reply> + Send + 'static,
{
    let waiting = state.queued.fetch_add(1, Ordering::Relaxed);
    if waiting >= state.limits.max_queued {
        state.queued.fetch_sub(1, Ordering::Relaxed);
        return Err(Reply::overloaded(state, "the repository is busy"));
    }
    let permit = tokio::time::timeout(
        state.limits.queue_timeout,
        state.handlers.clone().acquire_owned(),
    )
    .await;
    state.queued.fetch_sub(1, Ordering::Relaxed);
    let permit = match permit {
        Ok(Ok(p)) => p,
        _ => return Err(Reply::overloaded(state, "the repository is busy")),
    };
    let st = state.clone();
    match tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f(&st)
    })
    .await
    {
        Ok(r) => r,
        Err(e) => {
            log::error!("a handler failed: {e}");
            Err(Reply::err(
                500,
                "internal",
                "the repository failed on this request",
            ))
        }
    }
}
