//! The stored encoding of one chunk (ids are the `chunk` crate's, re-exported here).
//!
//! A chunk's id is the sha256 of its plaintext. Stored (on the repository, on the wire)
//! a chunk is an 8-byte header followed by either the raw bytes or one lz4 block:
//!
//! ```text
//! offset 0: b"CK"           magic
//! offset 2: u8  version     CHUNK_FORMAT (1)
//! offset 3: u8  encoding    0 = raw, 1 = lz4 block (lz4_flex, no size prefix)
//! offset 4: u32 plain_len   little-endian length of the plaintext
//! offset 8: payload
//! ```
//!
//! The encoder picks lz4 only when it saves at least 1/16 of the chunk, so incompressible
//! data (already compressed files, encrypted user data) costs no decompression. Zero chunks
//! are never encoded: chunk lists record them as absent (see [`crate::chunking`]).

use crate::error::{Error, Result};

pub use ::chunk::{is_zero, ChunkId, Error as ChunkError, MAX_CHUNK_SIZE};

/// Version byte of the stored chunk encoding.
pub const CHUNK_FORMAT: u8 = 1;
/// Size of the stored chunk header.
pub const CHUNK_HEADER_LEN: usize = 8;

/// How a stored chunk's payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkEncoding {
    /// The plaintext as is.
    Raw = 0,
    /// One lz4 block.
    Lz4 = 1,
}

/// Encodes a plaintext chunk for storage: lz4 if it saves at least 1/16, raw otherwise.
pub fn encode_chunk(plain: &[u8]) -> Vec<u8> {
    assert!(
        plain.len() <= MAX_CHUNK_SIZE,
        "chunk larger than MAX_CHUNK_SIZE"
    );
    let compressed = lz4_flex::block::compress(plain);
    let (encoding, payload): (ChunkEncoding, &[u8]) =
        if compressed.len() + plain.len() / 16 <= plain.len() {
            (ChunkEncoding::Lz4, &compressed)
        } else {
            (ChunkEncoding::Raw, plain)
        };
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + payload.len());
    out.extend_from_slice(b"CK");
    out.push(CHUNK_FORMAT);
    out.push(encoding as u8);
    out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Parses a stored chunk's header: (encoding, plaintext length).
pub fn chunk_header(stored: &[u8]) -> Result<(ChunkEncoding, usize)> {
    if stored.len() < CHUNK_HEADER_LEN || &stored[0..2] != b"CK" {
        return Err(Error::invalid(
            "stored chunk",
            "missing the \"CK\" header (truncated or not a chunk)",
        ));
    }
    if stored[2] != CHUNK_FORMAT {
        return Err(Error::UnsupportedFormat {
            what: "stored chunk",
            found: stored[2] as u32,
            supported: CHUNK_FORMAT as u32,
        });
    }
    let encoding = match stored[3] {
        0 => ChunkEncoding::Raw,
        1 => ChunkEncoding::Lz4,
        other => {
            return Err(Error::invalid(
                "stored chunk",
                format!("unknown encoding {other}"),
            ))
        }
    };
    let len = u32::from_le_bytes([stored[4], stored[5], stored[6], stored[7]]) as usize;
    if len > MAX_CHUNK_SIZE {
        return Err(Error::invalid(
            "stored chunk",
            format!("plaintext length {len} exceeds the {MAX_CHUNK_SIZE}-byte limit"),
        ));
    }
    Ok((encoding, len))
}

/// Decodes a stored chunk and checks that its plaintext hashes to `id`.
/// This is the only way a reader should turn stored bytes into data.
pub fn decode_chunk(id: &ChunkId, stored: &[u8]) -> Result<Vec<u8>> {
    let plain = decode_chunk_unverified(stored)?;
    id.verify(&plain)?;
    Ok(plain)
}

/// Decodes a stored chunk without checking its id. Only for tools that compute the id
/// themselves afterwards.
pub fn decode_chunk_unverified(stored: &[u8]) -> Result<Vec<u8>> {
    let (encoding, len) = chunk_header(stored)?;
    let payload = &stored[CHUNK_HEADER_LEN..];
    match encoding {
        ChunkEncoding::Raw => {
            if payload.len() != len {
                return Err(Error::invalid(
                    "stored chunk",
                    format!("raw payload is {} bytes, header says {len}", payload.len()),
                ));
            }
            Ok(payload.to_vec())
        }
        ChunkEncoding::Lz4 => {
            let plain = lz4_flex::block::decompress(payload, len).map_err(|e| {
                Error::invalid(
                    "stored chunk",
                    format!("lz4 payload does not decompress: {e}"),
                )
            })?;
            if plain.len() != len {
                return Err(Error::invalid(
                    "stored chunk",
                    format!("lz4 payload gives {} bytes, header says {len}", plain.len()),
                ));
            }
            Ok(plain)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_picks_lz4_or_raw_and_roundtrips() {
        let text: Vec<u8> = (0..65536u32)
            .map(|i| b"hello world "[(i % 12) as usize])
            .collect();
        let enc = encode_chunk(&text);
        assert_eq!(enc[3], ChunkEncoding::Lz4 as u8);
        assert!(enc.len() < text.len() / 4);
        assert_eq!(decode_chunk(&ChunkId::of(&text), &enc).unwrap(), text);

        // Pseudo-random bytes do not compress: stored raw.
        let mut x = 0x1234_5678_9abc_def0u64;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let enc = encode_chunk(&noise);
        assert_eq!(enc[3], ChunkEncoding::Raw as u8);
        assert_eq!(enc.len(), noise.len() + CHUNK_HEADER_LEN);
        assert_eq!(decode_chunk(&ChunkId::of(&noise), &enc).unwrap(), noise);
    }

    #[test]
    fn decode_rejects_corruption() {
        let data = vec![7u8; 4096];
        let id = ChunkId::of(&data);
        let mut enc = encode_chunk(&data);
        // Truncated, wrong magic, unknown version, flipped payload bit, lying length.
        assert!(decode_chunk(&id, &enc[..5]).is_err());
        let mut bad = enc.clone();
        bad[0] = b'X';
        assert!(decode_chunk(&id, &bad).is_err());
        let mut bad = enc.clone();
        bad[2] = 9;
        assert!(matches!(
            decode_chunk(&id, &bad),
            Err(Error::UnsupportedFormat { .. })
        ));
        let mut bad = enc.clone();
        bad[4..8].copy_from_slice(&(u32::MAX).to_le_bytes());
        assert!(decode_chunk(&id, &bad).is_err());
        let last = enc.len() - 1;
        enc[last] ^= 1;
        assert!(decode_chunk(&id, &enc).is_err());
    }
}
