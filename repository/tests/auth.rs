//! Sessions and failed logins over real HTTP on loopback: `user passwd` and `user remove`
//! (the real command, another process, while the server runs) end open sessions; failed
//! logins behind a trusted proxy hold up neither other users nor other clients, and the
//! per-user delay is bounded; an untrusted `X-Forwarded-For` is ignored.

mod common;

use std::time::{Duration, Instant};

use appliance::wire::*;
use appliance::KdfParams;
use common::*;
use repository::server::login_limit::{LoginPolicy, Rule};

/// Logs in, as the client `forwarded_for` names if given.
fn login_as(
    base: &str,
    user: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> Result<LoginResponse, (u16, ApiError)> {
    let mut req = ureq::post(&format!("{}{}", base.trim_end_matches('/'), LOGIN_PATH));
    if let Some(client) = forwarded_for {
        req = req.set("X-Forwarded-For", client);
    }
    match req.send_json(serde_json::json!({"user": user, "password": password})) {
        Ok(r) => Ok(r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => Err((code, r.into_json().unwrap())),
        Err(e) => panic!("transport error: {e}"),
    }
}

/// An authenticated call that changes nothing: `chunks/missing` with no ids. The status
/// and, on failure, the error code.
fn probe(base: &str, token: &str) -> (u16, String) {
    let r = ureq::post(&format!(
        "{}{}",
        base.trim_end_matches('/'),
        MISSING_CHUNKS_PATH
    ))
    .set("Authorization", &format!("Bearer {token}"))
    .send_json(serde_json::json!({"ids": []}));
    match r {
        Ok(r) => (r.status(), String::new()),
        Err(ureq::Error::Status(code, r)) => {
            let e: ApiError = r.into_json().unwrap();
            (code, e.code)
        }
        Err(e) => panic!("transport error: {e}"),
    }
}

/// Runs `collective-repo -r DIR ARGS` with `stdin`; its standard output.
fn repo_cli(dir: &std::path::Path, args: &[&str], stdin: &str) -> String {
    let dir = dir.to_str().unwrap();
    let (ok, out, err) = cli(&[&["-r", dir], args].concat(), Some(stdin));
    assert!(ok, "{args:?}: {out}{err}");
    out
}

#[test]
fn password_change_and_removal_end_open_sessions() {
    let f = Fixture::new();
    let (_server, base, _) = f.serve();
    let token = login_as(&base, "alice", PASSWORD, None).unwrap().token;
    assert_eq!(probe(&base, &token).0, 200);

    // A change of the appliance set leaves the credentials, and the session, alone.
    repository::users::assign(&f.repo, "alice", &["desk".into()]).unwrap();
    assert_eq!(probe(&base, &token).0, 200);

    let out = repo_cli(
        &f.dir,
        &[
            "user",
            "passwd",
            "alice",
            "--discard-data",
            "--insecure-fast-kdf",
        ],
        "new secret\n",
    );
    assert!(out.contains("open sessions end"), "{out}");
    assert_eq!(probe(&base, &token), (401, "session_revoked".into()));
    assert_eq!(probe(&base, &token).0, 401, "a revoked token stays refused");
    let (code, e) = login_as(&base, "alice", PASSWORD, None).unwrap_err();
    assert_eq!((code, e.code.as_str()), (401, "bad_credentials"));
    let token = login_as(&base, "alice", "new secret", None).unwrap().token;
    assert_eq!(probe(&base, &token).0, 200);

    let out = repo_cli(&f.dir, &["user", "remove", "alice"], "");
    assert!(out.contains("open sessions end"), "{out}");
    assert_eq!(probe(&base, &token), (401, "session_revoked".into()));

    // Added back with the same password: a new verifier, so old tokens stay dead.
    repository::users::add(
        &f.repo,
        "alice",
        "again",
        KdfParams::INSECURE_FOR_TESTS,
        KdfParams::INSECURE_FOR_TESTS,
    )
    .unwrap();
    let token = login_as(&base, "alice", "again", None).unwrap().token;
    repository::users::remove(&f.repo, "alice").unwrap();
    repository::users::add(
        &f.repo,
        "alice",
        "again",
        KdfParams::INSECURE_FOR_TESTS,
        KdfParams::INSECURE_FOR_TESTS,
    )
    .unwrap();
    assert_eq!(probe(&base, &token), (401, "session_revoked".into()));
}

/// The default policy with a short per-user delay, so that the test sees its end.
fn quick_policy() -> LoginPolicy {
    LoginPolicy {
        per_user: Rule {
            free: 3,
            max_delay: Duration::from_secs(2),
        },
        ..LoginPolicy::default()
    }
}

#[test]
fn failed_logins_behind_a_trusted_proxy_lock_out_no_one_else() {
    let (x, y, home) = ("10.0.0.1", "10.0.0.2", "10.0.0.3");
    let f = Fixture::new();
    repository::users::add(
        &f.repo,
        "bob",
        "bobs secret",
        KdfParams::INSECURE_FOR_TESTS,
        KdfParams::INSECURE_FOR_TESTS,
    )
    .unwrap();
    // The test client plays the trusted front: loopback, naming the client it carries.
    let (_server, base, _) = f.serve_with(|cfg| {
        cfg.limits.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        cfg.limits.login = quick_policy();
    });
    // Alice logged in at her usual terminal before the guessing starts.
    login_as(&base, "alice", PASSWORD, Some(home)).unwrap();

    // Someone at X guesses alice's password until X is turned away for her: by the
    // per-user count (3 here) or the count of alice at X (5), whichever comes first.
    let mut refused = 0;
    let turned_away = loop {
        match login_as(&base, "alice", "guess", Some(x)).unwrap_err() {
            (401, _) => refused += 1,
            (429, e) => break e,
            other => panic!("{other:?}"),
        }
        assert!(refused <= 5, "X is not turned away after 5 failures");
    };
    assert!(refused >= 3, "{refused}");
    assert_eq!(turned_away.code, "rate_limited");
    let (code, _) = login_as(&base, "alice", PASSWORD, Some(x)).unwrap_err();
    assert_eq!(code, 429, "at X even the right password waits");

    // Nobody else is locked out: bob at X and at Y, alice at her usual terminal.
    login_as(&base, "bob", "bobs secret", Some(x)).expect("bob at X");
    login_as(&base, "bob", "bobs secret", Some(y)).expect("bob at Y");
    login_as(&base, "alice", PASSWORD, Some(home)).expect("alice at a known terminal");

    // Alice at a new terminal is only slowed, for at most the per-user delay.
    let started = Instant::now();
    let (code, e) = login_as(&base, "alice", PASSWORD, Some(y)).unwrap_err();
    assert_eq!((code, e.code.as_str()), (429, "rate_limited"));
    let wait = e.retry_after_secs.unwrap();
    assert!((1..=3).contains(&wait), "{wait}");
    std::thread::sleep(Duration::from_secs(wait));
    login_as(&base, "alice", PASSWORD, Some(y)).expect("alice at Y after the delay");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn an_untrusted_forwarded_for_is_ignored_by_the_login_limit() {
    let f = Fixture::new();
    // A proxy is trusted, but it is not the test client. With the default policy, five
    // failures from five real clients would limit no one; from one client they do.
    let (_server, base, _) = f.serve_with(|cfg| {
        cfg.limits.trusted_proxies = vec!["10.255.0.1".parse().unwrap()];
    });
    for i in 0..5 {
        let client = format!("10.0.1.{i}");
        let (code, _) = login_as(&base, "alice", "guess", Some(&client)).unwrap_err();
        assert_eq!(code, 401);
    }
    // Claiming to be yet another client does not escape the count of the real one.
    let (code, e) = login_as(&base, "alice", PASSWORD, Some("10.0.2.1")).unwrap_err();
    assert_eq!((code, e.code.as_str()), (429, "rate_limited"));
}
