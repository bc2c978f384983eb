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

/// Current user record format.
pub const USER_RECORD_FORMAT: u32 = 1;
/// Current user-disk manifest format.
pub const USER_DISK_FORMAT: u32 = 1;

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
}

impl UserRecord {
    /// A new user with an empty appliance set.
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
        })
    }

    /// Checks format and names.
    pub fn validate(&self) -> Result<()> {
        if self.format != USER_RECORD_FORMAT {
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
    /// The disk's content.
    pub image: ChunkList,
}

impl UserDiskManifest {
    /// Checks format, names and the chunk list.
    pub fn validate(&self) -> Result<()> {
        if self.format != USER_DISK_FORMAT {
            return Err(Error::UnsupportedFormat {
                what: "user-disk manifest",
                found: self.format,
                supported: USER_DISK_FORMAT,
            });
        }
        validate_name("user name", &self.user)?;
        validate_name("appliance name", &self.appliance)?;
        validate_name("disk name", &self.disk)?;
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
