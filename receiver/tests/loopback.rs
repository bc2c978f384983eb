//! The receiver against the real repository server on 127.0.0.1, directly and through a
//! fault proxy.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{Faults, Proxy};
use common::*;
use receiver::{Error, FillOptions, Mode};

fn opts(connections: usize) -> FillOptions {
    FillOptions {
        connections,
        ..Default::default()
    }
}

/// Checks that every blob of every appliance reads back, from the cache alone, as
/// published.
fn assert_cached_content(
    cache: &Arc<cachefs::Cache>,
    session: &receiver::Session,
    expected_system: &[(&str, &[u8])],
) {
    for (name, system) in expected_system {
        let a = session.set.get(name).expect("appliance in the set");
        let disk = a
            .manifest
            .disks
            .iter()
            .find(|d| d.name == "system")
            .unwrap();
        let got = read_blob(cache, &disk.image, Arc::new(cachefs::NoSource));
        assert!(
            got == *system,
            "{name}: system disk differs from what was published"
        );
    }
}

#[test]
fn login_fill_boot_first_and_second_fill_fetches_nothing() {
    let f = Fixture::new();
    let system = image(1, 4);
    // Boot trace: two chunks near the end of the disk, then one at the start.
    f.publish("desk", &system, &[3 << 20, (3 << 20) + 65536 * 5, 0]);
    f.assign("alice", &["desk"]);
    let srv = f.serve();
    let cache = f.cache("cache.img");
    let session = receiver::login(cache.clone(), &f.config(&srv.url()), "alice", PASSWORD).unwrap();
    assert_eq!(session.mode, Mode::Online);
    assert_eq!(session.set.appliances.len(), 1);
    assert!(session.set.refused.is_empty());
    let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());
    let mut seen = Vec::new();
    let p = receiver::fill::fill(
        cache.clone(),
        fetcher.clone(),
        &session.set,
        opts(1),
        Duration::from_millis(1),
        |p| seen.push(p.clone()),
    )
    .unwrap();
    assert_eq!(p.done_bytes, p.total_bytes);
    assert!(p.appliances[0].complete() && p.appliances[0].boot_ready());
    assert_eq!(p.appliances[0].eta, Some(Duration::ZERO));
    assert!(
        seen.iter().any(|p| !p.appliances[0].complete()),
        "progress was seen before completion"
    );
    assert!(p.fetch.plain_bytes > 0 && p.fetch.corrupt == 0);
    assert!(seen.len() >= 2, "progress was reported along the way");
    assert_cached_content(&cache, &session, &[("desk", &system)]);

    // With one connection the boot chunks are fetched first, in trace order.
    let profile: Vec<String> = session
        .set
        .get("desk")
        .unwrap()
        .manifest
        .boot_profile
        .clone()
        .unwrap()
        .iter()
        .map(|id| id.to_hex())
        .collect();
    let gets = chunk_gets_at_least(&srv.log, p.fetch.chunks as usize);
    assert_eq!(
        &gets[..profile.len()],
        &profile[..],
        "boot-profile chunks first"
    );

    // A second fill (another login, say) fetches nothing: everything is cached.
    let before = gets.len();
    let p2 = receiver::fill::start(cache.clone(), fetcher, &session.set, opts(2))
        .wait()
        .unwrap();
    assert_eq!(p2.fetch.chunks, 0);
    assert_eq!(p2.cached_at_start, p2.total_bytes);
    assert_eq!(chunk_gets(&srv.log).len(), before);
}

