//! The production front and the site cache of `deploy/nginx/`, run as shipped (only ports,
//! paths and certificates substituted) with a real nginx on loopback over TLS:
//!
//! - `front_serves_content_from_disk_and_proxies_the_api`: a terminal logs in, fills an
//!   appliance and writes a user disk back through `collective.conf`; nginx serves every
//!   chunk and manifest from `public/` (the server's access log has no content GET), the
//!   API reaches the server, bodies past the server's limits are refused at the edge, and a
//!   stopped server gives terminals a 503 with `Retry-After`.
//! - `site_cache_fetches_each_chunk_once`: `site-cache.conf` in front of the front; four
//!   terminals fill the same appliance at once through it; the front sees each chunk and
//!   the manifest at most once, every fill is exact, logins pass through uncached.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use appliance::wire::*;
use appliance::{encode_chunk, ChunkId, SignedManifest, UserDiskManifest};
use common::nginx::*;
use common::*;
use rustls::pki_types::{pem::PemObject, CertificateDer};
use sha2::Digest;

/// An HTTPS client that trusts exactly `cert` (as a terminal trusts the CA in its image).
fn agent(cert: &Path) -> ureq::Agent {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    ureq::AgentBuilder::new()
        .tls_config(Arc::new(cfg))
        .timeout(Duration::from_secs(30))
        .build()
}

/// GET `path`: the body and the `Cache-Control` header.
fn get_bytes(agent: &ureq::Agent, base: &str, path: &str) -> (Vec<u8>, Option<String>) {
    let url = format!("{base}{}", path.trim_start_matches('/'));
    let r = agent
        .get(&url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let cc = r.header("Cache-Control").map(str::to_owned);
    let mut body = Vec::new();
    r.into_reader().read_to_end(&mut body).unwrap();
    (body, cc)
}

fn status<T>(r: Result<T, ureq::Error>) -> (u16, String, Option<String>) {
    match r {
        Ok(_) => (200, String::new(), None),
        Err(ureq::Error::Status(code, r)) => {
            let ra = r.header("Retry-After").map(str::to_owned);
            (code, r.into_string().unwrap_or_default(), ra)
        }
        Err(e) => panic!("transport error: {e}"),
    }
}

/// Logs alice in: the session and the `Cache-Control` header of the answer.
fn login(agent: &ureq::Agent, base: &str) -> (LoginResponse, Option<String>) {
    let r = agent
        .post(&format!("{base}{}", LOGIN_PATH.trim_start_matches('/')))
        .send_json(serde_json::json!({"user": "alice", "password": PASSWORD}))
        .expect("login");
    let cc = r.header("Cache-Control").map(str::to_owned);
    (r.into_json().unwrap(), cc)
}

fn authed(agent: &ureq::Agent, method: &str, base: &str, path: &str, token: &str) -> ureq::Request {
    agent
        .request(method, &format!("{base}{}", path.trim_start_matches('/')))
        .set("Authorization", &format!("Bearer {token}"))
}

/// What a terminal fills: the verified manifest and the distinct chunk ids it needs.
fn fill(agent: &ureq::Agent, base: &str, f: &Fixture, session: &LoginResponse) -> Vec<ChunkId> {
    let app = &session.appliances[0];
    let (bytes, h) = get_bytes(agent, base, &app.manifest_path);
    assert_eq!(h.as_deref(), Some("public, max-age=31536000, immutable"));
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        app.manifest_sha256
    );
    let m = SignedManifest::verify_bytes(&bytes, &f.trusted()).expect("manifest verifies");
    let mut ids = Vec::new();
    let mut rebuild = |blob: &appliance::ChunkList| {
        let mut out = Vec::with_capacity(blob.size as usize);
        for (i, id) in blob.chunks.iter().enumerate() {
            match id {
                None => out.extend(std::iter::repeat_n(0u8, blob.chunk_len(i as u64))),
                Some(id) => {
                    let (stored, h) = get_bytes(agent, base, &chunk_path(id));
                    assert_eq!(h.as_deref(), Some("public, max-age=31536000, immutable"));
                    out.extend(appliance::decode_chunk(id, &stored).expect("chunk verifies"));
                    if !ids.contains(id) {
                        ids.push(*id);
                    }
                }
            }
        }
        out
    };
    assert_eq!(rebuild(&m.kernel), f.kernel, "kernel filled exactly");
    assert_eq!(
        rebuild(&m.disk("system").unwrap().image),
        f.system,
        "system disk filled exactly"
    );
    ids
}

