//! What a terminal keeps for offline login, against the real repository server on
//! 127.0.0.1: offline login expires `offline_days` after the last online login (and says
//! until when it works); a password the repository refuses but the record still accepts
//! (changed or removed user) removes the record at that online contact, a mistyped one does
//! not; after write-back only the `offline_users` most recent users keep their record and
//! user-disk pins, never one with changes not yet written back.

mod common;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use appliance::KdfParams;
use common::*;
use receiver::{offline, store, Error};

const DAY: u64 = 86_400;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `desk` assigned to alice (and to `others`, with the same password), served.
fn served(others: &[&str]) -> (Fixture, Server) {
    let f = Fixture::new();
    f.publish("desk", &image(31, 1), &[0]);
    f.assign("alice", &["desk"]);
    for u in others {
        let k = KdfParams::INSECURE_FOR_TESTS;
        repository::users::add(&f.repo, u, PASSWORD, k, k).unwrap();
        f.assign(u, &["desk"]);
    }
    let srv = f.serve();
    (f, srv)
}

fn userdisk_pins(cache: &cachefs::Cache, user: &str) -> usize {
    let prefix = format!("{}{user}/", receiver::set::USERDISK_PIN_PREFIX);
    cache
        .pins()
        .iter()
        .filter(|(n, _)| n.starts_with(&prefix))
        .count()
}

/// The administrator sets a new password for `user` (a reset that discards the data key).
fn new_password(f: &Fixture, user: &str) {
    let k = KdfParams::INSECURE_FOR_TESTS;
    let discard = repository::users::PasswdMode::DiscardData;
    repository::users::passwd(&f.repo, user, "new secret", k, k, discard).unwrap();
}

/// `user` types the old password online: refused as a wrong password. Returns whether
/// their offline record is still on the terminal.
fn refused_online(cache: &Arc<cachefs::Cache>, cfg: &receiver::RepoConfig, user: &str) -> bool {
    let e = receiver::login(cache.clone(), cfg, user, PASSWORD)
        .err()
        .unwrap();
    assert!(matches!(e, Error::BadCredentials), "{user}: {e}");
    store::users(cache).iter().any(|u| u == user)
}

/// Changes the record of `user` in `cache` as time would have.
fn age(cache: &cachefs::Cache, user: &str, change: impl FnOnce(&mut store::OfflineRecord)) {
    let mut rec = store::load(cache, user).unwrap().unwrap();
    change(&mut rec);
    store::save(cache, &rec).unwrap();
}

