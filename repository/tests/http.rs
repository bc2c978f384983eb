//! The repository over real HTTP on loopback: login, fetch and verify, rate limiting,
//! user-data upload with compare-and-swap, immutable content through nginx, HTTPS.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use appliance::wire::*;
use appliance::{encode_chunk, ChunkList, SignedManifest, UserDiskManifest};
use common::*;
use sha2::Digest;

fn login(base: &str, user: &str, password: &str) -> Result<LoginResponse, (u16, ApiError)> {
    let resp = ureq::post(&format!("{}{}", base.trim_end_matches('/'), LOGIN_PATH))
        .send_json(serde_json::json!({"user": user, "password": password}));
    match resp {
        Ok(r) => Ok(r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => Err((code, r.into_json().unwrap())),
        Err(e) => panic!("transport error: {e}"),
    }
}

fn api(method: &str, base: &str, path: &str, token: &str) -> ureq::Request {
    ureq::request(method, &format!("{}{}", base.trim_end_matches('/'), path))
        .set("Authorization", &format!("Bearer {token}"))
}

fn status_of<T>(r: Result<T, ureq::Error>) -> (u16, Option<ApiError>) {
    match r {
        Ok(_) => (200, None),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().ok()),
        Err(e) => panic!("transport error: {e}"),
    }
}

#[test]
fn login_fetch_verify_and_access_log() {
    let f = Fixture::new();
    let (server, base, log) = f.serve();

    let session = login(&base, "alice", PASSWORD).expect("login");
    assert_eq!(session.user, "alice");
    assert_eq!(session.token.len(), 64);
    assert_eq!(session.appliances.len(), 1);
    let app = &session.appliances[0];
    assert_eq!((app.name.as_str(), app.version), ("desk", 1));
    assert_eq!(
        session.user_disks,
        vec![UserDiskRef {
            appliance: "desk".into(),
            disk: "user".into(),
            version: 0
        }]
    );
    // A user with a data key gets no offline verifier (the wrapped key is the offline
    // check): one password hash per login on the server, not two.
    assert!(session.data_key.is_some());
    assert!(
        session.offline_verifier.is_empty(),
        "{}",
        session.offline_verifier
    );

    let bytes = get(&base, &app.manifest_path).unwrap();
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        app.manifest_sha256
    );
    let manifest = SignedManifest::verify_bytes(&bytes, &f.trusted()).expect("signature verifies");
    let system = manifest.disk("system").unwrap();
    assert_eq!(fetch_blob(&base, &system.image), f.system);
    assert_eq!(fetch_blob(&base, &manifest.kernel), f.kernel);
    assert_eq!(
        manifest.boot_profile.as_deref(),
        Some(&manifest.kernel.distinct_chunks()[..])
    );

    // The access log names every chunk fetched, with status and size.
    server.shutdown();
    let text = std::fs::read_to_string(&log).unwrap();
    for id in system.image.distinct_chunks() {
        let line = text
            .lines()
            .find(|l| l.contains(&chunk_path(&id)))
            .unwrap_or_else(|| panic!("chunk {id} not in the access log:\n{text}"));
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[2], "GET");
        assert_eq!(fields[4], "200");
        let stored = std::fs::metadata(f.repo.chunk_file(&id)).unwrap().len();
        assert_eq!(fields[5], stored.to_string());
    }
    assert!(text.lines().any(|l| l.contains(" POST /api/v1/login 200 ")));
    assert!(
        !text.contains(PASSWORD),
        "the password must never reach the log"
    );
}

#[test]
fn wrong_password_unknown_user_and_rate_limit() {
    let f = Fixture::new();
    let (_server, base, _) = f.serve();
    let (code, err) = login(&base, "alice", "wrong").unwrap_err();
    assert_eq!((code, err.code.as_str()), (401, "bad_credentials"));
    let (code, err) = login(&base, "mallory", "x").unwrap_err();
    assert_eq!(
        (code, err.code.as_str()),
        (401, "bad_credentials"),
        "unknown users look like wrong passwords"
    );
    let (code, _) = login(&base, "../../etc", "x").unwrap_err();
    assert_eq!(code, 401);

    // Four more failures for alice (5 for her from this address; the other names count
    // apart), then she is rate limited here even with the right password.
    for _ in 0..4 {
        let _ = login(&base, "alice", "wrong");
    }
    let (code, err) = login(&base, "alice", PASSWORD).unwrap_err();
    assert_eq!((code, err.code.as_str()), (429, "rate_limited"));
    assert!(err.retry_after_secs.unwrap() >= 1);

    // A malformed body is a 400, not a crash.
    let r = ureq::post(&format!("{base}api/v1/login"))
        .set("Content-Type", "application/json")
        .send_string("{\"user\":");
    assert_eq!(status_of(r).0, 400);
    assert_eq!(get(&base, "api/v1/nothing").unwrap_err(), 404);
}