/// Servers write access-log lines after the reply: wait (bounded) for `needle`.
fn wait_for_log(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn front_serves_content_from_disk_and_proxies_the_api() {
    if nginx_missing() {
        return;
    }
    let t0 = Instant::now();
    let f = Fixture::new();
    let (server, _direct, server_log) = f.serve();
    let (cert, key) = make_cert(&f.path(""));
    let port = free_port();
    let prefix = f.path("front");
    let conf = front_conf(
        &prefix,
        port,
        &server.addr().to_string(),
        &f.repo.public(),
        &cert,
        &key,
    );
    let nginx = Nginx::start(prefix, port, &conf);
    let base = nginx.base();
    let agent = agent(&cert);

    // Login through the front: the API reaches the server, nothing of it is cacheable.
    let (session, h) = login(&agent, &base);
    assert_eq!(session.appliances[0].name, "desk");
    assert!(
        !h.as_deref().unwrap_or("").contains("max-age"),
        "a login (the latest version) must not be cached"
    );
    let token = session.token.clone();

    // Fill: manifest and chunks, verified and exact.
    let ids = fill(&agent, &base, &f, &session);
    assert!(ids.len() >= 5, "{} chunks", ids.len());

    // Write-back of a user disk: missing, upload, commit, read back.
    let udisk = user_disk_api_path("desk", "user");
    let (code, body, _) = status(authed(&agent, "GET", &base, &udisk, &token).call());
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains("no_user_disk"),
        "the server's own answer: {body}"
    );
    let mut disk = vec![0u8; 4 << 20];
    disk[..65536].copy_from_slice(&bytes(42, 65536, true));
    disk[2 << 20..(2 << 20) + 65536].copy_from_slice(&bytes(43, 65536, false));
    let image = appliance::Chunker::new(&disk[..], 65536)
        .unwrap()
        .into_blob()
        .unwrap();
    let uids = image.distinct_chunks();
    let missing: MissingChunksResponse = authed(&agent, "POST", &base, MISSING_CHUNKS_PATH, &token)
        .send_json(MissingChunksRequest { ids: uids.clone() })
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(missing.missing, uids);
    for (id, at) in uids.iter().zip([0usize, 2 << 20]) {
        let r = authed(&agent, "PUT", &base, &chunk_upload_path(id), &token)
            .send_bytes(&encode_chunk(&disk[at..at + 65536]))
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let commit = CommitUserDiskRequest {
        expected_version: 0,
        manifest: sealed_manifest(&f.repo, "alice", "desk", "user", 1, image),
    };
    let r = authed(&agent, "PUT", &base, &udisk, &token)
        .send_json(&commit)
        .unwrap();
    assert_eq!(r.status(), 200);
    // A second commit from version 0: the server's 409 reaches the terminal unchanged.
    let (code, body, _) = status(authed(&agent, "PUT", &base, &udisk, &token).send_json(&commit));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("\"current_version\":1"), "{body}");
    // Read back through the front: the uploaded chunks are files nginx serves at once.
    let got: UserDiskManifest = authed(&agent, "GET", &base, &udisk, &token)
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(got.version, 1);
    let mut back = Vec::new();
    for (i, id) in got.image.chunks.iter().enumerate() {
        match id {
            None => back.extend(std::iter::repeat_n(0u8, got.image.chunk_len(i as u64))),
            Some(id) => back.extend(
                appliance::decode_chunk(id, &get_bytes(&agent, &base, &chunk_path(id)).0).unwrap(),
            ),
        }
    }
    assert_eq!(back, disk, "user disk written back and read back exactly");

    // Private files are not reachable, whatever the path says.
    for p in [
        "private/users/alice.json",
        "chunks/../private/users/alice.json",
        "chunks/%2e%2e/private/users/alice.json",
        "manifests/desk/../../private/users/alice.json",
        "chunks/ab/not-a-chunk",
        "manifests/desk/latest.json",
    ] {
        let (code, body, _) = status(agent.get(&format!("{base}{p}")).call());
        assert_eq!(code, 404, "{p}: {body}");
        assert!(!body.contains("argon2"), "{p}: {body}");
    }
    // A missing chunk is a 404 nobody may cache.
    let absent = ChunkId::of(b"never stored");
    let (code, body, _) = status(agent.get(&format!("{base}{}", chunk_path(&absent))).call());
    assert_eq!(code, 404);
    assert!(body.contains("not_found"), "JSON error shape: {body}");

    // Bodies past the server's limits are refused by nginx, with the API's error shape.
    let big_login = format!(
        "{{\"user\":\"alice\",\"password\":\"{}\"}}",
        "x".repeat(100_000)
    );
    let (code, body, _) = status(
        agent
            .post(&format!("{base}api/v1/login"))
            .set("Content-Type", "application/json")
            .send_string(&big_login),
    );
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("too_large"), "{body}");
    let (code, body, _) = status(
        authed(&agent, "PUT", &base, &chunk_upload_path(&absent), &token)
            .send_bytes(&vec![0u8; 5 << 20]),
    );
    assert_eq!(code, 413, "{body}");

    authed(&agent, "POST", &base, LOGOUT_PATH, &token)
        .send_bytes(&[])
        .unwrap();

    // The server's log: the API calls, and not one content GET.
    let slog = wait_for_log(&server_log, "POST /api/v1/logout");
    for needle in [
        " POST /api/v1/login 200 ",
        " POST /api/v1/chunks/missing 200 ",
        " PUT /api/v1/userdisks/desk/user 200 ",
        " PUT /api/v1/userdisks/desk/user 409 ",
        " GET /api/v1/userdisks/desk/user 404 ",
        " GET /api/v1/userdisks/desk/user 200 ",
        " POST /api/v1/logout ",
    ] {
        assert!(
            slog.contains(needle),
            "server log lacks {needle:?}:\n{slog}"
        );
    }
    assert_eq!(
        slog.matches(" PUT /api/v1/chunks/").count(),
        2,
        "two uploads; the 5 MiB one never reached the server:\n{slog}"
    );
    assert_eq!(slog.matches(" POST /api/v1/login ").count(), 1, "{slog}");
    assert!(
        !slog.contains(" GET /chunks/") && !slog.contains(" GET /manifests/"),
        "content must come from nginx's disk, not the server:\n{slog}"
    );
    // nginx's log: every content GET answered from disk (no upstream), the API proxied.
    let nlog = std::fs::read_to_string(nginx.log("collective.access.log")).unwrap();
    for id in ids.iter().chain(&uids) {
        let line = nlog
            .lines()
            .find(|l| l.contains(&format!("GET /{} ", chunk_path(id))))
            .unwrap_or_else(|| panic!("chunk {id} not in nginx's log:\n{nlog}"));
        assert!(line.contains(" 200 ") && line.ends_with(" up=-"), "{line}");
    }
    let api_line = nlog
        .lines()
        .find(|l| l.contains("POST /api/v1/login "))
        .unwrap();
    assert!(
        api_line.ends_with(&format!(" up={}", server.addr())),
        "{api_line}"
    );

    // The server stops (a restart): terminals get a 503 with Retry-After, as from the
    // server's own overload answer, and the receiver backs off and retries.
    server.shutdown();
    let (code, body, retry) = status(
        agent
            .post(&format!("{base}api/v1/login"))
            .send_json(serde_json::json!({"user": "alice", "password": PASSWORD})),
    );
    assert_eq!((code, retry.as_deref()), (503, Some("2")), "{body}");
    let err: ApiError = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(err.code, "overloaded");
    // Content keeps being served without the server.
    let (stored, _) = get_bytes(&agent, &base, &chunk_path(&ids[0]));
    appliance::decode_chunk(&ids[0], &stored).unwrap();
    eprintln!("front test: {:?}", t0.elapsed());
}

