//! Sealed user data: user-disk chunks and user-disk manifests as they leave a terminal.
//!
//! A sealed chunk is stored on the repository as it is (no `CK` wrapper), under the id
//! `sha256(sealed bytes)`, so the repository checks an upload's integrity without any key:
//!
//! ```text
//! offset 0   2 bytes   magic "SU"
//! offset 2   u8        SEALED_CHUNK_FORMAT (1)
//! offset 3   u8        0 (reserved)
//! offset 4   16 bytes  key id of the data key that sealed it
//! offset 20  24 bytes  nonce = HMAC-SHA256(nonce key, plaintext id)[..24]
//! offset 44  ...       XChaCha20-Poly1305 of the plaintext's stored encoding
//!                      (crate::chunk: "CK" header, frames or raw), then the 16-byte tag;
//!                      associated data: bytes 0..44
//! ```
//!
//! **Deterministic per user**: the nonce is a keyed hash of the plaintext, so one user's
//! identical chunks seal to identical bytes and deduplicate, while another user's key
//! gives other bytes (no dedup, and no "does anyone have this file" test across users).
//! This is the SIV construction: a nonce repeats only for the same plaintext under the
//! same key, which reveals equality and nothing else. Compressing before sealing keeps the
//! transfer and storage savings; what it reveals is each chunk's compressed size.
//!
//! A user-disk manifest of format 2 lists the sealed ids (what the repository checks,
//! counts and keeps) and carries the plaintext ids encrypted (`sealed.index`), with every
//! other field of the manifest as associated data: the tag is the manifest's MAC, so a
//! planted, altered or other user's manifest is refused by the terminal.

use base64::Engine;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::chunk::{
    decode_chunk_keeping_frames, encode_chunk, ChunkId, VerifiedChunk, MAX_CHUNK_SIZE,
};
use crate::chunking::ChunkList;
use crate::error::{Error, Result};
use crate::user::UserDiskManifest;
use crate::userkey::{DataKey, KEY_ID_LEN};

/// Magic of a sealed chunk.
pub const SEALED_MAGIC: &[u8; 2] = b"SU";
/// Version byte of a sealed chunk.
pub const SEALED_CHUNK_FORMAT: u8 = 1;
/// Bytes before the ciphertext.
pub const SEALED_HEADER_LEN: usize = 4 + KEY_ID_LEN + 24;
/// Bytes a sealed chunk adds to its stored encoding.
pub const SEALED_OVERHEAD: usize = SEALED_HEADER_LEN + 16;
/// Largest sealed chunk: a raw-stored 4 MiB chunk plus the sealing.
pub const MAX_SEALED_CHUNK: usize =
    MAX_CHUNK_SIZE + crate::chunk::CHUNK_HEADER_LEN + SEALED_OVERHEAD;
/// Associated-data prefix of a user-disk manifest's index.
const MANIFEST_CONTEXT: &[u8] = b"collective-terminal user-disk v2\0";

/// The keys that seal one user's data, derived from the data key.
pub struct UserSealer {
    chunk: XChaCha20Poly1305,
    nonce: Hmac<Sha256>,
    manifest: XChaCha20Poly1305,
    key_id: [u8; KEY_ID_LEN],
    key_id_hex: String,
}

impl std::fmt::Debug for UserSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserSealer({})", self.key_id_hex)
    }
}

/// The encrypted part of a format-2 user-disk manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedIndex {
    /// Key id of the data key that sealed the disk.
    pub key_id: String,
    /// Base64 (standard, padded) of a 24-byte random nonce, then XChaCha20-Poly1305 of the
    /// 32-byte plaintext id of every non-null entry of `image`, in order, then the tag.
    pub index: String,
}

impl UserSealer {
    /// The sealer of `key`.
    pub fn new(key: &DataKey) -> UserSealer {
        let id_hex = key.key_id();
        let mut key_id = [0u8; KEY_ID_LEN];
        // key_id() is KEY_ID_LEN bytes of hex by construction.
        let _ = hex::decode_to_slice(&id_hex, &mut key_id);
        let nonce = <Hmac<Sha256> as Mac>::new_from_slice(
            key.subkey(b"collective chunk nonce v1").as_ref(),
        )
        .expect("HMAC takes a key of any length");
        UserSealer {
            chunk: XChaCha20Poly1305::new(key.subkey(b"collective chunk seal v1").as_ref().into()),
            nonce,
            manifest: XChaCha20Poly1305::new(
                key.subkey(b"collective user-disk manifest v1")
                    .as_ref()
                    .into(),
            ),
            key_id,
            key_id_hex: id_hex,
        }
    }

