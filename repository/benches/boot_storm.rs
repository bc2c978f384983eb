//! `cargo bench -p repository --bench boot_storm`: a whole office logs in at 9 a.m.
//!
//! N terminals (`STORM_SIZES`, default 1,10,50,200) log in at the same moment and fill
//! their caches with the same appliance, each a real `receiver::login` + `fill` into its
//! own file-backed cachefs, over real HTTPS sockets, against a real `collective-repo
//! serve` (a child process, TLS). The office's uplink is a shaped link: a TCP relay in
//! this process with one bandwidth cap per direction shared by every connection
//! (`STORM_LINK_MBIT`, default 100) and a one-way delay (`STORM_LATENCY_MS`, default 10).
//! Each N runs in two configurations:
//!
//! - `direct`: every terminal talks to the repository through the link. Each terminal
//!   has its own source address at the repository (127.1.x.y), as in a routed office.
//! - `site`: the terminals talk to the nginx site cache (`deploy/nginx/site-cache.conf`
//!   as shipped, only ports, paths and certificate substituted), which reaches the
//!   repository through the link. The site cache starts empty for each N: a new version
//!   was published overnight.
//!
//! Per N it prints the lone terminal's time (N = 1 of the same configuration, same run),
//! the median and worst terminal's login + fill time, worst / lone, bytes over the link
//! against N × the appliance, the 503s and other errors seen at the repository and the
//! site cache, the receivers' retries, and CPU seconds of the server, nginx and this
//! process (terminals and relay). The aim: at N = 200 the worst terminal within 2 × the
//! lone terminal's time.
//!
//! Other settings: `STORM_MIB` (system image of random data, default 4),
//! `STORM_KDF` (`real`, the default: users' verifiers with the production argon2id
//! parameters; `fast`: the tests' cheap ones), `STORM_CONFIGS` (default `direct,site`),
//! `STORM_KEEP=1` keeps the temporary directory. `RUST_LOG` for the receivers' logs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use appliance::KdfParams;
use common::nginx::{free_port, make_cert, nginx_missing, site_conf, Nginx};
use common::process::{cpu_secs, ServerProcess};
use common::{bytes, Fixture, PASSWORD};
use receiver::{FillOptions, RepoConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{sleep, sleep_until, Instant};

const APPLIANCE: &str = "storm";
/// What the relay reads at once: one piece through the link's queue.
const PIECE: usize = 16 * 1024;
/// The link's burst: what may pass at once after a quiet moment.
const BURST: f64 = 64.0 * 1024.0;

struct Settings {
    sizes: Vec<usize>,
    mib: usize,
    link_mbit: f64,
    latency: Duration,
    real_kdf: bool,
    configs: Vec<String>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: not a valid value")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let list = |name: &str, default: &str| -> Vec<String> {
            std::env::var(name)
                .unwrap_or_else(|_| default.to_owned())
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let mut sizes: Vec<usize> = list("STORM_SIZES", "1,10,50,200")
            .iter()
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|_| panic!("STORM_SIZES: {s:?} is not a number"))
            })
            .filter(|&n| n > 0)
            .collect();
        // The lone terminal is every configuration's baseline: always measured, first.
        sizes.retain(|&n| n != 1);
        sizes.insert(0, 1);
        let kdf = std::env::var("STORM_KDF").unwrap_or_else(|_| "real".into());
        assert!(
            kdf == "real" || kdf == "fast",
            "STORM_KDF={kdf:?}: real or fast"
        );
        Settings {
            sizes,
            mib: env_or("STORM_MIB", 4),
            link_mbit: env_or("STORM_LINK_MBIT", 100.0),
            latency: Duration::from_millis(env_or("STORM_LATENCY_MS", 10)),
            real_kdf: kdf == "real",
            configs: list("STORM_CONFIGS", "direct,site"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The shaped link.

/// One direction of the link: a token bucket every connection shares. A piece waits its
/// turn (the lock is FIFO) and then until the bucket has paid for it, so pieces of all
/// connections leave interleaved at the link's rate.
struct Direction {
    /// Bytes per second; 0: unlimited.
    rate: f64,
    bucket: tokio::sync::Mutex<(f64, Instant)>,
    bytes: AtomicU64,
}

impl Direction {
    fn new(rate: f64) -> Direction {
        Direction {
            rate,
            bucket: tokio::sync::Mutex::new((BURST, Instant::now())),
            bytes: AtomicU64::new(0),
        }
    }

    async fn pass(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if self.rate <= 0.0 {
            return;
        }
        let mut b = self.bucket.lock().await;
        let now = Instant::now();
        let (tokens, last) = *b;
        let tokens = (tokens + (now - last).as_secs_f64() * self.rate).min(BURST) - n as f64;
        *b = (tokens, now);
        if tokens < 0.0 {
            // Pay the debt while holding the lock: the next piece waits behind this one.
            sleep(Duration::from_secs_f64(-tokens / self.rate)).await;
        }
    }
}

struct Link {
    /// Repository to office.
    down: Direction,
    /// Office to repository.
    up: Direction,
    /// One-way delay.
    latency: Duration,
}

/// Copies `from` to `to` through `dir`: each piece is delivered `latency` after it was
/// read, once the link has carried it. At most 8 pieces wait per connection (a socket
/// buffer), so a full link pushes back on the sender as TCP would.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dir: &Direction,
    latency: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(8);
    let read = async move {
        loop {
            let mut buf = vec![0u8; PIECE];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send((Instant::now() + latency, buf)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, buf)) = rx.recv().await {
            sleep_until(due).await;
            dir.pass(buf.len()).await;
            if to.write_all(&buf).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// One connection across the link, from `source` (None: the relay's own address).
async fn relay_connection(
    client: TcpStream,
    source: Option<IpAddr>,
    upstream: SocketAddr,
    link: Arc<Link>,
) {
    // The TCP handshake across the link costs a round trip.
    sleep(link.latency * 2).await;
    let connect = async {
        let sock = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            sock.bind(SocketAddr::new(ip, 0))?;
        }
        sock.connect(upstream).await
    };
    let up = match connect.await {
        Ok(s) => s,
        Err(e) => {
            log::warn!("relay: connect to {upstream} from {source:?}: {e}");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    tokio::join!(
        pipe(cr, uw, &link.up, link.latency),
        pipe(ur, cw, &link.down, link.latency)
    );
}

/// The relay: listeners on the office side, each with the source address its
/// connections get at the repository. Dropping it stops accepting.
struct Relay {
    link: Arc<Link>,
    ports: Vec<u16>,
    /// The accept loops, aborted on drop.
    _accept: tokio::task::JoinSet<()>,
}

impl Relay {
    fn start(
        rt: &tokio::runtime::Runtime,
        sources: &[Option<IpAddr>],
        upstream: SocketAddr,
        settings: &Settings,
    ) -> Relay {
        let rate = settings.link_mbit * 1e6 / 8.0;
        let link = Arc::new(Link {
            down: Direction::new(rate),
            up: Direction::new(rate),
            latency: settings.latency,
        });
        let mut accept = tokio::task::JoinSet::new();
        let mut ports = Vec::new();
        for &source in sources {
            let listener = rt.block_on(async {
                let s = TcpSocket::new_v4().expect("relay socket");
                s.bind("127.0.0.1:0".parse().expect("address"))
                    .expect("relay bind");
                s.listen(1024).expect("relay listen")
            });
            ports.push(listener.local_addr().expect("relay address").port());
            let link = link.clone();
            accept.spawn_on(accept_loop(listener, source, upstream, link), rt.handle());
        }
        Relay {
            link,
            ports,
            _accept: accept,
        }
    }

    fn down_bytes(&self) -> u64 {
        self.link.down.bytes.load(Ordering::Relaxed)
    }
}

async fn accept_loop(
    listener: TcpListener,
    source: Option<IpAddr>,
    upstream: SocketAddr,
    link: Arc<Link>,
) {
    loop {
        match listener.accept().await {
            Ok((c, _)) => {
                tokio::spawn(relay_connection(c, source, upstream, link.clone()));
            }
            Err(e) => {
                log::warn!("relay: accept: {e}");
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Terminals.

#[derive(Clone, Debug, Default)]
struct Outcome {
    login: Duration,
    total: Duration,
    retries: u64,
    error: Option<String>,
}

/// One terminal: waits for the others, then logs in and fills its cache completely.
fn terminal(
    cache: Arc<cachefs::Cache>,
    config: RepoConfig,
    user: String,
    start: Arc<Barrier>,
) -> Outcome {
    start.wait();
    let t = std::time::Instant::now();
    let mut out = Outcome::default();
    let session = match receiver::login(cache.clone(), &config, &user, PASSWORD) {
        Ok(s) if s.is_offline() => {
            out.error = Some(s.status_line());
            return out;
        }
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("login: {e}"));
            return out;
        }
    };
    out.login = t.elapsed();
    let Some(client) = session.client.clone() else {
        out.error = Some("online session without a client".into());
        return out;
    };
    let fill = receiver::fill::start(
        cache,
        receiver::Fetcher::new(client),
        &session.set,
        FillOptions::default(),
    );
    match fill.wait() {
        Ok(p) => {
            out.retries = p.fetch.retries;
            if p.done_bytes != p.total_bytes || p.failed_chunks > 0 {
                out.error = Some(format!(
                    "incomplete: {} of {} bytes, {} failed chunks",
                    p.done_bytes, p.total_bytes, p.failed_chunks
                ));
            }
        }
        Err(e) => out.error = Some(format!("fill: {e}")),
    }
    out.total = t.elapsed();
    out
}

// ---------------------------------------------------------------------------------------
// Logs.

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Errors in the server's access log (`TIME PEER METHOD PATH STATUS ...`) after line
/// `from`: (503s to logins, 503s to other requests, other 4xx/5xx but 404).
fn server_errors(log: &Path, from: usize) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for l in lines(log).iter().skip(from) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let status: u16 = f.get(4).and_then(|s| s.parse().ok()).unwrap_or(0);
        match status {
            503 if f.get(3) == Some(&appliance::wire::LOGIN_PATH) => c.0 += 1,
            503 => c.1 += 1,
            404 => {}
            s if s >= 400 => c.2 += 1,
            _ => {}
        }
    }
    c
}

/// The site cache's log (`ADDR [TIME] "REQUEST" STATUS BYTES SECS cache=X up=Y`): (5xx
/// answers, the repository's passed through included; chunk misses; chunk hits).
fn site_counts(log: &Path) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for l in lines(log) {
        let mut parts = l.split('"');
        let request = parts.nth(1).unwrap_or("");
        let status: u16 = parts
            .next()
            .and_then(|r| r.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status >= 500 {
            c.0 += 1;
        }
        if request.starts_with("GET /chunks/") {
            if l.contains(" cache=MISS ") {
                c.1 += 1;
            } else if l.contains(" cache=HIT ") {
                c.2 += 1;
            }
        }
    }
    c
}

// ---------------------------------------------------------------------------------------
// One run of N terminals in one configuration.

struct Row {
    config: String,
    n: usize,
    times: Vec<Duration>,
    logins: Vec<Duration>,
    failed: Vec<String>,
    down: u64,
    /// 503s at the repository: to logins, to other requests; other errors there.
    login_503: usize,
    other_503: usize,
    other_errors: usize,
    /// The site cache: 5xx answers, chunk misses, chunk hits.
    site: Option<(usize, usize, usize)>,
    retries: u64,
    cpu_server: f64,
    cpu_nginx: f64,
    cpu_self: f64,
    wall: Duration,
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn worst(v: &[Duration]) -> Duration {
    v.iter().max().copied().unwrap_or_default()
}

struct Bench {
    settings: Settings,
    // Before the fixture: the server stops before its directory goes.
    server: ServerProcess,
    f: Fixture,
    cert: PathBuf,
    key: PathBuf,
    rt: tokio::runtime::Runtime,
    trusted: Vec<appliance::PublicKey>,
    cache_size: u64,
}

impl Bench {
    fn run(&self, config: &str, n: usize) -> Row {
        let dir = self.f.path(&format!("{config}-{n}"));
        std::fs::create_dir_all(&dir).expect("phase directory");
        // The terminals' caches exist before 9 a.m. (formatted at first boot): untimed.
        let caches: Vec<Arc<cachefs::Cache>> = (0..n)
            .map(|i| {
                let p = dir.join(format!("cache-{i}.img"));
                let dev = cachefs::FileStorage::create_file(&p, self.cache_size)
                    .expect("create a cache file");
                drop(
                    cachefs::Cache::create(Box::new(dev), cachefs::CreateOptions::default())
                        .expect("format a cache"),
                );
                receiver::open_cache(&p, true).expect("open a cache")
            })
            .collect();

        let server_log = self.f.path("access.log");
        let log_from = lines(&server_log).len();
        let (relay, site, urls): (Relay, Option<Nginx>, Vec<String>) = match config {
            "direct" => {
                // Terminal i at 127.1.(i / 250).(i % 250 + 1): an address of its own.
                let sources: Vec<Option<IpAddr>> = (0..n)
                    .map(|i| {
                        Some(IpAddr::V4(Ipv4Addr::new(
                            127,
                            1,
                            (i / 250) as u8,
                            (i % 250 + 1) as u8,
                        )))
                    })
                    .collect();
                let relay = Relay::start(&self.rt, &sources, self.server.addr, &self.settings);
                let urls = relay
                    .ports
                    .iter()
                    .map(|p| format!("https://127.0.0.1:{p}/"))
                    .collect();
                (relay, None, urls)
            }
            _ => {
                let relay = Relay::start(&self.rt, &[None], self.server.addr, &self.settings);
                let port = free_port();
                let prefix = dir.join("site");
                let conf = site_conf(&prefix, port, relay.ports[0], &self.cert, &self.key);
                let nginx = Nginx::start_with(prefix, port, &conf, 4096);
                let url = nginx.base();
                (relay, Some(nginx), vec![url; n])
            }
        };
        let nginx_pid = site.as_ref().map(|s| s.child.id());
        let cpu = |pid: Option<u32>| pid.map(cpu_secs).unwrap_or(0.0);
        let (s0, g0, m0) = (
            self.server.cpu_secs(),
            cpu(nginx_pid),
            cpu_secs(std::process::id()),
        );

        let start = Arc::new(Barrier::new(n + 1));
        let t0 = std::time::Instant::now();
        let outcomes: Vec<Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = caches
                .iter()
                .enumerate()
                .map(|(i, cache)| {
                    let mut cfg = RepoConfig::new(&urls[i], self.trusted.clone());
                    cfg.ca_pem = Some(self.cert.clone());
                    let (cache, start, user) = (cache.clone(), start.clone(), user_name(i));
                    std::thread::Builder::new()
                        .name(format!("terminal-{i}"))
                        .spawn_scoped(s, move || terminal(cache, cfg, user, start))
                        .expect("start a terminal thread")
                })
                .collect();
            start.wait();
            handles
                .into_iter()
                .map(|h| h.join().expect("a terminal thread panicked"))
                .collect()
        });
        let wall = t0.elapsed();
        let (s1, g1, m1) = (
            self.server.cpu_secs(),
            cpu(nginx_pid),
            cpu_secs(std::process::id()),
        );
        // The server appends its log line after the reply: give the last ones a moment.
        std::thread::sleep(Duration::from_millis(300));
        let (login_503, other_503, other_errors) = server_errors(&server_log, log_from);
        let row = Row {
            config: config.to_owned(),
            n,
            times: outcomes.iter().map(|o| o.total).collect(),
            logins: outcomes.iter().map(|o| o.login).collect(),
            failed: outcomes.iter().filter_map(|o| o.error.clone()).collect(),
            down: relay.down_bytes(),
            login_503,
            other_503,
            other_errors,
            site: site
                .as_ref()
                .map(|s| site_counts(&s.log("collective-site.access.log"))),
            retries: outcomes.iter().map(|o| o.retries).sum(),
            cpu_server: s1 - s0,
            cpu_nginx: g1 - g0,
            cpu_self: m1 - m0,
            wall,
        };
        drop(site);
        drop(relay);
        drop(caches);
        let _ = std::fs::remove_dir_all(&dir);
        row
    }
}

fn user_name(i: usize) -> String {
    format!("term{i:03}")
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too: only bench
    // when asked to.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = env_logger::builder()
        .filter_level(log::LevelFilter::Warn)
        .parse_default_env()
        .try_init();
    let settings = Settings::from_env();
    let mut configs = settings.configs.clone();
    if configs.iter().any(|c| c == "site") && nginx_missing() {
        println!("site cache: nginx is not installed; the `site` column is SKIPPED");
        configs.retain(|c| c != "site");
    }
    for c in &configs {
        assert!(
            c == "direct" || c == "site",
            "STORM_CONFIGS: {c:?} is neither direct nor site"
        );
    }
    let max_n = settings.sizes.iter().copied().max().unwrap_or(1);

    // The repository: the fixture's repository plus appliance `storm` (a system image of
    // random data: every chunk distinct and incompressible) and a user per terminal.
    let t = std::time::Instant::now();
    let f = Fixture::new();
    let image = bytes(2026, settings.mib << 20, false);
    f.publish(APPLIANCE, &image);
    drop(image);
    // The server's password verifier as configured. The data key's wrap is opened by each
    // terminal on its own CPU (argon2id, 64 MiB): 200 simulated terminals sharing this
    // machine's cores and memory would measure the simulation, not the repository, so
    // the wrap is always cheap here.
    let kdf = if settings.real_kdf {
        KdfParams::DEFAULT
    } else {
        KdfParams::INSECURE_FOR_TESTS
    };
    let wrap = KdfParams::INSECURE_FOR_TESTS;
    let users_t = std::time::Instant::now();
    for i in 0..max_n {
        repository::users::add(&f.repo, &user_name(i), PASSWORD, kdf, wrap).expect("add a user");
        repository::users::assign(&f.repo, &user_name(i), &[APPLIANCE.into()])
            .expect("assign the appliance");
    }
    // One argon2id hash each (and a file write): what a login costs the server twice.
    let per_user = users_t.elapsed() / max_n as u32;
    // What one terminal needs: the manifest and every distinct chunk, as stored.
    let manifest_bytes =
        std::fs::read(f.repo.manifest_file(APPLIANCE, 1)).expect("the published manifest");
    let manifest = appliance::SignedManifest::verify_bytes(&manifest_bytes, &f.trusted())
        .expect("the manifest verifies");
    let mut ids = manifest.kernel.distinct_chunks();
    for d in &manifest.disks {
        for id in d.image.distinct_chunks() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let public = f.repo.public();
    let appliance_bytes: u64 = manifest_bytes.len() as u64
        + ids
            .iter()
            .map(|id| {
                std::fs::metadata(public.join(appliance::wire::chunk_path(id)))
                    .expect("a stored chunk")
                    .len()
            })
            .sum::<u64>();
    let (cert, key) = make_cert(&f.path(""));
    let server = ServerProcess::start(
        &f,
        &[
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
    );
    println!(
        "boot storm: appliance `{APPLIANCE}` = {} distinct chunks, {:.2} MiB as stored (with its manifest); \
         {max_n} users ({} KDF, {:.1} ms to add each), set up in {:.1} s",
        ids.len(),
        mib(appliance_bytes),
        if settings.real_kdf { "production argon2id" } else { "fast test" },
        per_user.as_secs_f64() * 1000.0,
        t.elapsed().as_secs_f64()
    );
    println!(
        "link: {} Mbit/s each way, {} ms one way; repository {} (TLS, 8 handler threads); sizes {:?}; configurations {:?}",
        settings.link_mbit,
        settings.latency.as_millis(),
        server.base(),
        settings.sizes,
        configs
    );
    println!(
        "lone terminal on an idle link, at best: {:.2} s of transfer",
        appliance_bytes as f64 / (settings.link_mbit * 1e6 / 8.0)
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let bench = Bench {
        cache_size: ((settings.mib as u64) << 21) + (64 << 20),
        settings,
        trusted: f.trusted(),
        f,
        server,
        cert,
        key,
        rt,
    };

    println!();
    println!("| config | N | lone s | median s | worst s | worst / lone | login median / worst s | fill median / worst s | over the link MiB (× N·appliance) | repository 503s: login / other; other errors | site cache: 5xx, chunk misses / hits | fill retries | failed | CPU s: server / nginx / terminals+relay |");
    println!(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let mut verdicts = Vec::new();
    for config in &configs {
        let mut lone = Duration::ZERO;
        let mut last: Option<(usize, f64)> = None;
        for &n in &bench.settings.sizes {
            let row = bench.run(config, n);
            if n == 1 {
                lone = worst(&row.times);
            }
            let ratio = worst(&row.times).as_secs_f64() / lone.as_secs_f64().max(1e-9);
            last = Some((n, ratio));
            let fills: Vec<Duration> = row
                .times
                .iter()
                .zip(&row.logins)
                .map(|(t, l)| t.saturating_sub(*l))
                .collect();
            let site = row
                .site
                .map(|(e, m, h)| format!("{e}, {m} / {h}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "| {} | {} | {} | {} | {} | {:.2} | {} / {} | {} / {} | {:.1} (× {:.2}) | {} / {}; {} | {} | {} | {} | {:.1} / {:.1} / {:.1} |",
                row.config,
                row.n,
                secs(lone),
                secs(median(&row.times)),
                secs(worst(&row.times)),
                ratio,
                secs(median(&row.logins)),
                secs(worst(&row.logins)),
                secs(median(&fills)),
                secs(worst(&fills)),
                mib(row.down),
                row.down as f64 / (row.n as f64 * appliance_bytes as f64),
                row.login_503,
                row.other_503,
                row.other_errors,
                site,
                row.retries,
                row.failed.len(),
                row.cpu_server,
                row.cpu_nginx,
                row.cpu_self,
            );
            for e in row.failed.iter().take(3) {
                println!("|   | failed: {e} |");
            }
            log::info!("{config} N = {n}: wall {:.1} s", row.wall.as_secs_f64());
        }
        if let Some((n, ratio)) = last {
            let aim = if n >= 200 {
                "at N = 200"
            } else {
                "(N = 200 not run; largest N)"
            };
            verdicts.push(format!(
                "{config}: aim (worst <= 2 x lone {aim}): {} at N = {n}, worst / lone = {ratio:.2}",
                if ratio <= 2.0 { "MET" } else { "NOT MET" }
            ));
        }
    }
    println!();
    for v in verdicts {
        println!("{v}");
    }
    if std::env::var_os("STORM_KEEP").is_some() {
        let kept = bench.f.path("");
        std::mem::forget(bench);
        println!("kept {}", kept.display());
    }
}