#[test]
fn a_user_over_quota_gets_a_clear_message_and_keeps_the_changes() {
    let f = Fixture::new();
    f.publish("desk", &image(12, 1), &[0]);
    f.assign("alice", &["desk"]);
    // 256 KiB: one 64 KiB chunk of random data fits, eight do not.
    let srv = f.serve_with("127.0.0.1:0", |c| c.limits.user_quota = Some(256 << 10));
    let cfg = f.config(&srv.url());
    let cache = f.cache("a.img");
    let mut s = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
    let fetcher = receiver::Fetcher::new(s.client.clone().unwrap());
    let blob = s
        .set
        .get("desk")
        .unwrap()
        .user_disk("user")
        .unwrap()
        .image
        .clone();
    let ov =
        receiver::disks::open_user_disk(&cache, "alice", "desk", "user", &blob, fetcher.clone())
            .unwrap();
    ov.write_at(0, &bytes(13, 65536, false)).unwrap();
    assert_eq!(
        receiver::write_back(&mut s, "desk", "user", &ov)
            .unwrap()
            .version,
        1
    );
    // The same overlay, now over version 1.
    let big = bytes(14, 8 * 65536, false);
    ov.write_at(65536, &big).unwrap();
    let e = receiver::write_back(&mut s, "desk", "user", &ov).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, Error::Repository { status: 413, code, .. } if code == "quota_exceeded"),
        "{e:?}"
    );
    assert!(
        text.contains("quota")
            && text.contains("(262144 bytes) quota")
            && text.contains("delete files"),
        "{text}"
    );
    // Nothing was lost: the changes are still in the overlay, version 1 is still current.
    let mut back = vec![0u8; big.len()];
    ov.read_at(65536, &mut back).unwrap();
    assert_eq!(back, big);
    assert_eq!(ov.changed_chunks().len(), 8);
    assert_eq!(
        s.set
            .get("desk")
            .unwrap()
            .user_disk("user")
            .unwrap()
            .version,
        1
    );
}

#[test]
fn a_busy_repository_is_asked_again_after_its_retry_after() {
    let f = Fixture::new();
    let system = image(4, 2);
    f.publish("desk", &system, &[0]);
    f.assign("alice", &["desk"]);
    let srv = f.serve();
    // Three requests in ten, login and manifests included, get 503 with Retry-After: 1
    // (about 40 requests: none busy has odds below 1e-6).
    let proxy = Proxy::start(
        srv.addr,
        Faults {
            path_prefix: "/".into(),
            busy_per_mille: 300,
            busy_retry_after_secs: 1,
            ..Default::default()
        },
    );
    let t = std::time::Instant::now();
    let cache = f.cache("cache.img");
    // The fixture's own backoff is 5..50 ms: any wait of a second is the Retry-After.
    let session =
        receiver::login(cache.clone(), &f.config(&proxy.url()), "alice", PASSWORD).unwrap();
    assert_eq!(
        session.mode,
        Mode::Online,
        "a busy repository is not an absent one"
    );
    let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());
    let p = receiver::fill::start(cache.clone(), fetcher, &session.set, opts(4))
        .wait()
        .unwrap();
    let took = t.elapsed();
    let busy = proxy
        .counters
        .busy
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(busy > 0, "the proxy answered 503 sometimes");
    assert!(
        took >= Duration::from_secs(1),
        "{busy} 503s answered in {took:?}: Retry-After was not honoured"
    );
    assert!(p.fetch.retries > 0);
    assert_eq!(p.done_bytes, p.total_bytes);
    assert_cached_content(&cache, &session, &[("desk", &system)]);
}

#[test]
fn fill_completes_through_drops_delays_and_bit_flips() {
    let f = Fixture::new();
    let system = image(2, 6);
    f.publish("desk", &system, &[0]);
    f.assign("alice", &["desk"]);
    let srv = f.serve();
    let proxy = Proxy::start(
        srv.addr,
        Faults {
            path_prefix: "/chunks/".into(),
            drop_per_mille: 80,
            flip_per_mille: 80,
            delay: Duration::from_millis(1),
            ..Default::default()
        },
    );
    let cache = f.cache("cache.img");
    let session =
        receiver::login(cache.clone(), &f.config(&proxy.url()), "alice", PASSWORD).unwrap();
    let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());
    let p = receiver::fill::start(cache.clone(), fetcher, &session.set, opts(4))
        .wait()
        .unwrap();
    let dropped = proxy
        .counters
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    let flipped = proxy
        .counters
        .flipped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        dropped > 0 && flipped > 0,
        "the proxy did spoil responses ({dropped} dropped, {flipped} flipped)"
    );
    assert!(
        p.fetch.corrupt > 0,
        "flipped bodies were detected as corrupt"
    );
    assert!(
        p.fetch.retries >= p.fetch.corrupt,
        "corrupt chunks were fetched again"
    );
    assert_eq!(p.done_bytes, p.total_bytes);
    // Nothing corrupt entered the cache: every chunk reads back as published.
    assert_cached_content(&cache, &session, &[("desk", &system)]);
    let (ok, bad, _) = cache.verify_all().unwrap();
    assert!(ok > 0 && bad.is_empty());
}

