//! A real nginx on loopback with the shipped configurations of `deploy/nginx/`, only
//! ports, paths and certificates substituted: used by `tests/nginx_front.rs` and
//! `benches/boot_storm.rs`.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NGINX: &str = "/usr/sbin/nginx";
pub const FRONT_CONF: &str = include_str!("../../../deploy/nginx/collective.conf");
pub const SITE_CONF: &str = include_str!("../../../deploy/nginx/site-cache.conf");

pub fn nginx_missing() -> bool {
    if Path::new(NGINX).exists() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "nginx is missing in CI: add it to .ci/apt-packages"
    );
    eprintln!("SKIPPED: {NGINX} is not installed (apt-get install nginx)");
    true
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replaces `from` (which must be in the shipped file: a changed placeholder fails here,
/// not silently in production) by `to`.
pub fn subst(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "deploy/nginx: placeholder {from:?} is gone; update repository/tests/common/nginx.rs"
    );
    text.replace(from, to)
}

/// A self-signed certificate for 127.0.0.1 and the example names of the configs.
pub fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:repo.example.org,DNS:repo-cache.branch.example.org",
            // A leaf, not a CA (rustls refuses a CA certificate as a server's).
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// nginx as a child process with its own prefix; killed on drop.
pub struct Nginx {
    pub child: Child,
    pub prefix: PathBuf,
    pub port: u16,
}

impl Nginx {
    /// Starts nginx with `site` (an http-context file, already substituted) and waits until
    /// it listens on `port`.
    pub fn start(prefix: PathBuf, port: u16, site: &str) -> Nginx {
        Nginx::start_with(prefix, port, site, 256)
    }

    /// [`Nginx::start`] with room for `worker_connections` connections (terminals and
    /// upstream together; one worker process).
    pub fn start_with(prefix: PathBuf, port: u16, site: &str, worker_connections: usize) -> Nginx {
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        std::fs::write(prefix.join("site.conf"), site).unwrap();
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {p}/logs/main-error.log;\npid {p}/nginx.pid;\n\
             events {{ worker_connections {wc}; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n  fastcgi_temp_path {p}/tmp/fastcgi;\n  uwsgi_temp_path {p}/tmp/uwsgi;\n  scgi_temp_path {p}/tmp/scgi;\n  include {p}/site.conf;\n}}\n",
            p = prefix.display(),
            wc = worker_connections
        );
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, main).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("logs/main-error.log"))
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        let mut n = Nginx {
            child,
            prefix,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = n.child.try_wait() {
                let mut err = String::new();
                let _ = n.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("nginx exited ({status}): {err}\nconfig:\n{site}");
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    }

    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.prefix.join("logs").join(name)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `collective.conf` with the test's ports, paths and certificate.
pub fn front_conf(
    prefix: &Path,
    port: u16,
    upstream: &str,
    public: &Path,
    cert: &Path,
    key: &Path,
) -> String {
    let mut c = FRONT_CONF.to_string();
    c = subst(&c, "server 127.0.0.1:8080;", &format!("server {upstream};"));
    c = subst(
        &c,
        "listen 443 ssl;",
        &format!("listen 127.0.0.1:{port} ssl;"),
    );
    c = subst(
        &c,
        "/etc/ssl/collective/repo.crt",
        &cert.display().to_string(),
    );
    c = subst(
        &c,
        "/etc/ssl/collective/repo.key",
        &key.display().to_string(),
    );
    c = subst(&c, "/srv/collective/public", &public.display().to_string());
    subst(
        &c,
        "/var/log/nginx/",
        &format!("{}/logs/", prefix.display()),
    )
}

/// `site-cache.conf` in front of `upstream_port` (the front), with the test's certificate.
pub fn site_conf(prefix: &Path, port: u16, upstream_port: u16, cert: &Path, key: &Path) -> String {
    let mut c = SITE_CONF.to_string();
    c = subst(
        &c,
        "server repo.example.org:443;",
        &format!("server 127.0.0.1:{upstream_port};"),
    );
    c = subst(
        &c,
        "listen 443 ssl;",
        &format!("listen 127.0.0.1:{port} ssl;"),
    );
    c = subst(
        &c,
        "/etc/ssl/collective/site.crt",
        &cert.display().to_string(),
    );
    c = subst(
        &c,
        "/etc/ssl/collective/site.key",
        &key.display().to_string(),
    );
    c = subst(
        &c,
        "/etc/ssl/certs/ca-certificates.crt",
        &cert.display().to_string(),
    );
    // A small key zone: the test needs a few entries, not 256 MiB of shared memory.
    c = subst(
        &c,
        "keys_zone=collective_site:256m",
        "keys_zone=collective_site:1m",
    );
    c = subst(
        &c,
        "/var/cache/nginx/collective",
        &format!("{}/cache", prefix.display()),
    );
    subst(
        &c,
        "/var/log/nginx/",
        &format!("{}/logs/", prefix.display()),
    )
}
