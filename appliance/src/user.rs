//! User records (name, password verifier, appliance set) and user-disk manifests.
//!
//! Passwords are never stored: a record holds an argon2id verifier in PHC string form
//! (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), which carries its own parameters so
//! they can be raised later without a format change.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

use crate::chunking::ChunkList;
use crate::error::{Error, Result};
use crate::names::validate_name;
use crate::sealed::SealedIndex;
use crate::userkey::{DataKey, RecoveryPublicKey, WrappedKey};

/// Current user record format: 2 carries the user's wrapped data key. Format 1 records
/// (written before sealing) are still read: their user gets a key at the next login.
pub const USER_RECORD_FORMAT: u32 = 2;
/// Current user-disk manifest format: 2 lists sealed chunks and carries the sealed index
/// ([`crate::sealed`]). Format 1 (plaintext chunks) is still read, never written.
pub const USER_DISK_FORMAT: u32 = 2;

/// Cost parameters of argon2id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// OWASP's argon2id recommendation (m = 19 MiB, t = 2, p = 1): about 20-40 ms on an
    /// office PC, which bounds online guessing together with the server's rate limit.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };
    /// The data key's wrap (docs/formats.md, "Key hierarchy"): m = 64 MiB, t = 3, p = 1.
    /// It is run once per login on the terminal, a PC with gigabytes of memory, so it can
    /// cost far more than the repository's verifier, which every login costs the server:
    /// 3.4 times OWASP's memory-time product, about a quarter of a second on a PC. It is
    /// what stands between a stolen copy of the wrapped key (a terminal's disk, a backup of
    /// the repository's records) and the user's data. One lane: the `argon2` crate runs
    /// lanes one after another, so more lanes would cost the terminal time without
    /// costing an attacker more.
    pub const DATA_KEY: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };
    /// Cheap parameters for tests only (verifiers made with them are weak).
    pub const INSECURE_FOR_TESTS: KdfParams = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };
}

/// Makes an argon2id verifier (PHC string) for `password` with a fresh random salt.
pub fn hash_password(password: &str, params: KdfParams) -> Result<String> {
    let params = Params::new(params.m_kib, params.t, params.p, None)
        .map_err(|e| Error::invalid("argon2 parameters", e.to_string()))?;
    let salt = SaltString::generate(&mut rand_core::OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::invalid("password", e.to_string()))
}

/// Checks `password` against an argon2id verifier. `Err(Error::WrongPassword)` if it does
/// not match; other errors mean the verifier itself is unusable.
pub fn verify_password(verifier: &str, password: &str) -> Result<()> {
    let hash = PasswordHash::new(verifier)
        .map_err(|e| Error::invalid("password verifier", e.to_string()))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(Error::invalid(
            "password verifier",
            format!("algorithm {} is not argon2id", hash.algorithm),
        ));
    }
    match Argon2::default().verify_password(password.as_bytes(), &hash) {
        Ok(()) => Ok(()),
        Err(argon2::password_hash::Error::Password) => Err(Error::WrongPassword),
        Err(e) => Err(Error::invalid("password verifier", e.to_string())),
    }
}

/// The argon2id parameters a verifier was made with, so a new verifier of the same
/// password (for example the offline verifier handed out at login) costs the same.
pub fn kdf_params_of(verifier: &str) -> Result<KdfParams> {
    let hash = PasswordHash::new(verifier)
        .map_err(|e| Error::invalid("password verifier", e.to_string()))?;
    let params =
        Params::try_from(&hash).map_err(|e| Error::invalid("password verifier", e.to_string()))?;
    Ok(KdfParams {
        m_kib: params.m_cost(),
        t: params.t_cost(),
        p: params.p_cost(),
    })
}

/// A user as the repository stores it (never served to anyone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    /// [`USER_RECORD_FORMAT`].
    pub format: u32,
    /// User name.
    pub name: String,
    /// argon2id PHC string.
    pub verifier: String,
    /// The user's appliance set: appliance names, in start order. The latest version of each
    /// is what a login hands out.
    pub appliances: Vec<String>,
    /// The user's data key, wrapped (None only in format-1 records: the user's terminal
    /// makes one at the next login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<WrappedKey>,
}

