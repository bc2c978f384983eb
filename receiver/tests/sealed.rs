//! Sealed user data over real HTTP on loopback (the repository's server, as `collective-repo
//! serve` runs it): the repository never holds a user's data in the clear, another terminal
//! reads it back with the password, a wrong password opens nothing, the organisation's
//! recovery key keeps the data through an administrator's reset, a reset without it
//! refuses unless told to discard, and a planted manifest is refused.

mod common;

use std::path::{Path, PathBuf};

use appliance::{KdfParams, RecoverySecretKey};
use common::*;
use receiver::Error;
use repository::users::{self, PasswdMode, PasswdOutcome};

const FAST: KdfParams = KdfParams::INSECURE_FOR_TESTS;
/// Where the markers' blocks go on the 1 MiB user disk (overlay writes are 512-byte
/// aligned): a compressible chunk and a random one; each marker sits 100 bytes in.
const TEXT_AT: u64 = 3 * 65536 + 512;
const RANDOM_AT: u64 = 5 * 65536 + 4096;

/// A marker no run has written before.
fn marker() -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("collective-marker-{nanos:x}-{:x}", std::process::id()).into_bytes()
}

/// Every file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Files under `dir` holding `marker` in their raw bytes or, for stored chunks, in their
/// decompressed plaintext.
fn holding(dir: &Path, marker: &[u8]) -> Vec<PathBuf> {
    let mut all = Vec::new();
    files(dir, &mut all);
    all.into_iter()
        .filter(|p| {
            let raw = std::fs::read(p).unwrap();
            contains(&raw, marker)
                || (raw.starts_with(b"CK")
                    && appliance::chunk::decode_chunk_unverified(&raw)
                        .is_ok_and(|plain| contains(&plain, marker)))
        })
        .collect()
}

/// Writes the marker into a text chunk and a random chunk of the user disk.
fn write_markers(ov: &cachefs::Overlay, m: &[u8]) {
    let mut text = bytes(31, 65536 - 1024, true);
    text[100..100 + m.len()].copy_from_slice(m);
    ov.write_at(TEXT_AT, &text).unwrap();
    let mut noise = bytes(32, 4096, false);
    noise[100..100 + m.len()].copy_from_slice(m);
    ov.write_at(RANDOM_AT, &noise).unwrap();
}

/// Reads the session's user disk of desk and checks both markers are there.
fn reads_markers(cache: &std::sync::Arc<cachefs::Cache>, s: &receiver::Session, m: &[u8]) -> bool {
    let ud = s.set.get("desk").unwrap().user_disk("user").unwrap();
    let disk = read_blob(
        cache,
        &ud.image,
        receiver::Fetcher::new(s.client.clone().unwrap()),
    );
    let t = TEXT_AT as usize + 100;
    let r = RANDOM_AT as usize + 100;
    &disk[t..t + m.len()] == m && &disk[r..r + m.len()] == m
}

fn served() -> (Fixture, Server) {
    let f = Fixture::new();
    f.publish("desk", &image(51, 1), &[0]);
    f.assign("alice", &["desk"]);
    let srv = f.serve();
    (f, srv)
}

/// Logs `user` in on a fresh cache `name`, writes the markers and writes them back.
fn write_back_markers(f: &Fixture, srv: &Server, user: &str, password: &str, name: &str, m: &[u8]) {
    let cache = f.cache(name);
    let mut s = receiver::login(cache.clone(), &f.config(&srv.url()), user, password).unwrap();
    let ov = open_desk_user_disk(&cache, &s);
    write_markers(&ov, m);
    let r = receiver::write_back(&mut s, "desk", "user", &ov).unwrap();
    assert_eq!(r.version, 1);
    // The first write-back seals every non-zero chunk of the disk: the two changed ones.
    assert_eq!(
        (r.changed_chunks, r.sealed_chunks, r.uploaded_chunks),
        (2, 2, 2)
    );
    s.logout();
}