#[test]
fn repository_killed_mid_fill_then_restarted_resumes_after_reboot() {
    let f = Fixture::new();
    let system = image(3, 12);
    f.publish("desk", &system, &[0]);
    f.assign("alice", &["desk"]);
    let mut srv = f.serve();
    let addr = srv.addr;
    // Slow the responses down so the kill lands in the middle.
    let proxy = Proxy::start(
        addr,
        Faults {
            delay: Duration::from_millis(4),
            ..Default::default()
        },
    );
    let mut cfg = f.config(&proxy.url());
    cfg.attempts = 3;
    let total_chunks;
    {
        let cache = f.cache("cache.img");
        let session = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
        total_chunks = receiver::set::needed_chunks(session.set.get("desk").unwrap()).len() as u64;
        let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());
        let h = receiver::fill::start(cache.clone(), fetcher, &session.set, opts(2));
        let t = Instant::now();
        while h.progress().done_bytes * 3 < h.progress().total_bytes
            && t.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        srv.kill();
        let r = h.wait();
        assert!(
            matches!(r, Err(Error::ChunkFailed { .. })),
            "the fill fails cleanly when the repository is gone: {r:?}"
        );
        // The cache is dropped here: a reboot.
    }
    // The repository comes back on the same address; a new boot logs in and resumes.
    let srv2 = f.serve_on(&addr.to_string());
    let cache = f.cache("cache.img");
    let session = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
    let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());
    let p = receiver::fill::start(cache.clone(), fetcher, &session.set, opts(2))
        .wait()
        .unwrap();
    assert!(
        p.cached_at_start > 0,
        "chunks fetched before the kill survived the reboot"
    );
    assert!(
        p.fetch.chunks < total_chunks,
        "only the missing chunks were fetched again ({} of {total_chunks})",
        p.fetch.chunks
    );
    assert_eq!(p.done_bytes, p.total_bytes);
    assert_cached_content(&cache, &session, &[("desk", &system)]);
    drop(srv2);
}

#[test]
fn tampered_manifest_is_refused_and_the_rest_of_the_set_runs() {
    let f = Fixture::new();
    let desk = image(4, 1);
    f.publish("desk", &desk, &[0]);
    f.publish("tools", &image(5, 1), &[0]);
    f.assign("alice", &["desk", "tools"]);
    // Tamper with the stored manifest of tools: more memory, signature unchanged.
    let mpath = f.repo.manifest_file("tools", 1);
    let text = std::fs::read_to_string(&mpath).unwrap();
    let tampered = text.replace("\"memory_mib\":256", "\"memory_mib\":4096");
    assert_ne!(text, tampered);
    std::fs::write(&mpath, tampered).unwrap();
    let srv = f.serve();
    let cache = f.cache("cache.img");
    let session = receiver::login(cache.clone(), &f.config(&srv.url()), "alice", PASSWORD).unwrap();
    assert_eq!(
        session
            .set
            .appliances
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>(),
        ["desk"]
    );
    assert_eq!(session.set.refused.len(), 1);
    assert_eq!(session.set.refused[0].name, "tools");
    assert!(
        session.set.refused[0].reason.contains("signature"),
        "{}",
        session.set.refused[0].reason
    );
    // An untrusted key refuses everything.
    let other = appliance::SecretKey::generate();
    let mut cfg = f.config(&srv.url());
    cfg.trusted_keys = vec![other.public()];
    let s2 = receiver::login(f.cache("cache2.img"), &cfg, "alice", PASSWORD).unwrap();
    assert!(s2.set.appliances.is_empty() && s2.set.refused.len() == 2);
    // The good one fills.
    let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());
    receiver::fill::start(cache.clone(), fetcher, &session.set, opts(2))
        .wait()
        .unwrap();
    assert_cached_content(&cache, &session, &[("desk", &desk)]);
}

