//! A user's key hierarchy: one random 256-bit data key per user, from which every key
//! that seals the user's data is derived, kept on the repository only wrapped.
//!
//! ```text
//! password ──argon2id(salt, m, t, p)──▶ KEK ──XChaCha20-Poly1305──▶ wraps the data key
//! organisation recovery key (X25519, optional) ──sealed box──▶ wraps the same data key
//! data key ──HKDF-SHA256──▶ chunk key, nonce key, manifest key, key id
//! ```
//!
//! Why a data key rather than a key derived from the password: a password change then
//! re-wraps 32 bytes instead of re-sealing every chunk the user ever wrote, and an
//! administrator holding the organisation's recovery key can give a user a new password
//! without the repository (which stores only wrapped keys) ever being able to read the
//! data. The wrapped key travels in the login reply so any terminal can unwrap it with the
//! password the user typed.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::user::KdfParams;

/// Version of [`WrappedKey`].
pub const WRAPPED_KEY_FORMAT: u32 = 1;
/// Length of a data key.
pub const DATA_KEY_LEN: usize = 32;
/// Length of a key id (bytes; written as 32 hex digits).
pub const KEY_ID_LEN: usize = 16;
/// Associated data of the password wrap: binds it to this use, the user and the key id.
const WRAP_CONTEXT: &[u8] = b"collective-terminal data key v1\0";
/// Text prefix of a recovery public key.
const RECOVERY_PUBLIC_PREFIX: &str = "x25519:";
/// Text prefix of a recovery secret key file's line.
const RECOVERY_SECRET_PREFIX: &str = "collective-recovery-key x25519:";

/// A user's data key: 32 random bytes, wiped from memory when dropped, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct DataKey([u8; DATA_KEY_LEN]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.key_id())
    }
}

impl DataKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> DataKey {
        let mut k = [0u8; DATA_KEY_LEN];
        OsRng.fill_bytes(&mut k);
        DataKey(k)
    }

    /// A 32-byte key derived for one purpose (`info` names it); separate keys per purpose
    /// so that no ciphertext of one kind can be passed off as another.
    pub(crate) fn subkey(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit: expand cannot fail.
        let _ = Hkdf::<Sha256>::new(None, &self.0).expand(info, out.as_mut());
        out
    }

    /// The key's public name: it reveals nothing about the key, and tells a terminal
    /// which key sealed a manifest (a reset with `--discard-data` makes a new one).
    pub fn key_id(&self) -> String {
        hex::encode(&self.subkey(b"collective key id v1")[..KEY_ID_LEN])
    }

    /// Wraps this key for `user`: with `password` (argon2id with `params` and a fresh
    /// salt), and with the organisation's recovery key if there is one.
    pub fn wrap(
        &self,
        user: &str,
        password: &str,
        params: KdfParams,
        recovery: Option<&RecoveryPublicKey>,
    ) -> Result<WrappedKey> {
        Ok(WrappedKey {
            format: WRAPPED_KEY_FORMAT,
            key_id: self.key_id(),
            password: PasswordWrap::new(self, user, password, params)?,
            recovery: recovery.map(|r| r.wrap(self)).transpose()?,
        })
    }
}

/// The data key wrapped with a key derived from the password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordWrap {
    /// Always `argon2id`.
    pub kdf: String,
    /// argon2id memory in KiB.
    pub m_kib: u32,
    /// argon2id passes.
    pub t: u32,
    /// argon2id lanes.
    pub p: u32,
    /// 16 random bytes, hex.
    pub salt: String,
    /// Hex of the 24-byte nonce followed by the XChaCha20-Poly1305 ciphertext and tag.
    pub sealed: String,
}

fn kek(password: &str, salt: &[u8], params: KdfParams) -> Result<XChaCha20Poly1305> {
    let p = Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|e| Error::invalid("argon2 parameters", e.to_string()))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
        .hash_password_into(password.as_bytes(), salt, out.as_mut())
        .map_err(|e| Error::invalid("password key derivation", e.to_string()))?;
    Ok(XChaCha20Poly1305::new(out.as_ref().into()))
}