#[test]
fn the_repository_never_holds_the_users_data_and_another_terminal_reads_it() {
    let (f, srv) = served();
    let m = marker();

    // The search finds a marker in a stored (compressed) chunk: a real control.
    let control = f.path("control");
    std::fs::create_dir_all(&control).unwrap();
    let mut text = bytes(5, 65536, true);
    text[1000..1000 + m.len()].copy_from_slice(&m);
    let stored = appliance::encode_chunk(&text);
    assert_eq!(stored[3], appliance::ChunkEncoding::Frames as u8);
    std::fs::write(control.join("chunk"), stored).unwrap();
    assert_eq!(holding(&control, &m).len(), 1);

    write_back_markers(&f, &srv, "alice", PASSWORD, "a.img", &m);

    let found = holding(f.repo.root(), &m);
    assert!(
        found.is_empty(),
        "the repository holds the marker in {found:?}"
    );
    // Every chunk of the committed disk is sealed, and its manifest is format 2.
    let committed = f.repo.user_disk("alice", "desk", "user").unwrap().unwrap();
    assert!(committed.is_sealed());
    for id in committed.image.distinct_chunks() {
        let raw = std::fs::read(
            f.repo
                .root()
                .join("public")
                .join(appliance::wire::chunk_path(&id)),
        )
        .unwrap();
        assert!(
            appliance::sealed::is_sealed(&raw),
            "chunk {id} is not sealed"
        );
    }

    // Another terminal, empty cache: logs in and reads both markers back.
    let cache_b = f.cache("b.img");
    let s = receiver::login(cache_b.clone(), &f.config(&srv.url()), "alice", PASSWORD).unwrap();
    assert_eq!(
        s.set
            .get("desk")
            .unwrap()
            .user_disk("user")
            .unwrap()
            .version,
        1
    );
    assert!(reads_markers(&cache_b, &s, &m));

    // The same chunk written by bob seals to other bytes: no dedup across users.
    users::add(&f.repo, "bob", "bobs pw", FAST, FAST).unwrap();
    f.assign("bob", &["desk"]);
    write_back_markers(&f, &srv, "bob", "bobs pw", "c.img", &m);
    let bob = f.repo.user_disk("bob", "desk", "user").unwrap().unwrap();
    let shared: Vec<_> = bob
        .image
        .distinct_chunks()
        .into_iter()
        .filter(|id| committed.image.distinct_chunks().contains(id))
        .collect();
    assert!(
        shared.is_empty(),
        "alice's and bob's sealed chunks must differ"
    );
    assert!(holding(f.repo.root(), &m).is_empty());
}

#[test]
fn a_wrong_password_opens_nothing_online_or_offline() {
    let (f, mut srv) = served();
    let m = marker();
    write_back_markers(&f, &srv, "alice", PASSWORD, "a.img", &m);

    let rec = f.repo.user("alice").unwrap().unwrap();
    let wrapped = rec.data_key.expect("user add made a data key");
    assert!(matches!(
        wrapped.unwrap_with_password("alice", "wrong"),
        Err(appliance::Error::WrongPassword)
    ));
    wrapped.unwrap_with_password("alice", PASSWORD).unwrap();

    // Terminal B logs in once (its offline record keeps the wrapped key, no verifier),
    // then the repository goes away.
    let cache_b = f.cache("b.img");
    let s = receiver::login(cache_b.clone(), &f.config(&srv.url()), "alice", PASSWORD).unwrap();
    assert!(reads_markers(&cache_b, &s, &m));
    assert!(
        s.record.verifier.is_empty(),
        "no second, cheaper target for guessing"
    );
    assert!(s.record.data_key.is_some());
    drop(s);
    srv.kill();
    let cfg = f.config(&srv.url());
    assert!(matches!(
        receiver::login(cache_b.clone(), &cfg, "alice", "wrong"),
        Err(Error::BadCredentials)
    ));
    let s = receiver::login(cache_b.clone(), &cfg, "alice", PASSWORD).unwrap();
    assert!(s.is_offline());
    let ud = s.set.get("desk").unwrap().user_disk("user").unwrap();
    let disk = read_blob(&cache_b, &ud.image, std::sync::Arc::new(cachefs::NoSource));
    let t = TEXT_AT as usize + 100;
    assert_eq!(&disk[t..t + m.len()], &m[..]);
}

#[test]
fn the_recovery_key_keeps_the_data_through_a_reset_and_a_reset_without_it_must_discard() {
    let (f, srv) = served();
    let org = RecoverySecretKey::generate();
    f.repo.set_recovery_key(&org.public()).unwrap();
    users::add(&f.repo, "bob", "first", FAST, FAST).unwrap();
    f.assign("bob", &["desk"]);
    let m = marker();
    write_back_markers(&f, &srv, "bob", "first", "a.img", &m);

    // Without the recovery key the administrator is told what a reset means.
    let e = users::passwd(&f.repo, "bob", "second", FAST, FAST, PasswdMode::Plain).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("--discard-data") && text.contains("--recovery-key"),
        "{text}"
    );
    assert!(
        receiver::login(f.cache("x.img"), &f.config(&srv.url()), "bob", "first").is_ok(),
        "nothing changed"
    );

    // With it: same key, new password, data readable on a fresh terminal.
    let wrong = RecoverySecretKey::generate();
    assert!(users::passwd(
        &f.repo,
        "bob",
        "second",
        FAST,
        FAST,
        PasswdMode::Recovery(&wrong)
    )
    .is_err());
    assert_eq!(
        users::passwd(
            &f.repo,
            "bob",
            "second",
            FAST,
            FAST,
            PasswdMode::Recovery(&org)
        )
        .unwrap(),
        PasswdOutcome::Rewrapped
    );
    let cfg = f.config(&srv.url());
    assert!(matches!(
        receiver::login(f.cache("y.img"), &cfg, "bob", "first"),
        Err(Error::BadCredentials)
    ));
    let cache = f.cache("b.img");
    let s = receiver::login(cache.clone(), &cfg, "bob", "second").unwrap();
    assert!(reads_markers(&cache, &s, &m));
    drop(s);

    // Told to discard: a new key, and bob starts from the appliance's initial content.
    assert_eq!(
        users::passwd(&f.repo, "bob", "third", FAST, FAST, PasswdMode::DiscardData).unwrap(),
        PasswdOutcome::Discarded(1)
    );
    let cache = f.cache("c.img");
    let s = receiver::login(cache.clone(), &cfg, "bob", "third").unwrap();
    let ud = s.set.get("desk").unwrap().user_disk("user").unwrap();
    assert_eq!(ud.version, 0);
    assert!(!reads_markers(&cache, &s, &m));
}

