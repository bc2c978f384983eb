//! The key hierarchy from the administrator's side, through the `collective-repo` CLI: the
//! recovery key, `user passwd` with and without it, and a layout-1 repository refused
//! until `collective-repo upgrade`.

mod common;

use common::*;
use repository::Repo;

#[test]
fn recovery_key_rewraps_and_a_reset_without_it_needs_discard_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let repo = dir.to_str().unwrap().to_owned();
    let keys = tmp.path().join("org");
    let keys = keys.to_str().unwrap();
    assert!(cli(&["init", &repo], None).0);
    let (ok, out, err) = cli(&["recovery", "keygen", "--out", keys], None);
    assert!(ok && out.contains("OFFLINE"), "{out}{err}");
    assert!(cli(&["recovery", "keygen", "--out", keys], None)
        .2
        .contains("exists already"));
    let (ok, out, err) = cli(
        &["-r", &repo, "recovery", "install", &format!("{keys}.pub")],
        None,
    );
    assert!(ok && out.contains("x25519:"), "{out}{err}");
    assert!(
        cli(
            &["-r", &repo, "user", "add", "bob", "--insecure-fast-kdf"],
            Some("one\n")
        )
        .0
    );

    let r = Repo::open(&dir).unwrap();
    let before = r.user("bob").unwrap().unwrap().data_key.unwrap();
    assert!(
        before.recovery.is_some(),
        "sealed to the installed recovery key"
    );

    // No flag: refused before a password is even read, saying what each way means.
    let (ok, _, err) = cli(
        &["-r", &repo, "user", "passwd", "bob", "--insecure-fast-kdf"],
        Some("two\n"),
    );
    assert!(
        !ok && err.contains("--recovery-key")
            && err.contains("--discard-data")
            && err.contains("unreadable"),
        "{err}"
    );
    assert_eq!(
        r.user("bob").unwrap().unwrap().data_key.unwrap(),
        before,
        "nothing changed"
    );

    // A wrong recovery key changes nothing either.
    let other = tmp.path().join("other");
    assert!(
        cli(
            &["recovery", "keygen", "--out", other.to_str().unwrap()],
            None
        )
        .0
    );
    let (ok, _, err) = cli(
        &[
            "-r",
            &repo,
            "user",
            "passwd",
            "bob",
            "--recovery-key",
            &format!("{}.key", other.display()),
            "--insecure-fast-kdf",
        ],
        Some("two\n"),
    );
    assert!(!ok && err.contains("recovery"), "{err}");

    let (ok, out, err) = cli(
        &[
            "-r",
            &repo,
            "user",
            "passwd",
            "bob",
            "--recovery-key",
            &format!("{keys}.key"),
            "--insecure-fast-kdf",
        ],
        Some("two\n"),
    );
    assert!(ok && out.contains("re-wrapped"), "{out}{err}");
    let after = r.user("bob").unwrap().unwrap().data_key.unwrap();
    assert_eq!(after.key_id, before.key_id, "the same data key");
    assert!(after.unwrap_with_password("bob", "two").is_ok());
    assert!(after.unwrap_with_password("bob", "one").is_err());

    let (ok, out, err) = cli(
        &[
            "-r",
            &repo,
            "user",
            "passwd",
            "bob",
            "--discard-data",
            "--insecure-fast-kdf",
        ],
        Some("three\n"),
    );
    assert!(ok && out.contains("NEW data key"), "{out}{err}");
    let fresh = r.user("bob").unwrap().unwrap().data_key.unwrap();
    assert_ne!(fresh.key_id, before.key_id);
    assert!(
        fresh.recovery.is_some(),
        "the new key is sealed to the recovery key too"
    );
}

#[test]
fn a_layout_1_repository_is_refused_until_upgraded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let repo = dir.to_str().unwrap().to_owned();
    assert!(cli(&["init", &repo], None).0);
    // A user from before sealing, and the layout version of then.
    let r = Repo::open(&dir).unwrap();
    let mut old =
        appliance::UserRecord::new("carol", "pw", appliance::KdfParams::INSECURE_FOR_TESTS)
            .unwrap();
    old.format = 1;
    r.create_user(&old).unwrap();
    std::fs::write(
        dir.join("repository.json"),
        r#"{"format":1,"kind":"collective-repository"}"#,
    )
    .unwrap();

    let (ok, _, err) = cli(&["-r", &repo, "list"], None);
    assert!(
        !ok && err.contains(&format!("collective-repo upgrade {repo}"))
            && err.contains("in the clear"),
        "{err}"
    );
    assert!(Repo::open(&dir).is_err());
    let (ok, out, err) = cli(&["upgrade", &repo], None);
    assert!(
        ok && out.contains("layout format 2") && out.contains("carol"),
        "{out}{err}"
    );
    assert!(Repo::open(&dir).is_ok());
    let (ok, out, _) = cli(&["upgrade", &repo], None);
    assert!(
        ok && out.contains("carol"),
        "upgrading again is harmless: {out}"
    );
}
