//! Which credentials each user has now, so that a session token can be checked against
//! them on every request.
//!
//! `collective-repo user passwd` and `user remove` change `private/users/<name>.json`
//! while the server runs, in another process. A token is bound to the fingerprint of the
//! verifier it was issued against ([`fingerprint`]); a request whose user's record is gone
//! or carries another verifier is refused, so those commands end every session of the
//! user at once. A new verifier always has a new random salt, so even the same password
//! set again (or a removed user added back) ends the old sessions.
//!
//! Every authenticated request (thousands of chunk uploads in a write-back) pays one
//! `stat` of the record file; the record is read and parsed again only when the file
//! changed (another inode, size, mtime or ctime: the CLI replaces the file by rename).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::store::Repo;

/// sha256 of a user record's verifier.
pub(crate) type Fingerprint = [u8; 32];

/// The fingerprint of `verifier` (an argon2id PHC string).
pub(crate) fn fingerprint(verifier: &str) -> Fingerprint {
    Sha256::digest(verifier.as_bytes()).into()
}

/// What identifies one version of a record file.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// The current fingerprint of each user seen, keyed by the stamp of the file it was read
/// from. Holds one entry per user with a live session at most (entries of removed users
/// are dropped when seen gone).
#[derive(Default)]
pub(crate) struct Credentials {
    map: Mutex<HashMap<String, (Stamp, Fingerprint)>>,
}

impl Credentials {
    /// The fingerprint of `user`'s verifier as the record on disk says now; `None` if the
    /// user does not exist (any more).
    pub(crate) fn current(&self, repo: &Repo, user: &str) -> Result<Option<Fingerprint>> {
        let path = repo.user_file(user)?;
        // The stamp is taken before the read: if the file is replaced in between, the
        // cached stamp is the old one and the next request reads the file again. The other
        // order could pair the new stamp with the old verifier for good.
        let stamp = match std::fs::metadata(&path) {
            Ok(m) => Stamp::of(&m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(user);
                return Ok(None);
            }
            Err(e) => return Err(crate::fsutil::io_context("reading", &path, e)),
        };
        if let Some((s, fp)) = self.map.lock().ok().and_then(|m| m.get(user).copied()) {
            if s == stamp {
                return Ok(Some(fp));
            }
        }
        let Some(rec) = repo.user(user)? else {
            self.forget(user);
            return Ok(None);
        };
        let fp = fingerprint(&rec.verifier);
        if let Ok(mut m) = self.map.lock() {
            m.insert(user.to_owned(), (stamp, fp));
        }
        Ok(Some(fp))
    }

    fn forget(&self, user: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance::{KdfParams, UserRecord};

    #[test]
    fn follows_the_record_file() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repo::init(&tmp.path().join("repo")).unwrap();
        let kdf = KdfParams::INSECURE_FOR_TESTS;
        let c = Credentials::default();
        assert_eq!(c.current(&repo, "alice").unwrap(), None);

        let mut rec = UserRecord::new("alice", "one", kdf).unwrap();
        repo.create_user(&rec).unwrap();
        let first = c.current(&repo, "alice").unwrap().unwrap();
        assert_eq!(first, fingerprint(&rec.verifier));
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            assert_eq!(c.current(&repo, "alice").unwrap(), Some(first));
        }
        eprintln!("10,000 checks in {:?}", started.elapsed());

        rec.appliances = vec!["desk".into()];
        repo.update_user(&rec).unwrap();
        assert_eq!(c.current(&repo, "alice").unwrap(), Some(first));

        rec.verifier = UserRecord::new("alice", "two", kdf).unwrap().verifier;
        repo.update_user(&rec).unwrap();
        let second = c.current(&repo, "alice").unwrap().unwrap();
        assert_ne!(second, first);

        assert!(repo.remove_user("alice").unwrap());
        assert_eq!(c.current(&repo, "alice").unwrap(), None);
    }
}