#[test]
fn offline_login_expires_and_says_until_when() {
    let (f, mut srv) = served(&[]);
    let cfg = f.config(&srv.url());
    let cache = f.cache("cache.img");
    let mut s = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
    assert!(!s.is_offline());
    assert!(!s.status_line().contains("works until"));
    s.logout();
    let online = store::load(&cache, "alice").unwrap().unwrap().online_unix;
    assert!(
        online.abs_diff(now()) < 60,
        "the record keeps the online login's time"
    );
    srv.kill();

    // Within the 14 days: in, and the status line says until when.
    let s = receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap();
    assert!(s.is_offline());
    let until = offline::date(online + 14 * DAY);
    let line = s.status_line();
    assert!(
        line.contains(&format!("offline: works until {until}")),
        "{line}"
    );
    drop(s);

    // 15 days after the last online login: refused, whatever the password, and told why.
    age(&cache, "alice", |r| r.online_unix = now() - 15 * DAY);
    for pw in [PASSWORD, "wrong"] {
        let e = receiver::login(cache.clone(), &cfg, "alice", pw)
            .err()
            .unwrap();
        assert!(matches!(e, Error::OfflineExpired { .. }), "{e}");
        let msg = e.to_string();
        let expired = offline::date(now() - DAY);
        assert!(msg.contains(&format!("expired on {expired}")), "{msg}");
        assert!(
            msg.contains("14 day(s)") && msg.contains("Connect the terminal to the network"),
            "{msg}"
        );
    }
    assert_eq!(
        store::users(&cache),
        vec!["alice"],
        "expiry refuses, it does not delete"
    );

    // The limit is the terminal's setting: 30 days lets her in again, 0 lets nobody in.
    let mut long = cfg.clone();
    long.offline_days = 30;
    assert!(receiver::login(cache.clone(), &long, "alice", PASSWORD)
        .unwrap()
        .is_offline());
    let mut off = cfg.clone();
    off.offline_days = 0;
    let e = receiver::login(cache.clone(), &off, "alice", PASSWORD)
        .err()
        .unwrap();
    assert!(matches!(e, Error::OfflineDisabled { .. }), "{e}");
    assert!(e.to_string().contains("collective.offline-days=0"), "{e}");

    // A record from before expiry existed (format 1): its saved time is its online login.
    age(&cache, "alice", |r| {
        r.format = 1;
        r.online_unix = 0;
        r.last_login_unix = 0;
        r.saved_unix = now() - 20 * DAY;
    });
    let r = store::load(&cache, "alice").unwrap().unwrap();
    assert_eq!(r.format, store::RECORD_FORMAT);
    assert_eq!(r.online_unix, r.saved_unix);
    let e = receiver::login(cache.clone(), &cfg, "alice", PASSWORD)
        .err()
        .unwrap();
    assert!(matches!(e, Error::OfflineExpired { .. }), "{e}");
}

#[test]
fn a_password_refused_online_that_opens_the_record_revokes_it_a_typo_does_not() {
    let (f, mut srv) = served(&["bob", "carol"]);
    let cfg = f.config(&srv.url());
    let cache = f.cache("cache.img");
    for u in ["alice", "bob", "carol"] {
        let s = receiver::login(cache.clone(), &cfg, u, PASSWORD).unwrap();
        assert_eq!(userdisk_pins(&cache, u), 1);
        drop(s);
    }
    // carol works and does not get to write back.
    let s = receiver::login(cache.clone(), &cfg, "carol", PASSWORD).unwrap();
    let ov = open_desk_user_disk(&cache, &s);
    ov.write_at(0, &bytes(32, 4096, true)).unwrap();
    ov.flush().unwrap();
    drop(ov);
    drop(s);

    // A typo online (or someone guessing): BadCredentials, the record stays.
    let e = receiver::login(cache.clone(), &cfg, "alice", "typo")
        .err()
        .unwrap();
    assert!(matches!(e, Error::BadCredentials), "{e}");
    assert!(store::users(&cache).contains(&"alice".to_string()));

    // The password changed on the repository; the old one typed here online is refused
    // and the record goes with its user-disk pin.
    new_password(&f, "alice");
    assert!(!refused_online(&cache, &cfg, "alice"));
    assert_eq!(userdisk_pins(&cache, "alice"), 0);

    // A removed user: the same at the next online try.
    repository::users::remove(&f.repo, "bob").unwrap();
    assert!(!refused_online(&cache, &cfg, "bob"));

    // carol's password changed while her changes wait here: the record goes, the pin of
    // the disk her overlay is based on stays.
    new_password(&f, "carol");
    assert!(!refused_online(&cache, &cfg, "carol"));
    assert_eq!(
        userdisk_pins(&cache, "carol"),
        1,
        "unsaved changes keep their base"
    );

    // Offline now: the old passwords open nothing on this terminal.
    srv.kill();
    for u in ["alice", "bob", "carol"] {
        let e = receiver::login(cache.clone(), &cfg, u, PASSWORD)
            .err()
            .unwrap();
        assert!(matches!(e, Error::NoOfflineRecord(_)), "{u}: {e}");
    }
}