#[test]
fn tampered_manifest_is_refused_by_the_client() {
    let f = Fixture::new();
    let (_server, base, _) = f.serve();
    let path = f.repo.manifest_file("desk", 1);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"memory_mib\":256", "\"memory_mib\":4096"),
    )
    .unwrap();
    let bytes = get(&base, &manifest_path("desk", 1)).unwrap();
    let err = SignedManifest::verify_bytes(&bytes, &f.trusted()).unwrap_err();
    assert!(
        err.to_string().contains("does not match the content"),
        "{err}"
    );
    // And a corrupted chunk file is caught by its id.
    let id = f.repo.list_chunks().unwrap()[0].0;
    let mut stored = std::fs::read(f.repo.chunk_file(&id)).unwrap();
    let last = stored.len() - 1;
    stored[last] ^= 0x40;
    std::fs::write(f.repo.chunk_file(&id), stored).unwrap();
    let served = get(&base, &chunk_path(&id)).unwrap();
    assert!(appliance::decode_chunk(&id, &served).is_err());
}

#[test]
fn user_disk_upload_and_compare_and_swap() {
    let f = Fixture::new();
    let (_server, base, _) = f.serve();
    let token = login(&base, "alice", PASSWORD).unwrap().token;

    // Without a token: 401.
    let (code, err) = status_of(ureq::get(&format!("{base}api/v1/userdisks/desk/user")).call());
    assert_eq!((code, err.unwrap().code.as_str()), (401, "unauthorized"));
    let (code, _) = status_of(
        api(
            "GET",
            &base,
            &user_disk_api_path("desk", "user"),
            "0".repeat(64).as_str(),
        )
        .call(),
    );
    assert_eq!(code, 401);
    // Never committed: 404 no_user_disk.
    let (code, err) =
        status_of(api("GET", &base, &user_disk_api_path("desk", "user"), &token).call());
    assert_eq!((code, err.unwrap().code.as_str()), (404, "no_user_disk"));

    // The user's data: 4 MiB with two non-zero chunks.
    let mut disk = vec![0u8; 4 << 20];
    disk[..65536].copy_from_slice(&bytes(42, 65536, true));
    disk[3 << 20..(3 << 20) + 65536].copy_from_slice(&bytes(43, 65536, false));
    let image = appliance::Chunker::new(&disk[..], 65536)
        .unwrap()
        .into_blob()
        .unwrap();
    let ids = image.distinct_chunks();
    assert_eq!(ids.len(), 2);

    let missing: MissingChunksResponse = api("POST", &base, MISSING_CHUNKS_PATH, &token)
        .send_json(MissingChunksRequest { ids: ids.clone() })
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(missing.missing, ids);

    // A chunk whose content does not match its id is rejected.
    let wrong = encode_chunk(&disk[..65536]);
    let (code, err) =
        status_of(api("PUT", &base, &chunk_upload_path(&ids[1]), &token).send_bytes(&wrong));
    assert_eq!((code, err.unwrap().code.as_str()), (400, "chunk_mismatch"));

    // Commit before uploading: 400 missing_chunks, listing both.
    let manifest = |version, image: ChunkList| {
        sealed_manifest(&f.repo, "alice", "desk", "user", version, image)
    };
    let commit = |expected, m: UserDiskManifest| {
        status_of(
            api("PUT", &base, &user_disk_api_path("desk", "user"), &token).send_json(
                CommitUserDiskRequest {
                    expected_version: expected,
                    manifest: m,
                },
            ),
        )
    };
    let (code, err) = commit(0, manifest(1, image.clone()));
    let err = err.unwrap();
    assert_eq!((code, err.code.as_str()), (400, "missing_chunks"));
    assert_eq!(err.missing.len(), 2);

    for (i, id) in ids.iter().enumerate() {
        let chunk = if i == 0 {
            &disk[..65536]
        } else {
            &disk[3 << 20..(3 << 20) + 65536]
        };
        let r = api("PUT", &base, &chunk_upload_path(id), &token)
            .send_bytes(&encode_chunk(chunk))
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = api("PUT", &base, &chunk_upload_path(id), &token)
            .send_bytes(&encode_chunk(chunk))
            .unwrap();
        assert_eq!(r.status(), 200, "second upload is a no-op");
    }
    assert_eq!(commit(0, manifest(1, image.clone())).0, 200);
    // A second terminal that also started from version 0 loses: 409 with the current version.
    let (code, err) = commit(0, manifest(1, image.clone()));
    let err = err.unwrap();
    assert_eq!(
        (code, err.code.as_str(), err.current_version),
        (409, "conflict", Some(1))
    );
    // Wrong owner in the manifest: refused.
    let mut other = manifest(2, image.clone());
    other.user = "bob".into();
    assert_eq!(commit(1, other).0, 403);

    let got: UserDiskManifest = api("GET", &base, &user_disk_api_path("desk", "user"), &token)
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(fetch_blob(&base, &got.image), disk);
    // The next login reports the committed version.
    let s = login(&base, "alice", PASSWORD).unwrap();
    assert_eq!(s.user_disks[0].version, 1);
    // After logout the token is dead.
    assert_eq!(
        status_of(api("POST", &base, LOGOUT_PATH, &token).send_bytes(&[])).0,
        200
    );
    assert_eq!(
        status_of(api("GET", &base, &user_disk_api_path("desk", "user"), &token).call()).0,
        401
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited early: {status}");
        }
        assert!(Instant::now() < deadline, "server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} || test -x /usr/sbin/{tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn immutable_content_served_by_nginx() {
    if !have("nginx") {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx is missing in CI: add it to .ci/apt-packages"
        );
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx)");
        return;
    }
    let f = Fixture::new();
    let port = free_port();
    let prefix = f.path("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {p}/logs/error.log;\npid {p}/nginx.pid;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log {p}/logs/access.log;\n  client_body_temp_path {p}/tmp;\n  proxy_temp_path {p}/tmp;\n  fastcgi_temp_path {p}/tmp;\n  uwsgi_temp_path {p}/tmp;\n  scgi_temp_path {p}/tmp;\n\
         server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    location /chunks/ {{ default_type application/octet-stream; add_header Cache-Control \"public, max-age=31536000, immutable\"; }}\n    location /manifests/ {{ default_type application/json; }}\n    location / {{ return 404; }}\n  }}\n}}\n",
        p = prefix.display(),
        root = f.repo.public().display()
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut child = KillOnDrop(
        Command::new(
            if have("nginx") && std::path::Path::new("/usr/sbin/nginx").exists() {
                "/usr/sbin/nginx"
            } else {
                "nginx"
            },
        )
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .spawn()
        .expect("start nginx"),
    );
    wait_for_port(port, &mut child.0);
    let base = format!("http://127.0.0.1:{port}/");

    let bytes = get(&base, &manifest_path("desk", 1)).unwrap();
    let manifest = SignedManifest::verify_bytes(&bytes, &f.trusted())
        .expect("manifest served by nginx verifies");
    assert_eq!(
        fetch_blob(&base, &manifest.disk("system").unwrap().image),
        f.system
    );
    // Private data is not under nginx's root.
    assert_eq!(get(&base, "../private/users/alice.json").unwrap_err(), 404);
    assert_eq!(get(&base, "private/users/alice.json").unwrap_err(), 404);
    let log = wait_for_log_line(
        &prefix.join("logs/access.log"),
        "GET /manifests/desk/1.json",
    );
    assert!(log.contains("GET /manifests/desk/1.json"), "{log}");
}