    /// The data key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id_hex
    }

    fn nonce_for(&self, plain_id: &ChunkId) -> XNonce {
        let mut mac = self.nonce.clone();
        mac.update(plain_id.as_bytes());
        let full = mac.finalize().into_bytes();
        *XNonce::from_slice(&full[..24])
    }

    /// Seals the chunk `plain` (whose id is `plain_id`, computed by the caller): the
    /// bytes to upload, and their id.
    pub fn seal_chunk(&self, plain_id: &ChunkId, plain: &[u8]) -> Result<(ChunkId, Vec<u8>)> {
        let nonce = self.nonce_for(plain_id);
        let inner = encode_chunk(plain);
        let mut out = Vec::with_capacity(SEALED_OVERHEAD + inner.len());
        out.extend_from_slice(SEALED_MAGIC);
        out.push(SEALED_CHUNK_FORMAT);
        out.push(0);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&inner);
        let (head, body) = out.split_at_mut(SEALED_HEADER_LEN);
        let tag = self
            .chunk
            .encrypt_in_place_detached(&nonce, head, body)
            .map_err(|_| Error::invalid("sealed chunk", "sealing failed"))?;
        out.extend_from_slice(&tag);
        Ok((ChunkId::of(&out), out))
    }

    /// Opens a sealed chunk (already checked against its sealed id by the caller or by
    /// [`check_sealed`]) and checks that its plaintext hashes to `plain_id`.
    pub fn open_chunk(&self, plain_id: &ChunkId, mut sealed: Vec<u8>) -> Result<VerifiedChunk> {
        parse_header(&sealed)?;
        if sealed[4..4 + KEY_ID_LEN] != self.key_id {
            return Err(Error::invalid(
                "sealed chunk",
                format!(
                    "sealed with data key {}, not with this user's key {} (the user's key was reset)",
                    hex::encode(&sealed[4..4 + KEY_ID_LEN]),
                    self.key_id_hex
                ),
            ));
        }
        if sealed.len() < SEALED_OVERHEAD {
            return Err(Error::invalid("sealed chunk", "truncated"));
        }
        let tag_at = sealed.len() - 16;
        let tag = Tag::clone_from_slice(&sealed[tag_at..]);
        sealed.truncate(tag_at);
        let (head, body) = sealed.split_at_mut(SEALED_HEADER_LEN);
        let nonce = *XNonce::from_slice(&head[4 + KEY_ID_LEN..]);
        self.chunk
            .decrypt_in_place_detached(&nonce, head, body, &tag)
            .map_err(|_| {
                Error::invalid(
                    "sealed chunk",
                    "it does not open with this user's key (tampered, or another user's)",
                )
            })?;
        let inner = sealed.split_off(SEALED_HEADER_LEN);
        decode_chunk_keeping_frames(plain_id, inner)
    }

    /// Turns a user-disk manifest whose `image` lists sealed ids into format 2: encrypts
    /// the plaintext ids of `plain` (same length, zero entries in the same places) and
    /// binds every other field as associated data.
    pub fn seal_manifest(&self, m: &mut UserDiskManifest, plain: &ChunkList) -> Result<()> {
        let mut index = Vec::new();
        if plain.size != m.image.size
            || plain.chunk_size != m.image.chunk_size
            || plain.chunks.len() != m.image.chunks.len()
        {
            return Err(Error::invalid(
                "user-disk manifest",
                "the plaintext and sealed chunk lists differ in shape",
            ));
        }
        for (p, s) in plain.chunks.iter().zip(&m.image.chunks) {
            match (p, s) {
                (Some(p), Some(_)) => index.extend_from_slice(p.as_bytes()),
                (None, None) => {}
                _ => {
                    return Err(Error::invalid(
                        "user-disk manifest",
                        "a zero chunk in one list is not zero in the other",
                    ))
                }
            }
        }
        m.format = crate::user::USER_DISK_FORMAT;
        let aad = manifest_aad(m, &self.key_id_hex);
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let tag = self
            .manifest
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut index)
            .map_err(|_| Error::invalid("user-disk manifest", "sealing failed"))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&index);
        blob.extend_from_slice(&tag);
        m.sealed = Some(SealedIndex {
            key_id: self.key_id_hex.clone(),
            index: base64::engine::general_purpose::STANDARD.encode(blob),
        });
        Ok(())
    }

    /// Checks a format-2 manifest's MAC and returns the plaintext chunk list. A manifest
    /// of format 1 (written before sealing) lists plaintext ids and is returned as it is.
    pub fn open_manifest(&self, m: &UserDiskManifest) -> Result<ChunkList> {
        let Some(sealed) = &m.sealed else {
            if m.format == 1 {
                return Ok(m.image.clone());
            }
            return Err(Error::invalid(
                "user-disk manifest",
                "format 2 without its sealed index",
            ));
        };
        if sealed.key_id != self.key_id_hex {
            return Err(Error::invalid(
                "user-disk manifest",
                format!("{}/{} was sealed with data key {}, not with {}'s current key {}: the key was reset and this content can no longer be read", m.appliance, m.disk, sealed.key_id, m.user, self.key_id_hex),
            ));
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(&sealed.index)
            .map_err(|e| {
                Error::invalid("user-disk manifest", format!("index is not base64: {e}"))
            })?;
        if blob.len() < 24 + 16 {
            return Err(Error::invalid("user-disk manifest", "index truncated"));
        }
        let (nonce, rest) = blob.split_at(24);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        let mut index = ct.to_vec();
        let aad = manifest_aad(m, &self.key_id_hex);
        self.manifest
            .decrypt_in_place_detached(XNonce::from_slice(nonce), &aad, &mut index, Tag::from_slice(tag))
            .map_err(|_| Error::invalid("user-disk manifest", format!("{}/{} version {} of {} fails its seal: it was not written by this user's terminal (planted or altered)", m.appliance, m.disk, m.version, m.user)))?;
        let mut ids = index.chunks_exact(32);
        let mut plain = m.image.clone();
        for entry in plain.chunks.iter_mut() {
            if entry.is_some() {
                let raw = ids.next().ok_or_else(|| {
                    Error::invalid("user-disk manifest", "index shorter than the chunk list")
                })?;
                let arr: [u8; 32] = raw
                    .try_into()
                    .map_err(|_| Error::invalid("user-disk manifest", "bad index entry"))?;
                *entry = Some(ChunkId(arr));
            }
        }
        if ids.next().is_some() || !ids.remainder().is_empty() {
            return Err(Error::invalid(
                "user-disk manifest",
                "index longer than the chunk list",
            ));
        }
        Ok(plain)
    }
}