#[test]
fn a_wrong_password_while_unreachable_keeps_the_record() {
    let (f, mut srv) = served(&[]);
    let cfg = f.config(&srv.url());
    let cache = f.cache("cache.img");
    drop(receiver::login(cache.clone(), &cfg, "alice", PASSWORD).unwrap());
    srv.kill();
    let e = receiver::login(cache.clone(), &cfg, "alice", "typo")
        .err()
        .unwrap();
    assert!(matches!(e, Error::BadCredentials), "{e}");
    assert_eq!(store::users(&cache), vec!["alice"]);
    assert!(receiver::login(cache.clone(), &cfg, "alice", PASSWORD)
        .unwrap()
        .is_offline());
}

/// Logs `user` in online, writes to the user disk and (if `save`) writes it back, then
/// applies the terminal's limit as the session's logout does.
fn work(
    cache: &Arc<cachefs::Cache>,
    cfg: &receiver::RepoConfig,
    user: &str,
    seed: u64,
    save: bool,
) -> Vec<String> {
    let mut s = receiver::login(cache.clone(), cfg, user, PASSWORD).unwrap();
    let ov = open_desk_user_disk(cache, &s);
    ov.write_at(0, &bytes(seed, 4096, true)).unwrap();
    ov.flush().unwrap();
    if save {
        let r = receiver::write_back(&mut s, "desk", "user", &ov).unwrap();
        assert_eq!(r.uploaded_chunks, 1);
    }
    drop(ov);
    let gone = s.keep_recent_offline_users().unwrap();
    s.logout();
    gone
}

#[test]
fn after_write_back_only_the_most_recent_users_keep_their_offline_records() {
    let (f, srv) = served(&["bob", "carol", "dave"]);
    let mut cfg = f.config(&srv.url());
    cfg.offline_users = 2;
    let cache = f.cache("cache.img");

    // alice works and her write-back fails (not saved): she is never dropped.
    assert!(work(&cache, &cfg, "alice", 41, false).is_empty());
    age(&cache, "alice", |r| r.last_login_unix = now() - 300);
    assert!(work(&cache, &cfg, "bob", 42, true).is_empty());
    age(&cache, "bob", |r| r.last_login_unix = now() - 200);
    // carol makes three; alice is beyond the two most recent but her changes are not
    // written back: nobody goes.
    assert!(work(&cache, &cfg, "carol", 43, true).is_empty());
    age(&cache, "carol", |r| r.last_login_unix = now() - 100);
    let mut users = store::users(&cache);
    users.sort();
    assert_eq!(users, vec!["alice", "bob", "carol"]);

    // dave: bob (saved, the oldest after alice) goes with his user-disk pin.
    assert_eq!(work(&cache, &cfg, "dave", 44, true), vec!["bob"]);
    age(&cache, "dave", |r| r.last_login_unix = now() - 50);
    let mut users = store::users(&cache);
    users.sort();
    assert_eq!(users, vec!["alice", "carol", "dave"]);
    assert_eq!(
        userdisk_pins(&cache, "bob"),
        0,
        "bob's user disk is evictable"
    );
    assert_eq!(userdisk_pins(&cache, "alice"), 1);

    // bob comes back online (his data from the repository, a new record): carol goes.
    assert_eq!(work(&cache, &cfg, "bob", 45, true), vec!["carol"]);
    let mut users = store::users(&cache);
    users.sort();
    assert_eq!(users, vec!["alice", "bob", "dave"]);

    // With offline login turned off, nobody's data stays once written back, but alice's
    // unsaved changes keep their base.
    let mut off = cfg.clone();
    off.offline_days = 0;
    let mut gone = work(&cache, &off, "carol", 46, true);
    gone.sort();
    assert_eq!(gone, vec!["bob", "carol", "dave"]);
    assert_eq!(store::users(&cache), vec!["alice"]);
    assert_eq!(userdisk_pins(&cache, "carol"), 0);
    assert_eq!(userdisk_pins(&cache, "alice"), 1);
}