impl UserRecord {
    /// A new user with an empty appliance set and no data key (see [`UserRecord::with_key`]).
    pub fn new(name: &str, password: &str, params: KdfParams) -> Result<UserRecord> {
        validate_name("user name", name)?;
        if password.is_empty() {
            return Err(Error::invalid("password", "must not be empty"));
        }
        Ok(UserRecord {
            format: USER_RECORD_FORMAT,
            name: name.into(),
            verifier: hash_password(password, params)?,
            appliances: Vec::new(),
            data_key: None,
        })
    }

    /// A new user with a fresh data key wrapped with the password (`wrap` parameters) and,
    /// if given, with the organisation's recovery key. The key itself is dropped (wiped)
    /// here: nothing on the repository can open it again without the password.
    pub fn with_key(
        name: &str,
        password: &str,
        params: KdfParams,
        wrap: KdfParams,
        recovery: Option<&RecoveryPublicKey>,
    ) -> Result<UserRecord> {
        let mut rec = UserRecord::new(name, password, params)?;
        rec.data_key = Some(DataKey::generate().wrap(name, password, wrap, recovery)?);
        Ok(rec)
    }

    /// Checks format and names.
    pub fn validate(&self) -> Result<()> {
        if !(1..=USER_RECORD_FORMAT).contains(&self.format) {
            return Err(Error::UnsupportedFormat {
                what: "user record",
                found: self.format,
                supported: USER_RECORD_FORMAT,
            });
        }
        validate_name("user name", &self.name)?;
        for a in &self.appliances {
            validate_name("appliance name", a)?;
        }
        if let Some(k) = &self.data_key {
            k.validate()?;
        }
        Ok(())
    }
}

/// The current content of one user's user disk of one appliance. Not signed by the
/// publisher: it is the user's own data, accepted by the repository from an authenticated
/// session and committed by compare-and-swap on `version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDiskManifest {
    /// [`USER_DISK_FORMAT`].
    pub format: u32,
    /// Owner.
    pub user: String,
    /// Appliance name.
    pub appliance: String,
    /// Disk name within the appliance (role `user`).
    pub disk: String,
    /// 1 for the first commit, then +1 per commit.
    pub version: u64,
    /// The disk's content: sealed chunk ids in format 2, plaintext ids in format 1.
    pub image: ChunkList,
    /// Format 2: the plaintext ids, encrypted, and the manifest's MAC ([`crate::sealed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedIndex>,
}

impl UserDiskManifest {
    /// True if it lists sealed chunks (format 2); false for a format-1 manifest of
    /// plaintext chunks written before sealing.
    pub fn is_sealed(&self) -> bool {
        self.format >= 2
    }

    /// Checks format, names and the chunk list (not the seal: that needs the user's key,
    /// [`crate::sealed::UserSealer::open_manifest`]).
    pub fn validate(&self) -> Result<()> {
        if !(1..=USER_DISK_FORMAT).contains(&self.format) {
            return Err(Error::UnsupportedFormat {
                what: "user-disk manifest",
                found: self.format,
                supported: USER_DISK_FORMAT,
            });
        }
        validate_name("user name", &self.user)?;
        validate_name("appliance name", &self.appliance)?;
        validate_name("disk name", &self.disk)?;
        if (self.format >= 2) != self.sealed.is_some() {
            return Err(Error::invalid(
                "user-disk manifest",
                "format 2 carries a sealed index and format 1 none",
            ));
        }
        if self.version == 0 {
            return Err(Error::invalid(
                "user-disk manifest",
                "version must be 1 or more",
            ));
        }
        Ok(self.image.validate()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_verifier() {
        let rec = UserRecord::new("alice", "correct horse", KdfParams::INSECURE_FOR_TESTS).unwrap();
        assert!(rec.verifier.starts_with("$argon2id$"));
        verify_password(&rec.verifier, "correct horse").unwrap();
        assert_eq!(
            kdf_params_of(&rec.verifier).unwrap(),
            KdfParams::INSECURE_FOR_TESTS
        );
        assert!(matches!(
            verify_password(&rec.verifier, "wrong"),
            Err(Error::WrongPassword)
        ));
        assert!(verify_password("garbage", "x").is_err());
        // Same password, different salt: different verifiers.
        let again =
            UserRecord::new("alice", "correct horse", KdfParams::INSECURE_FOR_TESTS).unwrap();
        assert_ne!(rec.verifier, again.verifier);
        assert!(UserRecord::new("Alice", "x", KdfParams::INSECURE_FOR_TESTS).is_err());
        assert!(UserRecord::new("bob", "", KdfParams::INSECURE_FOR_TESTS).is_err());
    }
}
