//! Shared fixtures: a repository with one published appliance and one user.
#![allow(dead_code)]

pub mod nginx;
pub mod process;

use std::path::{Path, PathBuf};

use appliance::{KdfParams, PublicKey, SecretKey};
use repository::publish::{DiskSource, DiskSpec, PublishRequest};
use repository::server::{RunningServer, ServeConfig};
use repository::Repo;

pub const PASSWORD: &str = "correct horse battery staple";

/// Deterministic pseudo-random bytes (compressible if `text`).
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

/// A 1 MiB system image: some text, some random, some zeros.
pub fn system_image(seed: u64) -> Vec<u8> {
    let mut img = vec![0u8; 1 << 20];
    img[..200_000].copy_from_slice(&bytes(seed, 200_000, true));
    img[400_000..600_000].copy_from_slice(&bytes(seed + 1, 200_000, false));
    img
}

pub struct Fixture {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub repo: Repo,
    pub key: SecretKey,
    pub system: Vec<u8>,
    pub kernel: Vec<u8>,
}

impl Fixture {
    /// A repository with appliance `desk` v1 and user `alice` (set [desk]).
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("repo");
        let repo = Repo::init(&dir).unwrap();
        let key = SecretKey::generate();
        let system = system_image(1);
        let kernel = bytes(7, 300_000, true);
        let f = Fixture {
            _tmp: tmp,
            dir,
            repo,
            key,
            system,
            kernel,
        };
        f.publish("desk", &f.system.clone());
        repository::users::add(
            &f.repo,
            "alice",
            PASSWORD,
            KdfParams::INSECURE_FOR_TESTS,
            KdfParams::INSECURE_FOR_TESTS,
        )
        .unwrap();
        repository::users::assign(&f.repo, "alice", &["desk".into()]).unwrap();
        f
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self._tmp.path().join(name)
    }

    pub fn trusted(&self) -> Vec<PublicKey> {
        vec![self.key.public()]
    }

    pub fn publish(&self, name: &str, system: &[u8]) -> repository::publish::PublishStats {
        let kpath = self.path("kernel");
        let spath = self.path(&format!("{name}-system.img"));
        std::fs::write(&kpath, &self.kernel).unwrap();
        std::fs::write(&spath, system).unwrap();
        let req = request(name, &kpath, &spath);
        repository::publish::publish(&self.repo, &req, &self.key).unwrap()
    }

    pub fn serve(&self) -> (RunningServer, String, PathBuf) {
        self.serve_with(|_| {})
    }

    /// Like `serve`, with the configuration changed by `tune` first.
    pub fn serve_with(
        &self,
        tune: impl FnOnce(&mut ServeConfig),
    ) -> (RunningServer, String, PathBuf) {
        let log = self.path("access.log");
        let mut cfg = ServeConfig::new(&self.repo, "127.0.0.1:0");
        cfg.access_log = Some(log.clone());
        cfg.threads = 4;
        cfg.dummy_kdf = KdfParams::INSECURE_FOR_TESTS;
        tune(&mut cfg);
        let server = repository::server::start(self.repo.clone(), &cfg).unwrap();
        let base = format!("http://{}/", server.addr());
        (server, base, log)
    }
}

pub fn request(name: &str, kernel: &Path, system: &Path) -> PublishRequest {
    PublishRequest {
        name: name.into(),
        kernel: kernel.into(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        disks: vec![
            DiskSpec {
                role: appliance::DiskRole::System,
                source: DiskSource::Image(system.into()),
            },
            DiskSpec {
                role: appliance::DiskRole::User,
                source: DiskSource::Empty(4 << 20),
            },
        ],
        memory_mib: 256,
        vcpus: 1,
        networks: vec![],
        chunk_size: appliance::DEFAULT_CHUNK_SIZE,
        boot_trace: None,
        display: false,
    }
}

/// Fetches `path` relative to `base` and returns the body, or the HTTP status as error.
pub fn get(base: &str, path: &str) -> Result<Vec<u8>, u16> {
    match ureq::get(&format!("{base}{path}")).call() {
        Ok(r) => {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut r.into_reader(), &mut body).unwrap();
            Ok(body)
        }
        Err(ureq::Error::Status(code, _)) => Err(code),
        Err(e) => panic!("transport error fetching {path}: {e}"),
    }
}

/// Rebuilds a blob from chunks fetched over HTTP, verifying each.
pub fn fetch_blob(base: &str, blob: &appliance::ChunkList) -> Vec<u8> {
    let mut out = Vec::with_capacity(blob.size as usize);
    for (i, id) in blob.chunks.iter().enumerate() {
        match id {
            None => out.extend(std::iter::repeat_n(0u8, blob.chunk_len(i as u64))),
            Some(id) => {
                let stored = get(base, &appliance::wire::chunk_path(id))
                    .unwrap_or_else(|s| panic!("chunk {id}: HTTP {s}"));
                out.extend(appliance::decode_chunk(id, &stored).unwrap());
            }
        }
    }
    out
}

/// Runs `collective-repo ARGS` with `stdin` (nothing if `None`): success, standard output
/// and standard error.
pub fn cli(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_collective-repo"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A format-2 user-disk manifest of `user` as a terminal would commit it: `image` as the
/// sealed chunk list, and a sealed index under the user's current key id (the repository
/// checks the format and the key id, not the seal, which it has no key for).
pub fn sealed_manifest(
    repo: &Repo,
    user: &str,
    appliance: &str,
    disk: &str,
    version: u64,
    image: appliance::ChunkList,
) -> appliance::UserDiskManifest {
    let key_id = repo
        .user(user)
        .unwrap()
        .and_then(|r| r.data_key)
        .map(|k| k.key_id)
        .unwrap_or_default();
    appliance::UserDiskManifest {
        format: appliance::user::USER_DISK_FORMAT,
        user: user.into(),
        appliance: appliance.into(),
        disk: disk.into(),
        version,
        image,
        sealed: Some(appliance::SealedIndex {
            key_id,
            index: "AAAA".into(),
        }),
    }
}