fn wrap_aad(user: &str, key_id: &str) -> Vec<u8> {
    let mut aad = WRAP_CONTEXT.to_vec();
    aad.extend_from_slice(user.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

impl PasswordWrap {
    fn new(key: &DataKey, user: &str, password: &str, params: KdfParams) -> Result<PasswordWrap> {
        if password.is_empty() {
            return Err(Error::invalid("password", "must not be empty"));
        }
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let aad = wrap_aad(user, &key.key_id());
        let ct = kek(password, &salt, params)?
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &key.0,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::invalid("data key", "wrapping failed"))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ct);
        Ok(PasswordWrap {
            kdf: "argon2id".into(),
            m_kib: params.m_kib,
            t: params.t,
            p: params.p,
            salt: hex::encode(salt),
            sealed: hex::encode(sealed),
        })
    }

    /// The argon2id parameters this wrap was made with.
    pub fn params(&self) -> KdfParams {
        KdfParams {
            m_kib: self.m_kib,
            t: self.t,
            p: self.p,
        }
    }
}

/// A user's data key as the repository keeps it (in the user record) and hands it out
/// (in the login reply): it can be opened only with the password, or with the
/// organisation's recovery secret key, which never is on the repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    /// [`WRAPPED_KEY_FORMAT`].
    pub format: u32,
    /// [`DataKey::key_id`] of the wrapped key.
    pub key_id: String,
    /// The key wrapped with the password.
    pub password: PasswordWrap,
    /// The key sealed to the organisation's recovery key, if one was installed when the
    /// key was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryWrap>,
}

impl WrappedKey {
    /// Checks the format and the shape of every field (not the password).
    pub fn validate(&self) -> Result<()> {
        if self.format != WRAPPED_KEY_FORMAT {
            return Err(Error::UnsupportedFormat {
                what: "wrapped data key",
                found: self.format,
                supported: WRAPPED_KEY_FORMAT,
            });
        }
        let bad = |why: &str| Err(Error::invalid("wrapped data key", why.to_owned()));
        if hex_len(&self.key_id) != Some(KEY_ID_LEN) {
            return bad("key_id is not 32 hex digits");
        }
        let p = &self.password;
        if p.kdf != "argon2id" {
            return bad("the password wrap's kdf is not argon2id");
        }
        if hex_len(&p.salt) != Some(16) || hex_len(&p.sealed) != Some(24 + DATA_KEY_LEN + 16) {
            return bad("the password wrap's salt or sealed key has the wrong length");
        }
        if Params::new(p.m_kib, p.t, p.p, Some(32)).is_err() {
            return bad("the password wrap's argon2id parameters are out of range");
        }
        if let Some(r) = &self.recovery {
            RecoveryPublicKey::parse(&r.key)?;
            if hex_len(&r.sealed) != Some(RECOVERY_SEALED_LEN) {
                return bad("the recovery wrap has the wrong length");
            }
        }
        Ok(())
    }

    /// Opens the key with `password`. `Err(Error::WrongPassword)` if it does not open it.
    /// Costs one argon2id run with the wrap's parameters: this is the login's cost.
    pub fn unwrap_with_password(&self, user: &str, password: &str) -> Result<DataKey> {
        self.validate()?;
        let p = &self.password;
        let salt = hex::decode(&p.salt).map_err(|e| Error::invalid("salt", e.to_string()))?;
        let sealed =
            hex::decode(&p.sealed).map_err(|e| Error::invalid("wrapped key", e.to_string()))?;
        let (nonce, ct) = sealed.split_at(24);
        let aad = wrap_aad(user, &self.key_id);
        let plain = Zeroizing::new(
            kek(password, &salt, p.params())?
                .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
                .map_err(|_| Error::WrongPassword)?,
        );
        self.checked(&plain)
    }