#[test]
fn a_user_changes_their_own_password_and_keeps_their_data() {
    let (f, srv) = served();
    let m = marker();
    write_back_markers(&f, &srv, "alice", PASSWORD, "a.img", &m);
    let cfg = f.config(&srv.url());
    let s = receiver::login(f.cache("b.img"), &cfg, "alice", PASSWORD).unwrap();
    assert!(matches!(
        receiver::change_password(&s, "not the old one", "new pw"),
        Err(Error::BadCredentials)
    ));
    receiver::change_password(&s, PASSWORD, "new pw").unwrap();
    assert!(matches!(
        receiver::login(f.cache("c.img"), &cfg, "alice", PASSWORD),
        Err(Error::BadCredentials)
    ));
    let cache = f.cache("d.img");
    let s2 = receiver::login(cache.clone(), &cfg, "alice", "new pw").unwrap();
    assert!(reads_markers(&cache, &s2, &m));
    assert_eq!(
        f.repo
            .user("alice")
            .unwrap()
            .unwrap()
            .data_key
            .unwrap()
            .key_id,
        s.keys.as_ref().unwrap().wrapped.key_id,
        "the same data key: nothing was re-sealed"
    );
}

#[test]
fn a_planted_or_altered_user_disk_manifest_is_refused() {
    let (f, srv) = served();
    let m = marker();
    write_back_markers(&f, &srv, "alice", PASSWORD, "a.img", &m);
    let mut planted = f.repo.user_disk("alice", "desk", "user").unwrap().unwrap();
    // Swap two sealed chunks: every id still exists on the repository.
    planted.image.chunks.swap(3, 5);
    f.repo.write_user_disk(&planted).unwrap();
    match receiver::login(f.cache("b.img"), &f.config(&srv.url()), "alice", PASSWORD) {
        Err(Error::BadUserDisk { why, .. }) => assert!(why.contains("planted or altered"), "{why}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a planted manifest was accepted"),
    }
}

#[test]
fn a_user_from_before_sealing_gets_a_key_and_the_clear_disk_is_sealed_at_logout() {
    let (f, srv) = served();
    let m = marker();
    // carol's record and disk as a layout-1 repository left them: no key, plaintext chunks.
    let mut rec = appliance::UserRecord::new("carol", "pw", FAST).unwrap();
    rec.format = 1;
    rec.appliances = vec!["desk".into()];
    f.repo.create_user(&rec).unwrap();
    let mut disk = vec![0u8; 1 << 20];
    let t = TEXT_AT as usize + 100;
    disk[t..t + m.len()].copy_from_slice(&m);
    let r = RANDOM_AT as usize + 100;
    disk[r..r + m.len()].copy_from_slice(&m);
    let plain = appliance::ChunkList::of_data(&disk, 65536).unwrap();
    for id in plain.distinct_chunks() {
        let i = plain.chunks.iter().position(|c| *c == Some(id)).unwrap();
        f.repo
            .put_chunk(&id, &disk[i * 65536..(i + 1) * 65536])
            .unwrap();
    }
    f.repo
        .write_user_disk(&appliance::UserDiskManifest {
            format: 1,
            user: "carol".into(),
            appliance: "desk".into(),
            disk: "user".into(),
            version: 1,
            image: plain,
            sealed: None,
        })
        .unwrap();
    assert!(
        !holding(f.repo.root(), &m).is_empty(),
        "in the clear before"
    );

    let cache = f.cache("a.img");
    let mut s = receiver::login(cache.clone(), &f.config(&srv.url()), "carol", "pw").unwrap();
    assert!(
        f.repo.user("carol").unwrap().unwrap().data_key.is_some(),
        "the terminal stored a key"
    );
    assert!(reads_markers(&cache, &s, &m));
    let ov = open_desk_user_disk(&cache, &s);
    let r = receiver::write_back(&mut s, "desk", "user", &ov).unwrap();
    assert_eq!((r.changed_chunks, r.sealed_chunks, r.version), (0, 2, 2));
    assert!(f
        .repo
        .user_disk("carol", "desk", "user")
        .unwrap()
        .unwrap()
        .is_sealed());
    let stats = repository::gc::gc(
        &f.repo,
        &repository::gc::GcOptions {
            grace: std::time::Duration::ZERO,
            keep_versions: None,
            dry_run: false,
        },
    )
    .unwrap();
    assert!(stats.removed_chunks >= 2, "{stats:?}");
    assert!(
        holding(f.repo.root(), &m).is_empty(),
        "gc removed the plaintext"
    );
    let cache_b = f.cache("b.img");
    let s = receiver::login(cache_b.clone(), &f.config(&srv.url()), "carol", "pw").unwrap();
    assert!(reads_markers(&cache_b, &s, &m));
}