#[test]
fn wrong_password_unknown_user_and_network_failure_are_told_apart() {
    let f = Fixture::new();
    f.publish("desk", &image(6, 1), &[0]);
    f.assign("alice", &["desk"]);
    let srv = f.serve();
    let cfg = f.config(&srv.url());
    let cache = f.cache("cache.img");
    assert!(matches!(
        receiver::login(cache.clone(), &cfg, "alice", "wrong"),
        Err(Error::BadCredentials)
    ));
    assert!(matches!(
        receiver::login(cache.clone(), &cfg, "mallory", PASSWORD),
        Err(Error::BadCredentials)
    ));
    // No record was left by failed logins.
    assert!(receiver::store::users(&cache).is_empty());
    // Nothing listens there: unreachable, and without a record no offline login.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg_dead = f.config(&format!("http://{dead}/"));
    match receiver::login(cache.clone(), &cfg_dead, "alice", PASSWORD) {
        Err(Error::NoOfflineRecord(u)) => assert_eq!(u, "alice"),
        other => panic!("expected NoOfflineRecord, got {:?}", other.map(|s| s.mode)),
    }
    let mut c = receiver::RepoClient::new(cfg_dead).unwrap();
    let e = c.login("alice", PASSWORD).unwrap_err();
    assert!(e.is_unreachable(), "{e}");
}

#[test]
fn offline_login_works_from_the_cache() {
    let f = Fixture::new();
    let system = image(7, 2);
    f.publish("desk", &system, &[0]);
    f.assign("alice", &["desk"]);
    let mut srv = f.serve();
    let cfg = f.config(&srv.url());
    {
        let cache = f.cache("cache.img");
        let session = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
        let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());
        receiver::fill::start(cache, fetcher, &session.set, opts(2))
            .wait()
            .unwrap();
    }
    srv.kill();
    let cache = f.cache("cache.img");
    assert!(
        matches!(
            receiver::login(cache.clone(), &cfg, "alice", "wrong"),
            Err(Error::BadCredentials)
        ),
        "a wrong password is refused offline too"
    );
    let session = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
    assert!(session.is_offline());
    assert!(
        session.status_line().contains("OFFLINE"),
        "{}",
        session.status_line()
    );
    assert_eq!(session.set.appliances.len(), 1);
    assert_cached_content(&cache, &session, &[("desk", &system)]);
    // A user who never logged in here cannot log in offline.
    assert!(matches!(
        receiver::login(cache, &cfg, "bob", "x"),
        Err(Error::NoOfflineRecord(_))
    ));
}