    /// Opens the key with the organisation's recovery secret key.
    pub fn unwrap_with_recovery(&self, secret: &RecoverySecretKey) -> Result<DataKey> {
        self.validate()?;
        let Some(r) = &self.recovery else {
            return Err(Error::invalid(
                "wrapped data key",
                "it has no recovery wrap: it was made before a recovery key was installed",
            ));
        };
        if r.key != secret.public().to_string() {
            return Err(Error::invalid(
                "recovery key",
                format!(
                    "this data key is sealed to recovery key {}, not to {}",
                    r.key,
                    secret.public()
                ),
            ));
        }
        let sealed =
            hex::decode(&r.sealed).map_err(|e| Error::invalid("recovery wrap", e.to_string()))?;
        let plain = Zeroizing::new(secret.0.unseal(&sealed).map_err(|_| {
            Error::invalid("recovery wrap", "does not open with this recovery key")
        })?);
        self.checked(&plain)
    }

    /// Checks that opened bytes are the key this wrap names.
    fn checked(&self, plain: &[u8]) -> Result<DataKey> {
        let bytes: [u8; DATA_KEY_LEN] = plain
            .try_into()
            .map_err(|_| Error::invalid("wrapped data key", "opened to the wrong length"))?;
        let key = DataKey(bytes);
        if key.key_id() != self.key_id {
            return Err(Error::invalid(
                "wrapped data key",
                "it opened to a key whose id is not the one recorded (damaged record)",
            ));
        }
        Ok(key)
    }

    /// The same data key wrapped with a new password (and fresh salt); the recovery wrap
    /// is kept as it is (it wraps the same key).
    pub fn rewrap(
        &self,
        key: &DataKey,
        user: &str,
        password: &str,
        params: KdfParams,
    ) -> Result<WrappedKey> {
        if key.key_id() != self.key_id {
            return Err(Error::invalid(
                "data key",
                "it is not the key this record wraps",
            ));
        }
        Ok(WrappedKey {
            format: WRAPPED_KEY_FORMAT,
            key_id: self.key_id.clone(),
            password: PasswordWrap::new(key, user, password, params)?,
            recovery: self.recovery.clone(),
        })
    }
}

fn hex_len(s: &str) -> Option<usize> {
    if s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.len() % 2 == 0
    {
        Some(s.len() / 2)
    } else {
        None
    }
}

/// The hex after `prefix` on the first line of a key file that is not blank or a `#`
/// comment.
fn key_line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| l.strip_prefix(prefix))
}

/// Length of a sealed box of a data key: ephemeral public key, key, tag.
const RECOVERY_SEALED_LEN: usize = 32 + DATA_KEY_LEN + 16;

/// The data key sealed to the organisation's recovery public key (NaCl sealed box:
/// X25519, XSalsa20-Poly1305).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryWrap {
    /// The recovery public key it is sealed to (`x25519:<64 hex>`).
    pub key: String,
    /// Hex of the sealed box.
    pub sealed: String,
}

/// The organisation's recovery public key: the repository keeps it, so every new data key
/// is also sealed to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryPublicKey(crypto_box::PublicKey);

impl RecoveryPublicKey {
    /// Parses `x25519:<64 hex>` (a `.pub` file may carry `#` comment lines around it).
    pub fn parse(text: &str) -> Result<RecoveryPublicKey> {
        let hex_part = key_line(text, RECOVERY_PUBLIC_PREFIX).ok_or_else(|| {
            Error::invalid(
                "recovery public key",
                format!("expected {RECOVERY_PUBLIC_PREFIX}<64 hex>"),
            )
        })?;
        let bytes: [u8; 32] = hex::decode(hex_part)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::invalid("recovery public key", "expected 64 hex digits"))?;
        Ok(RecoveryPublicKey(crypto_box::PublicKey::from(bytes)))
    }

    fn wrap(&self, key: &DataKey) -> Result<RecoveryWrap> {
        let sealed = self
            .0
            .seal(&mut OsRng, &key.0)
            .map_err(|_| Error::invalid("recovery wrap", "sealing failed"))?;
        Ok(RecoveryWrap {
            key: self.to_string(),
            sealed: hex::encode(sealed),
        })
    }
}