#[test]
fn site_cache_fetches_each_chunk_once() {
    if nginx_missing() {
        return;
    }
    let t0 = Instant::now();
    let f = Fixture::new();
    let (server, _direct, server_log) = f.serve();
    let (cert, key) = make_cert(&f.path(""));
    let (front_port, site_port) = (free_port(), free_port());
    let front_prefix = f.path("front");
    let conf = front_conf(
        &front_prefix,
        front_port,
        &server.addr().to_string(),
        &f.repo.public(),
        &cert,
        &key,
    );
    let front = Nginx::start(front_prefix, front_port, &conf);
    let site_prefix = f.path("site");
    let conf = site_conf(&site_prefix, site_port, front_port, &cert, &key);
    let site = Nginx::start(site_prefix, site_port, &conf);
    let base = site.base();

    // Four terminals in the branch office log in and fill the same appliance at the same
    // moment, in the same order: the worst case for the central repository.
    const TERMINALS: usize = 4;
    let barrier = Arc::new(Barrier::new(TERMINALS));
    let f = Arc::new(f);
    let fill_start = Instant::now();
    let fills: Vec<(Vec<ChunkId>, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..TERMINALS)
            .map(|_| {
                let (barrier, f, base, cert) =
                    (barrier.clone(), f.clone(), base.clone(), cert.clone());
                s.spawn(move || {
                    let agent = agent(&cert);
                    let (session, _) = login(&agent, &base);
                    barrier.wait();
                    (fill(&agent, &base, &f, &session), session.token)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let fill_time = fill_start.elapsed();
    let ids = fills[0].0.clone();
    let tokens: std::collections::HashSet<_> = fills.iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(
        tokens.len(),
        TERMINALS,
        "every login is its own session (not cached)"
    );

    // A fifth terminal later: everything from the office's cache.
    let agent = agent(&cert);
    let (session, _) = login(&agent, &base);
    let late = Instant::now();
    assert_eq!(fill(&agent, &base, &f, &session), ids);
    let late_time = late.elapsed();

    let manifest = &session.appliances[0].manifest_path;
    let flog = wait_for_log(&front.log("collective.access.log"), "POST /api/v1/login");
    for id in &ids {
        let n = flog.matches(&format!("GET /{} ", chunk_path(id))).count();
        assert!(n <= 1, "chunk {id} crossed the WAN {n} times:\n{flog}");
        assert_eq!(n, 1, "chunk {id} never reached the front?\n{flog}");
    }
    assert_eq!(
        flog.matches(&format!("GET /{manifest} ")).count(),
        1,
        "the manifest crossed once:\n{flog}"
    );
    let slog = wait_for_log(&server_log, "POST /api/v1/login");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut logins = 0;
    while Instant::now() < deadline {
        logins = std::fs::read_to_string(&server_log)
            .unwrap_or_default()
            .matches(" POST /api/v1/login 200 ")
            .count();
        if logins == TERMINALS + 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        logins,
        TERMINALS + 1,
        "every login reached the server:\n{slog}"
    );
    assert!(!slog.contains(" GET /chunks/"), "{slog}");

    let sitelog = std::fs::read_to_string(site.log("collective-site.access.log")).unwrap();
    let chunk_lines: Vec<&str> = sitelog
        .lines()
        .filter(|l| l.contains("GET /chunks/"))
        .collect();
    let miss = chunk_lines
        .iter()
        .filter(|l| l.contains(" cache=MISS "))
        .count();
    let hit = chunk_lines
        .iter()
        .filter(|l| l.contains(" cache=HIT "))
        .count();
    assert_eq!(miss, ids.len(), "one miss per chunk:\n{sitelog}");
    assert_eq!(miss + hit, chunk_lines.len(), "{sitelog}");
    // (Chunks are fetched once per occurrence in a blob; `ids` counts distinct ones.)
    eprintln!(
        "site cache: {} distinct chunks, {} chunk requests from {} terminals ({} hits), {} reached the front; \
         4 concurrent fills {:?}, a later fill {:?}, test {:?}",
        ids.len(),
        chunk_lines.len(),
        TERMINALS + 1,
        hit,
        ids.len(),
        fill_time,
        late_time,
        t0.elapsed()
    );
    drop(site);
    drop(front);
    server.shutdown();
}