#[test]
fn https_with_the_cli_server() {
    if !have("openssl") || !have("curl") {
        eprintln!("SKIPPED: needs openssl and curl");
        return;
    }
    let f = Fixture::new();
    let (cert, key) = (f.path("cert.pem"), f.path("key.pem"));
    let ok = Command::new("openssl")
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
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // (Any PEM key form works; PKCS#8 here.)
    let p8 = f.path("key8.pem");
    assert!(Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&p8)
        .status()
        .unwrap()
        .success());

    let mut child = Command::new(env!("CARGO_BIN_EXE_collective-repo"))
        .arg("serve")
        .arg(&f.dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-fast-kdf",
            "--tls-cert",
        ])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&p8)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(url.starts_with("https://127.0.0.1:"));
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&cert)
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            &format!("{{\"user\":\"alice\",\"password\":\"{PASSWORD}\"}}"),
        ])
        .arg(format!("{url}{LOGIN_PATH}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let session: LoginResponse = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(session.appliances[0].name, "desk");
    // The CLI server writes its access log in the default place.
    let log = wait_for_log_line(&f.dir.join("logs/access.log"), "POST /api/v1/login 200");
    let _ = child.0.kill();
    assert!(log.contains("POST /api/v1/login 200"), "{log}");
}

/// Servers write the access-log line after the reply has gone out, so a client that has its
/// answer can be ahead of the log: wait (bounded) for the line instead of racing the server.
fn wait_for_log_line(path: &std::path::Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) || std::time::Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn commit_bodies_are_bounded_by_the_disk_and_stored_compactly() {
    let f = Fixture::new();
    let (_server, base, _) = f.serve();
    let token = login(&base, "alice", PASSWORD).unwrap().token;
    let path = user_disk_api_path("desk", "user");
    // The user disk is 4 MiB in 64 KiB chunks: 64 entries. A body of a million `null`
    // entries is refused from its length alone (it would parse into 33 MB).
    let nulls = format!(
        "{{\"expected_version\":0,\"manifest\":{{\"format\":1,\"user\":\"alice\",\"appliance\":\"desk\",\"disk\":\"user\",\"version\":1,\"image\":{{\"size\":4194304,\"chunk_size\":65536,\"chunks\":[{}null]}}}}}}",
        "null,".repeat(1_000_000)
    );
    // (Raw socket: the server answers before reading the body and closes, so a client
    // still sending gets a broken pipe rather than the reply.)
    let mut s =
        TcpStream::connect(base.trim_start_matches("http://").trim_end_matches('/')).unwrap();
    std::io::Write::write_all(
        &mut s,
        format!(
            "PUT {path} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            nulls.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let _ = std::io::Write::write_all(&mut s, &nulls.as_bytes()[..4096]);
    let mut reply = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"too_large\""), "{reply}");
    // A list whose length does not match its size is refused.
    let mut image = appliance::ChunkList::zeros(4 << 20, 65536).unwrap();
    image.chunks.pop();
    let m = |image| sealed_manifest(&f.repo, "alice", "desk", "user", 1, image);
    let (code, _) = status_of(
        api("PUT", &base, &path, &token).send_json(CommitUserDiskRequest {
            expected_version: 0,
            manifest: m(image),
        }),
    );
    assert_eq!(code, 400);
    // A valid commit is stored as compact JSON: one line.
    let image = appliance::ChunkList::zeros(4 << 20, 65536).unwrap();
    let (code, _) = status_of(
        api("PUT", &base, &path, &token).send_json(CommitUserDiskRequest {
            expected_version: 0,
            manifest: m(image),
        }),
    );
    assert_eq!(code, 200);
    let stored =
        std::fs::read_to_string(f.repo.user_disk_file("alice", "desk", "user").unwrap()).unwrap();
    assert_eq!(stored.lines().count(), 1, "{stored}");
    assert!(stored.len() < 64 * 6 + 300, "{} bytes", stored.len());
}

/// Sends a bare GET with an `X-Forwarded-For` header over a plain socket.
fn get_forwarded_for(base: &str, path: &str, forwarded_for: &str) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nX-Forwarded-For: {forwarded_for}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
}

#[test]
fn the_client_behind_a_trusted_proxy_is_the_address_it_forwarded() {
    let f = Fixture::new();
    // Behind a trusted front (here: loopback), the access log names the client the
    // front saw, the last entry (the first is the client's own claim).
    let (server, base, log) = f.serve_with(|cfg| {
        cfg.limits.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    });
    get_forwarded_for(&base, "/chunks/none", "6.6.6.6, 10.9.8.7");
    let text = wait_for_log_line(&log, "10.9.8.7");
    assert!(text.contains("10.9.8.7"), "{text}");
    assert!(!text.contains("6.6.6.6"), "{text}");
    drop(server);

    // Without the trust, the header is anyone's claim and ignored.
    let g = Fixture::new();
    let (server, base, log) = g.serve();
    get_forwarded_for(&base, "/chunks/none", "10.9.8.7");
    let text = wait_for_log_line(&log, "127.0.0.1");
    assert!(
        text.contains("127.0.0.1") && !text.contains("10.9.8.7"),
        "{text}"
    );
    drop(server);
}