/// The manifest's fields as bytes, each length-prefixed: what its seal authenticates.
fn manifest_aad(m: &UserDiskManifest, key_id: &str) -> Vec<u8> {
    let mut aad = MANIFEST_CONTEXT.to_vec();
    for field in [
        m.user.as_str(),
        m.appliance.as_str(),
        m.disk.as_str(),
        key_id,
    ] {
        aad.extend_from_slice(&(field.len() as u32).to_le_bytes());
        aad.extend_from_slice(field.as_bytes());
    }
    aad.extend_from_slice(&m.format.to_le_bytes());
    aad.extend_from_slice(&m.version.to_le_bytes());
    aad.extend_from_slice(&m.image.size.to_le_bytes());
    aad.extend_from_slice(&(m.image.chunk_size as u64).to_le_bytes());
    aad.extend_from_slice(&m.image.digest());
    aad
}

fn parse_header(sealed: &[u8]) -> Result<()> {
    if sealed.len() < SEALED_OVERHEAD || &sealed[0..2] != SEALED_MAGIC {
        return Err(Error::invalid(
            "sealed chunk",
            "missing the \"SU\" header (truncated or not a sealed chunk)",
        ));
    }
    if sealed[2] != SEALED_CHUNK_FORMAT {
        return Err(Error::UnsupportedFormat {
            what: "sealed chunk",
            found: sealed[2] as u32,
            supported: SEALED_CHUNK_FORMAT as u32,
        });
    }
    if sealed.len() > MAX_SEALED_CHUNK {
        return Err(Error::invalid(
            "sealed chunk",
            format!(
                "{} bytes exceeds the {MAX_SEALED_CHUNK}-byte limit",
                sealed.len()
            ),
        ));
    }
    Ok(())
}

