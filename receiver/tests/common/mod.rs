//! Test fixtures: a real repository (the `repository` crate's store and server, as
//! `collective-repo serve` runs it) on 127.0.0.1, a file-backed cache, and a fault proxy.
#![allow(dead_code)]

pub mod proxy;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use appliance::{KdfParams, SecretKey};
use repository::publish::{DiskSource, DiskSpec, PublishRequest};
use repository::server::{RunningServer, ServeConfig};
use repository::Repo;

pub const PASSWORD: &str = "correct horse battery staple";

/// Deterministic pseudo-random bytes; `text` makes them compressible.
pub fn bytes(seed: u64, len: usize, text: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if text {
                b"abcdefgh \n"[(x % 10) as usize]
            } else {
                x as u8
            }
        })
        .collect()
}

/// An image of `mib` MiB: 64 KiB stretches of text, random data and zeros.
pub fn image(seed: u64, mib: usize) -> Vec<u8> {
    let mut img = vec![0u8; mib << 20];
    for (i, c) in img.chunks_mut(65536).enumerate() {
        match i % 5 {
            0 | 1 => c.copy_from_slice(&bytes(seed * 1000 + i as u64, c.len(), true)),
            2 | 3 => c.copy_from_slice(&bytes(seed * 1000 + i as u64, c.len(), false)),
            _ => {}
        }
    }
    img
}

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub repo: Repo,
    pub key: SecretKey,
    pub kernel: Vec<u8>,
}

pub struct Server {
    pub running: Option<RunningServer>,
    pub addr: std::net::SocketAddr,
    pub log: PathBuf,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
    /// Stops the server (the "kill"): no more requests are answered.
    pub fn kill(&mut self) {
        if let Some(s) = self.running.take() {
            s.shutdown();
        }
    }
}

impl Fixture {
    /// A repository with user `alice` and no appliances yet.
    pub fn new() -> Fixture {
        let _ = env_logger::builder().is_test(true).try_init();
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repo::init(&tmp.path().join("repo")).unwrap();
        let key = SecretKey::generate();
        let kernel = bytes(7, 300_000, true);
        repository::users::add(
            &repo,
            "alice",
            PASSWORD,
            KdfParams::INSECURE_FOR_TESTS,
            KdfParams::INSECURE_FOR_TESTS,
        )
        .unwrap();
        Fixture {
            tmp,
            repo,
            key,
            kernel,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn assign(&self, user: &str, apps: &[&str]) {
        repository::users::assign(
            &self.repo,
            user,
            &apps.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
    }

    /// Publishes `name` with `system` as system disk, a 1 MiB user disk and a boot trace
    /// naming `boot_offsets` of the system disk.
    pub fn publish(
        &self,
        name: &str,
        system: &[u8],
        boot_offsets: &[u64],
    ) -> repository::publish::PublishStats {
        let kpath = self.path("kernel");
        let spath = self.path(&format!("{name}-system.img"));
        let tpath = self.path(&format!("{name}.trace"));
        std::fs::write(&kpath, &self.kernel).unwrap();
        std::fs::write(&spath, system).unwrap();
        let mut trace = String::from("kernel 0\n");
        for o in boot_offsets {
            trace.push_str(&format!("system {o}\n"));
        }
        std::fs::write(&tpath, trace).unwrap();
        let req = PublishRequest {
            name: name.into(),
            kernel: kpath,
            initrd: None,
            cmdline: "console=ttyS0".into(),
            disks: vec![
                DiskSpec {
                    role: appliance::DiskRole::System,
                    source: DiskSource::Image(spath),
                },
                DiskSpec {
                    role: appliance::DiskRole::User,
                    source: DiskSource::Empty(1 << 20),
                },
            ],
            memory_mib: 256,
            vcpus: 1,
            networks: vec![],
            chunk_size: appliance::DEFAULT_CHUNK_SIZE,
            boot_trace: Some(tpath),
            display: false,
        };
        repository::publish::publish(&self.repo, &req, &self.key).unwrap()
    }

    /// Starts the real server on `listen` (`127.0.0.1:0` for a free port).
    pub fn serve_on(&self, listen: &str) -> Server {
        self.serve_with(listen, |_| {})
    }

    /// [`Fixture::serve_on`] with a configuration changed by `change`.
    pub fn serve_with(&self, listen: &str, change: impl FnOnce(&mut ServeConfig)) -> Server {
        let log = self.path("access.log");
        let mut cfg = ServeConfig::new(&self.repo, listen);
        cfg.access_log = Some(log.clone());
        cfg.threads = 4;
        cfg.dummy_kdf = KdfParams::INSECURE_FOR_TESTS;
        change(&mut cfg);
        let running = repository::server::start(self.repo.clone(), &cfg).unwrap();
        Server {
            addr: running.addr(),
            running: Some(running),
            log,
        }
    }

    pub fn serve(&self) -> Server {
        self.serve_on("127.0.0.1:0")
    }

    /// Receiver configuration for `url` trusting this fixture's key, with short backoff.
    pub fn config(&self, url: &str) -> receiver::RepoConfig {
        let mut c = receiver::RepoConfig::new(url, vec![self.key.public()]);
        c.backoff = Duration::from_millis(5);
        c.max_backoff = Duration::from_millis(50);
        c.request_timeout = Duration::from_secs(5);
        c.connect_timeout = Duration::from_secs(2);
        c.wrap_kdf = appliance::KdfParams::INSECURE_FOR_TESTS;
        c
    }

    /// A fresh 64 MiB file cache (or reopens it, like a reboot).
    pub fn cache(&self, name: &str) -> Arc<cachefs::Cache> {
        let p = self.path(name);
        if !p.exists() {
            cachefs::FileStorage::create_file(&p, 64 << 20).unwrap();
        }
        receiver::open_cache(&p, true).unwrap()
    }
}

/// Reads a whole blob through a view over `cache` with `source` and returns it.
pub fn read_blob(
    cache: &Arc<cachefs::Cache>,
    blob: &appliance::ChunkList,
    source: Arc<dyn cachefs::ChunkSource>,
) -> Vec<u8> {
    let v = receiver::disks::view(cache, blob, source).unwrap();
    let mut out = vec![0u8; blob.size as usize];
    v.read_at(0, &mut out).unwrap();
    out
}

/// Chunk GETs in the access log once it holds at least `n` of them (or after 10 s): the
/// server writes a line after its reply has gone out, so the client can be ahead of the log.
pub fn chunk_gets_at_least(log: &Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let gets = chunk_gets(log);
        if gets.len() >= n || std::time::Instant::now() > deadline {
            return gets;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Chunk GETs in the access log, in order.
pub fn chunk_gets(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5 && f[2] == "GET" && f[3].starts_with("/chunks/"))
                .then(|| f[3].rsplit('/').next().unwrap_or("").to_owned())
        })
        .collect()
}

/// Opens the user disk `user` of `desk` for `session` as it starts (the committed version,
/// or the appliance's initial content), fetching through the session's client.
pub fn open_desk_user_disk(
    cache: &Arc<cachefs::Cache>,
    session: &receiver::Session,
) -> cachefs::Overlay {
    let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());
    let blob = &session
        .set
        .get("desk")
        .unwrap()
        .user_disk("user")
        .unwrap()
        .image;
    receiver::disks::open_user_disk(cache, &session.user, "desk", "user", blob, fetcher).unwrap()
}
