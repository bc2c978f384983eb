//! The receiver against the real repository server on 127.0.0.1 when the login is turned
//! away (the failed-login limit's 429; a busy 503 or 429 through the fault proxy): offline
//! login where the user has a record here, with the right password only; and a session
//! the repository ended (password changed) gets a clear error at write-back and keeps the
//! local changes.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use appliance::KdfParams;
use common::proxy::{Faults, Proxy};
use common::*;
use receiver::Error;

/// A fixture with `desk` assigned to alice and served.
fn served() -> (Fixture, Server) {
    let f = Fixture::new();
    f.publish("desk", &image(21, 1), &[0]);
    f.assign("alice", &["desk"]);
    let srv = f.serve();
    (f, srv)
}

/// Logs alice in online once, which leaves her offline record in `cache`.
fn leave_a_record(f: &Fixture, srv: &Server, cache: &std::sync::Arc<cachefs::Cache>) {
    let mut s = receiver::login(cache.clone(), &f.config(&srv.url()), "alice", PASSWORD).unwrap();
    assert!(!s.is_offline());
    s.logout();
}

#[test]
fn the_failed_login_limit_falls_back_to_offline_login_with_the_right_password_only() {
    let (f, srv) = served();
    let cfg = f.config(&srv.url());
    let cache = f.cache("cache.img");
    leave_a_record(&f, &srv, &cache);

    // Someone mistypes alice's password at this terminal until the repository says 429.
    let mut client = receiver::RepoClient::new(cfg.clone()).unwrap();
    let mut failures = 0;
    loop {
        match client.login("alice", "wrong") {
            Err(Error::BadCredentials) => failures += 1,
            Err(Error::RateLimited { .. }) => break,
            other => panic!("{:?}", other.map(|r| r.user)),
        }
        assert!(failures <= 5);
    }

    let session = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
    assert!(session.is_offline());
    let line = session.status_line();
    assert!(
        line.starts_with("OFFLINE") && line.contains("too many failed attempts"),
        "{line}"
    );
    assert!(
        matches!(
            receiver::login(cache.clone(), &cfg, "alice", "wrong"),
            Err(Error::BadCredentials)
        ),
        "a wrong password never works offline"
    );
    // Without a record on the terminal the limit stands.
    assert!(matches!(
        receiver::login(f.cache("fresh.img"), &cfg, "alice", PASSWORD),
        Err(Error::RateLimited { .. })
    ));
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert!(log.contains(" POST /api/v1/login 429 "), "{log}");
}

#[test]
fn a_busy_login_falls_back_to_offline_login_after_a_short_patience() {
    let (f, srv) = served();
    let cache = f.cache("cache.img");
    leave_a_record(&f, &srv, &cache);

    for status in [503, 429] {
        let proxy = Proxy::start(
            srv.addr,
            Faults {
                path_prefix: "/api/v1/login".into(),
                busy_per_mille: 1000,
                busy_retry_after_secs: 1,
                busy_status: status,
                ..Default::default()
            },
        );
        let mut cfg = f.config(&proxy.url());
        cfg.busy_login_patience = Duration::from_secs(2);
        let started = Instant::now();
        let session = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
        let took = started.elapsed();
        assert!(session.is_offline(), "{status}");
        assert!(
            session.status_line().contains("busy"),
            "{}",
            session.status_line()
        );
        let asked = proxy.counters.busy.load(Ordering::Relaxed);
        assert!(
            asked >= 2,
            "{status}: the login was asked again first ({asked})"
        );
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(5),
            "{status}: {took:?}"
        );
        assert!(
            matches!(
                receiver::login(cache.clone(), &cfg, "alice", "wrong"),
                Err(Error::BadCredentials)
            ),
            "{status}: a wrong password never works offline"
        );
        // Without a record: all the attempts, then nothing to fall back on.
        cfg.attempts = 2;
        assert!(matches!(
            receiver::login(f.cache("fresh.img"), &cfg, "alice", PASSWORD),
            Err(Error::NoOfflineRecord(_))
        ));
    }
}

#[test]
fn a_password_change_ends_the_session_and_write_back_keeps_the_changes() {
    let (f, srv) = served();
    let cache = f.cache("cache.img");
    let mut s = receiver::login(cache.clone(), &f.config(&srv.url()), "alice", PASSWORD).unwrap();
    let ov = open_desk_user_disk(&cache, &s);
    ov.write_at(0, &bytes(22, 4096, true)).unwrap();

    repository::users::passwd(
        &f.repo,
        "alice",
        "new secret",
        KdfParams::INSECURE_FOR_TESTS,
        KdfParams::INSECURE_FOR_TESTS,
        repository::users::PasswdMode::DiscardData,
    )
    .unwrap();
    let e = receiver::write_back(&mut s, "desk", "user", &ov).unwrap_err();
    assert!(matches!(e, Error::SessionRevoked), "{e}");
    assert!(!e.is_unreachable(), "not retried, not offline");
    assert!(e.to_string().contains("password was changed"), "{e}");
    assert_eq!(
        ov.changed_chunks().len(),
        1,
        "the change stays in the overlay"
    );
    assert!(f.repo.user_disk("alice", "desk", "user").unwrap().is_none());
}