/// True if stored bytes are a sealed chunk rather than a `CK` chunk.
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(SEALED_MAGIC)
}

/// What the repository can check of a sealed chunk without the key: its header, and
/// that its bytes hash to `id`.
pub fn check_sealed(id: &ChunkId, sealed: &[u8]) -> Result<()> {
    parse_header(sealed)?;
    Ok(id.verify(sealed)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(image: ChunkList) -> UserDiskManifest {
        UserDiskManifest {
            format: 2,
            user: "alice".into(),
            appliance: "desk".into(),
            disk: "user".into(),
            version: 3,
            image,
            sealed: None,
        }
    }

    #[test]
    fn chunks_seal_deterministically_per_user_and_open_only_with_the_key() {
        let (k1, k2) = (DataKey::generate(), DataKey::generate());
        let (s1, s2) = (UserSealer::new(&k1), UserSealer::new(&k2));
        let plain: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let pid = ChunkId::of(&plain);
        let (id_a, a) = s1.seal_chunk(&pid, &plain).unwrap();
        let (id_b, b) = s1.seal_chunk(&pid, &plain).unwrap();
        assert_eq!(
            (id_a, &a),
            (id_b, &b),
            "same user, same plaintext: same bytes (dedup)"
        );
        let (id_c, _) = s2.seal_chunk(&pid, &plain).unwrap();
        assert_ne!(id_a, id_c, "another user's key: other bytes");
        assert!(a.len() < plain.len(), "compressed before sealing");
        assert!(!a.windows(16).any(|w| plain.windows(16).next() == Some(w)));
        check_sealed(&id_a, &a).unwrap();
        assert!(check_sealed(&ChunkId::of(b"x"), &a).is_err());
        assert_eq!(s1.open_chunk(&pid, a.clone()).unwrap().plain, plain);
        assert!(s2.open_chunk(&pid, a.clone()).is_err());
        let mut bad = a.clone();
        let n = bad.len() / 2;
        bad[n] ^= 1;
        assert!(s1.open_chunk(&pid, bad).is_err());
        assert!(s1.open_chunk(&ChunkId::of(b"other"), a).is_err());
    }

    #[test]
    fn manifests_are_sealed_and_refused_when_altered() {
        let key = DataKey::generate();
        let s = UserSealer::new(&key);
        let p1 = ChunkId::of(b"one");
        let plain = ChunkList {
            size: 3 * 65536,
            chunk_size: 65536,
            chunks: vec![Some(p1), None, Some(p1)],
        };
        let sid = ChunkId::of(b"sealed one");
        let mut m = manifest(ChunkList {
            chunks: vec![Some(sid), None, Some(sid)],
            ..plain.clone()
        });
        s.seal_manifest(&mut m, &plain).unwrap();
        m.validate().unwrap();
        assert_eq!(s.open_manifest(&m).unwrap(), plain);
        let json = serde_json::to_string(&m).unwrap();
        let back: UserDiskManifest = serde_json::from_str(&json).unwrap();
        assert_eq!(s.open_manifest(&back).unwrap(), plain);
        // Every field is covered.
        let mut v = m.clone();
        v.version = 4;
        assert!(s.open_manifest(&v).is_err());
        let mut u = m.clone();
        u.user = "bob".into();
        assert!(s.open_manifest(&u).is_err());
        let mut i = m.clone();
        i.image.chunks[2] = Some(ChunkId::of(b"planted"));
        assert!(s.open_manifest(&i).is_err());
        let mut n = m.clone();
        n.sealed = None;
        assert!(s.open_manifest(&n).is_err());
        assert!(UserSealer::new(&DataKey::generate())
            .open_manifest(&m)
            .is_err());
    }
}
