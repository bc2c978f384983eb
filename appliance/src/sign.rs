//! Publisher keys and signed manifests.
//!
//! A signed manifest file is the canonical JSON (see [`crate::canonical`]) of
//!
//! ```json
//! {"format":1,"manifest":{...},"signature":{"key":"ed25519:<64 hex>","sig":"<128 hex>"}}
//! ```
//!
//! where `sig` is the ed25519 signature (RFC 8032, pure Ed25519) of
//! `SIGNING_CONTEXT || canonical_json(manifest)`. The context string keeps a signature over a
//! manifest from ever being valid for any other kind of document signed with the same key.
//! Readers verify over the parsed `manifest` value re-encoded canonically, then deserialize
//! it, then validate it; a manifest is used only after all three succeed.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical::to_canonical_json;
use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// Version of the signed-manifest envelope.
pub const SIGNED_MANIFEST_FORMAT: u32 = 1;
/// Domain-separation prefix of every manifest signature.
pub const SIGNING_CONTEXT: &[u8] = b"collective-terminal manifest v1\0";
const SECRET_KEY_PREFIX: &str = "collective-secret-key ed25519:";

/// A publisher's public key: what terminals trust. Text form `ed25519:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub VerifyingKey);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<PublicKey> {
        let hexpart = s
            .trim()
            .strip_prefix("ed25519:")
            .ok_or_else(|| Error::invalid("public key", "must start with \"ed25519:\""))?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hexpart, &mut bytes)
            .map_err(|e| Error::invalid("public key", format!("bad hex: {e}")))?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| Error::invalid("public key", e.to_string()))
    }
}

impl PublicKey {
    /// Parses a public key file: the first line that is not empty or a `#` comment.
    pub fn from_file_text(text: &str) -> Result<PublicKey> {
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| Error::invalid("public key file", "contains no key"))?
            .parse()
    }

    /// Parses a list of trusted keys: one `ed25519:` key per line, `#` comments allowed.
    pub fn parse_trusted(text: &str) -> Result<Vec<PublicKey>> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::parse)
            .collect()
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<PublicKey, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A publisher's secret signing key. Text form `collective-secret-key ed25519:<64 hex>`.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new random key from the operating system's RNG.
    pub fn generate() -> SecretKey {
        SecretKey(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The secret key file's content.
    pub fn to_file_text(&self) -> String {
        format!("{SECRET_KEY_PREFIX}{}\n", hex::encode(self.0.to_bytes()))
    }

    /// Parses a secret key file.
    pub fn from_file_text(text: &str) -> Result<SecretKey> {
        let hexpart = text.trim().strip_prefix(SECRET_KEY_PREFIX).ok_or_else(|| {
            Error::invalid(
                "secret key file",
                format!("must start with {SECRET_KEY_PREFIX:?}; is this the public key?"),
            )
        })?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hexpart, &mut bytes)
            .map_err(|e| Error::invalid("secret key file", format!("bad hex: {e}")))?;
        Ok(SecretKey(SigningKey::from_bytes(&bytes)))
    }
}

/// The signature part of a signed manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureBlock {
    /// The key that signed.
    pub key: PublicKey,
    /// 64-byte ed25519 signature, hex.
    pub sig: String,
}

/// A manifest with its signature, as stored and served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// [`SIGNED_MANIFEST_FORMAT`].
    pub format: u32,
    /// The manifest.
    pub manifest: Manifest,
    /// Its signature.
    pub signature: SignatureBlock,
}

/// The exact bytes a manifest signature covers.
pub fn signing_message(manifest_value: &Value) -> Result<Vec<u8>> {
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(&to_canonical_json(manifest_value)?);
    Ok(msg)
}

impl SignedManifest {
    /// Validates and signs `manifest`.
    pub fn sign(manifest: Manifest, key: &SecretKey) -> Result<SignedManifest> {
        manifest.validate()?;
        let value = serde_json::to_value(&manifest).map_err(|e| Error::Json {
            what: "manifest",
            source: e,
        })?;
        let sig = key.0.sign(&signing_message(&value)?);
        Ok(SignedManifest {
            format: SIGNED_MANIFEST_FORMAT,
            manifest,
            signature: SignatureBlock {
                key: key.public(),
                sig: hex::encode(sig.to_bytes()),
            },
        })
    }