#[test]
fn demand_reads_jump_the_fill_queue() {
    let f = Fixture::new();
    let system = image(8, 8);
    f.publish("desk", &system, &[0]);
    f.assign("alice", &["desk"]);
    let srv = f.serve();
    // 15 ms per response: the fill of ~100 chunks over 1 connection takes > 1.5 s.
    let proxy = Proxy::start(
        srv.addr,
        Faults {
            delay: Duration::from_millis(15),
            ..Default::default()
        },
    );
    let cache = f.cache("cache.img");
    let session =
        receiver::login(cache.clone(), &f.config(&proxy.url()), "alice", PASSWORD).unwrap();
    let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());
    let h = receiver::fill::start(cache.clone(), fetcher.clone(), &session.set, opts(1));
    let disk = session.set.get("desk").unwrap().manifest.disks[0]
        .image
        .clone();
    let view = receiver::disks::view(&cache, &disk, fetcher.clone()).unwrap();
    // The last non-zero chunk of the disk: last in the fill's queue.
    let last = disk.chunks.iter().rposition(|c| c.is_some()).unwrap();
    let off = last as u64 * 65536;
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    view.read_at(off + 4096, &mut buf).unwrap();
    let took = t.elapsed();
    assert_eq!(&buf[..], &system[off as usize + 4096..off as usize + 8192]);
    let p = h.progress();
    assert!(
        !p.finished && p.done_bytes < p.total_bytes / 2,
        "the fill was still running ({} of {})",
        p.done_bytes,
        p.total_bytes
    );
    assert!(
        took < Duration::from_millis(500),
        "the demand read took {took:?}"
    );
    assert_eq!(fetcher.counts().demand_chunks, 1);
    h.cancel();
    assert!(matches!(h.wait(), Err(Error::Cancelled)));
}

#[test]
fn update_costs_only_new_chunks_and_keeps_the_old_version_until_complete() {
    let f = Fixture::new();
    let v1 = image(9, 4);
    f.publish("desk", &v1, &[0]);
    f.assign("alice", &["desk"]);
    let srv = f.serve();
    let cfg = f.config(&srv.url());
    let cache = f.cache("cache.img");
    let s1 = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
    receiver::fill::start(
        cache.clone(),
        receiver::Fetcher::new(s1.client.clone().unwrap()),
        &s1.set,
        opts(2),
    )
    .wait()
    .unwrap();
    // v2: three chunks changed.
    let mut v2 = v1.clone();
    for i in [1usize, 20, 40] {
        v2[i * 65536 + 100] ^= 0xff;
    }
    let stats = f.publish("desk", &v2, &[0]);
    assert_eq!(stats.new_chunks, 3);
    let mut s2 = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
    let a = s2.set.get("desk").unwrap();
    assert_eq!(a.manifest.version, 2);
    assert_eq!(
        a.previous.as_ref().map(|p| p.0.version),
        Some(1),
        "v1 stays usable until v2 is complete"
    );
    assert!(
        cache.pins().iter().any(|(n, _)| n == "app/desk@1")
            && cache.pins().iter().any(|(n, _)| n == "app/desk@2")
    );
    let p = receiver::fill::start(
        cache.clone(),
        receiver::Fetcher::new(s2.client.clone().unwrap()),
        &s2.set,
        opts(2),
    )
    .wait()
    .unwrap();
    assert_eq!(p.fetch.chunks, 3, "only the changed chunks were fetched");
    assert_eq!(s2.release_previous().unwrap(), ["desk"]);
    assert!(
        !cache.pins().iter().any(|(n, _)| n == "app/desk@1"),
        "v1 unpinned once v2 is complete"
    );
    assert_cached_content(&cache, &s2, &[("desk", &v2)]);
}