impl std::fmt::Display for RecoveryPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{RECOVERY_PUBLIC_PREFIX}{}",
            hex::encode(self.0.as_bytes())
        )
    }
}

/// The organisation's recovery secret key: kept offline by the administrator, used only
/// by `collective-repo user passwd --recovery-key FILE`.
pub struct RecoverySecretKey(crypto_box::SecretKey);

impl RecoverySecretKey {
    /// A fresh key.
    pub fn generate() -> RecoverySecretKey {
        RecoverySecretKey(crypto_box::SecretKey::generate(&mut OsRng))
    }

    /// Its public half.
    pub fn public(&self) -> RecoveryPublicKey {
        RecoveryPublicKey(self.0.public_key())
    }

    /// The file form: `collective-recovery-key x25519:<64 hex>`.
    pub fn to_file_text(&self) -> String {
        format!(
            "{RECOVERY_SECRET_PREFIX}{}\n",
            hex::encode(self.0.to_bytes())
        )
    }

    /// Parses the file form (comment lines starting with `#` are skipped).
    pub fn parse(text: &str) -> Result<RecoverySecretKey> {
        let hex_part = key_line(text, RECOVERY_SECRET_PREFIX).ok_or_else(|| {
            Error::invalid("recovery secret key", format!("expected a line {RECOVERY_SECRET_PREFIX}<64 hex> (a .key file from `collective-repo recovery keygen`)"))
        })?;
        let bytes = Zeroizing::new(
            hex::decode(hex_part)
                .map_err(|_| Error::invalid("recovery secret key", "expected 64 hex digits"))?,
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::invalid("recovery secret key", "expected 64 hex digits"))?;
        Ok(RecoverySecretKey(crypto_box::SecretKey::from(arr)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: KdfParams = KdfParams::INSECURE_FOR_TESTS;

    #[test]
    fn password_wrap_opens_only_with_the_password_and_the_user() {
        let key = DataKey::generate();
        let w = key.wrap("alice", "pw", P, None).unwrap();
        w.validate().unwrap();
        assert_eq!(w.unwrap_with_password("alice", "pw").unwrap(), key);
        assert!(matches!(
            w.unwrap_with_password("alice", "pW"),
            Err(Error::WrongPassword)
        ));
        // Bound to the user: bob's record cannot carry alice's wrap.
        assert!(matches!(
            w.unwrap_with_password("bob", "pw"),
            Err(Error::WrongPassword)
        ));
        let json = serde_json::to_string(&w).unwrap();
        let back: WrappedKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, w);
        // A new password wraps the same key.
        let w2 = w.rewrap(&key, "alice", "new", P).unwrap();
        assert_eq!(w2.key_id, w.key_id);
        assert_eq!(w2.unwrap_with_password("alice", "new").unwrap(), key);
        assert!(w2.unwrap_with_password("alice", "pw").is_err());
        assert!(w.rewrap(&DataKey::generate(), "alice", "x", P).is_err());
    }

    #[test]
    fn recovery_wrap_opens_with_the_org_secret_only() {
        let org = RecoverySecretKey::generate();
        let text = org.to_file_text();
        let org2 = RecoverySecretKey::parse(&format!("# comment\n{text}")).unwrap();
        assert_eq!(org2.public(), org.public());
        let public = RecoveryPublicKey::parse(&org.public().to_string()).unwrap();
        let key = DataKey::generate();
        let w = key.wrap("alice", "pw", P, Some(&public)).unwrap();
        w.validate().unwrap();
        assert_eq!(w.unwrap_with_recovery(&org2).unwrap(), key);
        let other = RecoverySecretKey::generate();
        assert!(w.unwrap_with_recovery(&other).is_err());
        let no_recovery = key.wrap("alice", "pw", P, None).unwrap();
        assert!(no_recovery.unwrap_with_recovery(&org).is_err());
        assert!(RecoverySecretKey::parse("x25519:00").is_err());
        assert!(format!("{key:?}").starts_with("DataKey("));
        assert!(!format!("{key:?}").contains(&hex::encode(key.0)));
    }
}