    /// The file content: canonical JSON of the whole envelope.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let value = serde_json::to_value(self).map_err(|e| Error::Json {
            what: "signed manifest",
            source: e,
        })?;
        to_canonical_json(&value)
    }

    /// Parses a signed manifest file, verifies its signature against `trusted` and
    /// validates the manifest. This is the only way a terminal should obtain a [`Manifest`].
    pub fn verify_bytes(bytes: &[u8], trusted: &[PublicKey]) -> Result<Manifest> {
        let envelope: Value = serde_json::from_slice(bytes).map_err(|e| Error::Json {
            what: "signed manifest",
            source: e,
        })?;
        let format = envelope
            .get("format")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::invalid("signed manifest", "no format field"))?;
        if format != SIGNED_MANIFEST_FORMAT as u64 {
            return Err(Error::UnsupportedFormat {
                what: "signed manifest",
                found: format.min(u32::MAX as u64) as u32,
                supported: SIGNED_MANIFEST_FORMAT,
            });
        }
        let manifest_value = envelope
            .get("manifest")
            .ok_or_else(|| Error::invalid("signed manifest", "no manifest field"))?;
        let block: SignatureBlock =
            serde_json::from_value(envelope.get("signature").cloned().unwrap_or(Value::Null))
                .map_err(|e| Error::Json {
                    what: "manifest signature",
                    source: e,
                })?;
        if !trusted.contains(&block.key) {
            return Err(Error::BadSignature(format!(
                "it is signed by {}, which is not among the {} trusted publisher key(s)",
                block.key,
                trusted.len()
            )));
        }
        let mut sig_bytes = [0u8; 64];
        hex::decode_to_slice(&block.sig, &mut sig_bytes)
            .map_err(|_| Error::BadSignature("the signature is not 128 hex digits".into()))?;
        let sig = Signature::from_bytes(&sig_bytes);
        block
            .key
            .0
            .verify(&signing_message(manifest_value)?, &sig)
            .map_err(|_| {
                Error::BadSignature(format!(
                    "the signature by {} does not match the content",
                    block.key
                ))
            })?;
        let manifest: Manifest =
            serde_json::from_value(manifest_value.clone()).map_err(|e| Error::Json {
                what: "manifest",
                source: e,
            })?;
        manifest.validate()?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;

    #[test]
    fn sign_verify_roundtrip_and_key_text() {
        let key = SecretKey::generate();
        let key2 = SecretKey::from_file_text(&key.to_file_text()).unwrap();
        assert_eq!(key.public(), key2.public());
        assert_eq!(
            PublicKey::from_file_text(&format!("# trusted\n{}\n", key.public())).unwrap(),
            key.public()
        );
        let signed = SignedManifest::sign(sample(), &key).unwrap();
        let bytes = signed.to_bytes().unwrap();
        assert_eq!(
            SignedManifest::verify_bytes(&bytes, &[key.public()]).unwrap(),
            sample()
        );
        // Re-serializing with whitespace does not matter: verification is over the value.
        let pretty =
            serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&bytes).unwrap()).unwrap();
        assert!(SignedManifest::verify_bytes(&pretty, &[key.public()]).is_ok());
    }

    #[test]
    fn tampering_and_untrusted_keys_are_refused() {
        let key = SecretKey::generate();
        let other = SecretKey::generate();
        let bytes = SignedManifest::sign(sample(), &key)
            .unwrap()
            .to_bytes()
            .unwrap();
        assert!(matches!(
            SignedManifest::verify_bytes(&bytes, &[other.public()]),
            Err(Error::BadSignature(_))
        ));

        let text = String::from_utf8(bytes.clone()).unwrap();
        let tampered = text.replace("\"memory_mib\":512", "\"memory_mib\":513");
        assert_ne!(tampered, text);
        assert!(matches!(
            SignedManifest::verify_bytes(tampered.as_bytes(), &[key.public()]),
            Err(Error::BadSignature(_))
        ));

        // A re-signature by an untrusted key with the trusted key's name swapped in fails too.
        let forged = SignedManifest::sign(sample(), &other).unwrap();
        let mut v = serde_json::to_value(&forged).unwrap();
        v["signature"]["key"] = Value::String(key.public().to_string());
        let forged = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            SignedManifest::verify_bytes(&forged, &[key.public()]),
            Err(Error::BadSignature(_))
        ));

        assert!(SignedManifest::verify_bytes(b"{not json", &[key.public()]).is_err());
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        v["format"] = 7.into();
        assert!(matches!(
            SignedManifest::verify_bytes(&serde_json::to_vec(&v).unwrap(), &[key.public()]),
            Err(Error::UnsupportedFormat { .. })
        ));
    }

    #[test]
    fn signing_message_is_stable() {
        // Pin the exact signed bytes of a tiny manifest value so an accidental change of the
        // canonical encoding or the context string breaks this test, not the terminals.
        let v = serde_json::json!({"version": 1, "name": "a"});
        assert_eq!(
            signing_message(&v).unwrap(),
            b"collective-terminal manifest v1\0{\"name\":\"a\",\"version\":1}"
        );
    }
}