#[test]
fn user_disk_write_back_and_conflict_keeps_local_data() {
    let f = Fixture::new();
    f.publish("desk", &image(10, 1), &[0]);
    f.assign("alice", &["desk"]);
    let srv = f.serve();
    let cfg = f.config(&srv.url());

    // Terminal A writes and logs out.
    let cache_a = f.cache("a.img");
    let mut sa = receiver::login(cache_a.clone(), &cfg, "alice", PASSWORD).unwrap();
    let fa = receiver::Fetcher::new(sa.client.clone().unwrap());
    let blob = sa
        .set
        .get("desk")
        .unwrap()
        .user_disk("user")
        .unwrap()
        .image
        .clone();
    let ov = receiver::disks::open_user_disk(&cache_a, "alice", "desk", "user", &blob, fa.clone())
        .unwrap();
    let data = bytes(11, 8192, true);
    ov.write_at(65536 * 3, &data).unwrap();
    let r = receiver::write_back(&mut sa, "desk", "user", &ov).unwrap();
    assert_eq!((r.changed_chunks, r.uploaded_chunks, r.version), (1, 1, 1));
    assert!(
        ov.changed_chunks().is_empty(),
        "the overlay is emptied once the repository acknowledged"
    );
    drop(ov);

    // Terminal B (empty cache) logs in and finds the file.
    let cache_b = f.cache("b.img");
    let mut sb = receiver::login(cache_b.clone(), &cfg, "alice", PASSWORD).unwrap();
    let ud = sb
        .set
        .get("desk")
        .unwrap()
        .user_disk("user")
        .unwrap()
        .clone();
    assert_eq!(ud.version, 1);
    let fb = receiver::Fetcher::new(sb.client.clone().unwrap());
    let got = read_blob(&cache_b, &ud.image, fb.clone());
    assert_eq!(&got[65536 * 3..65536 * 3 + 8192], &data[..]);

    // A writes again and commits (v2); B, still on v1, then conflicts and keeps its data.
    let ov_a = receiver::disks::open_user_disk(
        &cache_a,
        "alice",
        "desk",
        "user",
        &sa.set.get("desk").unwrap().user_disk("user").unwrap().image,
        fa,
    )
    .unwrap();
    ov_a.write_at(0, &[1u8; 512]).unwrap();
    assert_eq!(
        receiver::write_back(&mut sa, "desk", "user", &ov_a)
            .unwrap()
            .version,
        2
    );
    let ov_b =
        receiver::disks::open_user_disk(&cache_b, "alice", "desk", "user", &ud.image, fb).unwrap();
    ov_b.write_at(512, &[2u8; 512]).unwrap();
    match receiver::write_back(&mut sb, "desk", "user", &ov_b) {
        Err(Error::Conflict {
            expected: 1,
            current: 2,
            ..
        }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    let mut buf = [0u8; 512];
    ov_b.read_at(512, &mut buf).unwrap();
    assert_eq!(
        buf, [2u8; 512],
        "B's local change is kept after the conflict"
    );
    assert_eq!(ov_b.changed_chunks(), vec![0]);
}

#[test]
fn a_terminal_without_local_changes_follows_a_version_written_elsewhere() {
    let f = Fixture::new();
    f.publish("desk", &image(10, 1), &[0]);
    f.assign("alice", &["desk"]);
    let srv = f.serve();
    let cfg = f.config(&srv.url());
    let user_disk = |s: &receiver::Session| {
        s.set
            .get("desk")
            .unwrap()
            .user_disk("user")
            .unwrap()
            .clone()
    };

    // Terminal A writes version 1 and logs out; its overlay is clean afterwards.
    let cache_a = f.cache("a.img");
    let mut sa = receiver::login(cache_a.clone(), &cfg, "alice", PASSWORD).unwrap();
    let fa = receiver::Fetcher::new(sa.client.clone().unwrap());
    let ov = receiver::open_session_user_disk(&sa, "desk", "user", fa).unwrap();
    ov.write_at(0, &[1u8; 512]).unwrap();
    assert_eq!(
        receiver::write_back(&mut sa, "desk", "user", &ov)
            .unwrap()
            .version,
        1
    );
    drop(ov);
    sa.logout();

    // Terminal B moves the disk to version 2.
    let cache_b = f.cache("b.img");
    let mut sb = receiver::login(cache_b.clone(), &cfg, "alice", PASSWORD).unwrap();
    let fb = receiver::Fetcher::new(sb.client.clone().unwrap());
    let ov = receiver::open_session_user_disk(&sb, "desk", "user", fb).unwrap();
    ov.write_at(512, &[2u8; 512]).unwrap();
    assert_eq!(
        receiver::write_back(&mut sb, "desk", "user", &ov)
            .unwrap()
            .version,
        2
    );
    drop(ov);
    sb.logout();

    // A logs in again: nothing local, so it opens version 2 instead of a conflict.
    let sa = receiver::login(cache_a.clone(), &cfg, "alice", PASSWORD).unwrap();
    assert_eq!(user_disk(&sa).version, 2);
    let fa = receiver::Fetcher::new(sa.client.clone().unwrap());
    let ov = receiver::open_session_user_disk(&sa, "desk", "user", fa)
        .expect("a clean overlay follows the newer version");
    let mut buf = [0u8; 1024];
    ov.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf[..512], &[1u8; 512][..]);
    assert_eq!(&buf[512..], &[2u8; 512][..], "B's write is seen on A");
    assert!(ov.changed_chunks().is_empty());
}

#[test]
fn https_login_with_a_built_in_ca() {
    let have_openssl = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok();
    if !have_openssl {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl is missing in CI: it is in .ci/apt-packages"
        );
        eprintln!("SKIPPED: needs openssl");
        return;
    }
    let f = Fixture::new();
    let system = image(12, 1);
    f.publish("desk", &system, &[0]);
    f.assign("alice", &["desk"]);
    // A CA (what the firmware has built in) and a server certificate it signed.
    let ssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(f.tmp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    ssl(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-days",
            "2",
            "-subj",
            "/CN=test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    ]
    .concat());
    ssl(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            "/CN=localhost",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
        ],
    ]
    .concat());
    std::fs::write(
        f.path("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "leaf.pem",
        "-extfile",
        "ext.cnf",
    ]);
    // (Any PEM key form works; PKCS#8 here.)
    ssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "leaf.key",
        "-out",
        "leaf8.pem",
    ]);
    let (cert, p8) = (f.path("ca.pem"), f.path("leaf8.pem"));
    let mut cfg = repository::server::ServeConfig::new(&f.repo, "127.0.0.1:0");
    cfg.tls = Some((f.path("leaf.pem"), p8));
    cfg.access_log = None;
    cfg.dummy_kdf = appliance::KdfParams::INSECURE_FOR_TESTS;
    let server = repository::server::start(f.repo.clone(), &cfg).unwrap();
    let url = format!("https://{}/", server.addr());

    // With the CA built in: login and fill over TLS.
    let mut rc = f.config(&url);
    rc.ca_pem = Some(cert);
    let cache = f.cache("cache.img");
    if let Err(e) = receiver::RepoClient::new(rc.clone())
        .unwrap()
        .login("alice", PASSWORD)
    {
        panic!("login over HTTPS with the CA: {e}");
    }
    let session = receiver::login(cache.clone(), &rc, "alice", PASSWORD).unwrap();
    assert_eq!(session.mode, Mode::Online);
    receiver::fill::start(
        cache.clone(),
        receiver::Fetcher::new(session.client.clone().unwrap()),
        &session.set,
        opts(2),
    )
    .wait()
    .unwrap();
    assert_cached_content(&cache, &session, &[("desk", &system)]);

    // Without it (webpki roots only) the certificate is not trusted: a transport error,
    // and with no record on that cache, no offline login either.
    let rc = f.config(&url);
    let mut client = receiver::RepoClient::new(rc.clone()).unwrap();
    let e = client.login("alice", PASSWORD).unwrap_err();
    assert!(
        e.is_unreachable() && e.to_string().to_lowercase().contains("certificate"),
        "{e}"
    );
    assert!(matches!(
        receiver::login(f.cache("other.img"), &rc, "alice", PASSWORD),
        Err(Error::NoOfflineRecord(_))
    ));
    server.shutdown();
}

#[test]
fn repository_restarted_within_the_retry_window_the_same_fill_completes() {
    let f = Fixture::new();
    let system = image(13, 12);
    f.publish("desk", &system, &[0]);
    f.assign("alice", &["desk"]);
    let mut srv = f.serve();
    let addr = srv.addr;
    let proxy = Proxy::start(
        addr,
        Faults {
            delay: Duration::from_millis(4),
            ..Default::default()
        },
    );
    let mut cfg = f.config(&proxy.url());
    cfg.attempts = 40; // 5 ms doubling to 50 ms: about 2 s of retrying per chunk
    let cache = f.cache("cache.img");
    let session = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
    let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());
    let h = receiver::fill::start(cache.clone(), fetcher, &session.set, opts(2));
    let t = Instant::now();
    while h.progress().done_bytes * 3 < h.progress().total_bytes
        && t.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    srv.kill();
    let at_kill = h.progress().done_bytes;
    std::thread::sleep(Duration::from_millis(300));
    let p_down = h.progress();
    assert!(
        !p_down.finished && p_down.done_bytes < p_down.total_bytes,
        "the fill waits for the repository"
    );
    let srv2 = f.serve_on(&addr.to_string());
    let p = h
        .wait()
        .expect("the same fill completes once the repository is back");
    assert!(
        p.fetch.retries > 0,
        "requests failed while it was down and were retried"
    );
    assert!(at_kill < p.total_bytes && p.done_bytes == p.total_bytes);
    assert_cached_content(&cache, &session, &[("desk", &system)]);
    drop(srv2);
}

#[test]
fn power_cut_after_an_acknowledged_write_back_is_repaired_at_the_next_login() {
    let f = Fixture::new();
    f.publish("desk", &image(14, 1), &[0]);
    f.assign("alice", &["desk"]);
    let srv = f.serve();
    let cfg = f.config(&srv.url());
    let data = bytes(15, 4096, false);
    {
        let cache = f.cache("a.img");
        let mut s = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
        let fetcher = receiver::Fetcher::new(s.client.clone().unwrap());
        let ov = receiver::open_session_user_disk(&s, "desk", "user", fetcher).unwrap();
        ov.write_at(65536 * 2, &data).unwrap();
        let r = receiver::writeback::write_back_crash_after_commit(&mut s, "desk", "user", &ov)
            .unwrap();
        assert_eq!(r.uploaded_chunks, 1);
        // Power cut: the repository has version 1, the overlay still names version 0.
    }
    let cache = f.cache("a.img");
    let s = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
    assert_eq!(
        s.set
            .get("desk")
            .unwrap()
            .user_disk("user")
            .unwrap()
            .version,
        1
    );
    let ov =
        receiver::open_session_user_disk(&s, "desk", "user", Arc::new(cachefs::NoSource)).unwrap();
    assert!(
        ov.changed_chunks().is_empty(),
        "the interrupted rebase was finished: nothing left to write back"
    );
    let mut buf = vec![0u8; 4096];
    ov.read_at(65536 * 2, &mut buf).unwrap();
    assert_eq!(buf, data);
    drop(ov);

    // Changes made here on version 1 while another terminal commits version 2: a conflict
    // at the next login, and the local overlay is left alone.
    let ov =
        receiver::open_session_user_disk(&s, "desk", "user", Arc::new(cachefs::NoSource)).unwrap();
    ov.write_at(0, &[7u8; 512]).unwrap();
    ov.flush().unwrap();
    drop(ov);
    let other = f.cache("b.img");
    let mut sb = receiver::login(other.clone(), &cfg, "alice", PASSWORD).unwrap();
    let fb = receiver::Fetcher::new(sb.client.clone().unwrap());
    let ovb = receiver::open_session_user_disk(&sb, "desk", "user", fb).unwrap();
    ovb.write_at(4096, &[9u8; 512]).unwrap();
    assert_eq!(
        receiver::write_back(&mut sb, "desk", "user", &ovb)
            .unwrap()
            .version,
        2
    );
    let s2 = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
    match receiver::open_session_user_disk(&s2, "desk", "user", Arc::new(cachefs::NoSource)) {
        Err(Error::Conflict {
            expected: 1,
            current: 2,
            ..
        }) => {}
        other => panic!("expected a conflict, got {:?}", other.map(|_| ())),
    }
    assert!(
        cache.overlay_base_digest("user/alice/desk/user").is_some(),
        "the local overlay is kept"
    );
}
