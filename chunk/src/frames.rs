//! The compressed chunk record: the plaintext cut into 4 KiB frames, each
//! compressed with lz4 (block format) on its own, behind a table of frame
//! lengths.
//!
//! One record, two places: it is the payload of a stored chunk with encoding 2 on the
//! repository (docs/formats.md), and the cache (cachefs) keeps it exactly as it arrived.
//! The publisher compresses a chunk once; no terminal compresses it again.
//!
//! Why frames: a guest's 4 KiB read inside a compressed 64 KiB chunk then
//! decompresses one frame (about 1 µs) instead of the whole chunk (about
//! 30 µs). Costs some ratio against whole-chunk lz4, keeps random reads fast.
//!
//! Layout: `n = ceil(raw_len / 4096)` little-endian u16 stored frame lengths,
//! then the frames. A frame whose stored length equals its plaintext length
//! is stored raw (lz4 output is only kept when strictly shorter).

pub const FRAME: usize = 4096;

pub fn nframes(raw_len: usize) -> usize {
    raw_len.div_ceil(FRAME)
}

pub fn table_len(raw_len: usize) -> usize {
    nframes(raw_len) * 2
}

fn frame_plain_len(raw_len: usize, k: usize) -> usize {
    (raw_len - k * FRAME).min(FRAME)
}

/// Which compressed frames a record keeps compressed: given a frame's lz4 length and its
/// plaintext length, true to keep the lz4 form, false to store the plaintext.
pub type KeepFrame = fn(stored: usize, plain: usize) -> bool;

/// Keeps every frame lz4 makes shorter: the smallest record (the repository's encoding).
pub fn keep_any_saving(stored: usize, plain: usize) -> bool {
    stored < plain
}

/// The compressed record, or `None` if compression would not save at least
/// one 4 KiB block. Gives up early on data whose first frames do not compress.
pub fn compress(data: &[u8]) -> Option<Vec<u8>> {
    compress_keeping(data, keep_any_saving)
}

/// [`compress`], keeping a frame's lz4 form only where `keep` says so.
pub fn compress_keeping(data: &[u8], keep: KeepFrame) -> Option<Vec<u8>> {
    let n = nframes(data.len());
    let tl = table_len(data.len());
    let mut out = vec![0u8; tl];
    out.reserve(data.len() / 2);
    let mut saved = 0usize;
    let mut scratch = vec![0u8; lz4_flex::block::get_maximum_output_size(FRAME)];
    for (k, plain) in data.chunks(FRAME).enumerate() {
        let c = lz4_flex::block::compress_into(plain, &mut scratch).ok()?;
        let stored: &[u8] = if c < plain.len() && keep(c, plain.len()) {
            &scratch[..c]
        } else {
            plain
        };
        saved += plain.len() - stored.len();
        out[2 * k..2 * k + 2].copy_from_slice(&(stored.len() as u16).to_le_bytes());
        out.extend_from_slice(stored);
        // Two incompressible frames in: almost surely random or already compressed.
        if k == 1 && saved < 256 && n > 4 {
            return None;
        }
    }
    saves_a_block(out, data.len())
}

/// The record if it is at least one 4 KiB block smaller than the plaintext, with room to
/// pad it to whole blocks without reallocating.
fn saves_a_block(mut record: Vec<u8>, plain_len: usize) -> Option<Vec<u8>> {
    let blocks = |l: usize| l.div_ceil(4096);
    if blocks(record.len()) < blocks(plain_len) {
        record.reserve_exact(blocks(record.len()) * 4096 - record.len());
        Some(record)
    } else {
        None
    }
}

/// Rewrites `record` (the frames of `plain`, as they arrived) keeping a frame's lz4 form
/// only where `keep` says so, the others as their plaintext: no compression, only copies.
/// `None` if the record does not parse or the result saves no 4 KiB block.
pub fn repack(record: &[u8], plain: &[u8], keep: KeepFrame) -> Option<Vec<u8>> {
    let ends = parse_table(record, plain.len(), record.len()).ok()?;
    let base = table_len(plain.len());
    // The size first, from the table alone: most records that save nothing are not copied.
    let mut size = base;
    let mut start = 0usize;
    for (k, &end) in ends.iter().enumerate() {
        let (stored_len, plain_len) = (end as usize - start, frame_plain_len(plain.len(), k));
        size += if stored_len < plain_len && keep(stored_len, plain_len) {
            stored_len
        } else {
            plain_len
        };
        start = end as usize;
    }
    if size.div_ceil(4096) >= plain.len().div_ceil(4096) {
        return None;
    }
    let mut out = vec![0u8; base];
    out.reserve(record.len());
    let mut start = 0usize;
    for (k, &end) in ends.iter().enumerate() {
        let end = end as usize;
        let frame_plain = &plain[k * FRAME..k * FRAME + frame_plain_len(plain.len(), k)];
        let stored_len = end - start;
        let stored: &[u8] = if stored_len < frame_plain.len() && keep(stored_len, frame_plain.len())
        {
            &record[base + start..base + end]
        } else {
            frame_plain
        };
        out[2 * k..2 * k + 2].copy_from_slice(&(stored.len() as u16).to_le_bytes());
        out.extend_from_slice(stored);
        start = end;
    }
    saves_a_block(out, plain.len())
}

/// Parses the frame table: cumulative end offsets of each frame relative to
/// the end of the table. Checks they fit in `stored_len`.
pub fn parse_table(table: &[u8], raw_len: usize, stored_len: usize) -> Result<Vec<u32>, String> {
    let n = nframes(raw_len);
    if table.len() < 2 * n || stored_len < 2 * n {
        return Err("frame table truncated".into());
    }
    let mut ends = Vec::with_capacity(n);
    let mut end = 0usize;
    for k in 0..n {
        let l = u16::from_le_bytes([table[2 * k], table[2 * k + 1]]) as usize;
        if l == 0 || l > frame_plain_len(raw_len, k) {
            return Err(format!("bad frame length {l}"));
        }
        end += l;
        ends.push(end as u32);
    }
    if end + 2 * n != stored_len {
        return Err("frame lengths do not add up to the record".into());
    }
    Ok(ends)
}

/// Decompresses frame `k` (its stored bytes `src`) into `out` (its plaintext length).
pub fn decompress_frame(src: &[u8], out: &mut [u8]) -> Result<(), String> {
    if src.len() == out.len() {
        out.copy_from_slice(src);
        return Ok(());
    }
    crate::lz4dec::decompress_into(src, out).map_err(|e| format!("lz4: {e}"))
}

/// Decompresses a whole record; also returns the frame table.
pub fn decompress_all(stored: &[u8], raw_len: usize) -> Result<(Vec<u8>, Vec<u32>), String> {
    let ends = parse_table(stored, raw_len, stored.len())?;
    let base = table_len(raw_len);
    let mut out = vec![0u8; raw_len];
    let mut start = 0usize;
    for (k, &end) in ends.iter().enumerate() {
        let p = k * FRAME;
        let pl = frame_plain_len(raw_len, k);
        decompress_frame(
            &stored[base + start..base + end as usize],
            &mut out[p..p + pl],
        )?;
        start = end as usize;
    }
    Ok((out, ends))
}

/// Reads `buf.len()` plaintext bytes at `off` from a record, given its frame
/// table and a function that reads stored bytes at a record offset.
pub fn read_range(
    ends: &[u32],
    raw_len: usize,
    off: usize,
    buf: &mut [u8],
    read: impl FnOnce(usize, &mut [u8]) -> std::io::Result<()>,
) -> Result<(), String> {
    if buf.is_empty() {
        return Ok(());
    }
    let f0 = off / FRAME;
    let f1 = (off + buf.len() - 1) / FRAME;
    if f1 >= ends.len() {
        return Err("read beyond chunk end".into());
    }
    let s0 = if f0 == 0 { 0 } else { ends[f0 - 1] as usize };
    let s1 = ends[f1] as usize;
    let base = table_len(raw_len);
    thread_local! {
        // Per-thread scratch: a small read must not pay for zeroing buffers.
        static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
            std::cell::RefCell::new((vec![0u8; 2 * FRAME], vec![0u8; FRAME]));
    }
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (stored_buf, frame) = &mut *guard;
        if stored_buf.len() < s1 - s0 {
            stored_buf.resize(s1 - s0, 0);
        }
        let stored = &mut stored_buf[..s1 - s0];
        read(base + s0, stored).map_err(|e| e.to_string())?;
        for k in f0..=f1 {
            let fs = if k == 0 { 0 } else { ends[k - 1] as usize } - s0;
            let fe = ends[k] as usize - s0;
            let pl = frame_plain_len(raw_len, k);
            let p = k * FRAME;
            let a = off.max(p);
            let b = (off + buf.len()).min(p + pl);
            if a == p && b == p + pl {
                // The read covers the whole frame: decompress straight into it.
                decompress_frame(&stored[fs..fe], &mut buf[a - off..b - off])?;
            } else {
                decompress_frame(&stored[fs..fe], &mut frame[..pl])?;
                buf[a - off..b - off].copy_from_slice(&frame[a - p..b - p]);
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_ranges() {
        let data: Vec<u8> = (0..65536 + 1000).map(|i: u32| (i / 7 % 13) as u8).collect();
        let rec = compress(&data).unwrap();
        assert!(rec.len() < data.len() / 4);
        let (plain, ends) = decompress_all(&rec, data.len()).unwrap();
        assert_eq!(plain, data);
        for (off, len) in [
            (0, 1),
            (4095, 2),
            (100, 9000),
            (65536, 1000),
            (0, data.len()),
        ] {
            let mut buf = vec![0u8; len];
            read_range(&ends, data.len(), off, &mut buf, |o, b| {
                b.copy_from_slice(&rec[o..o + b.len()]);
                Ok(())
            })
            .unwrap();
            assert_eq!(buf, data[off..off + len]);
        }
        // Repacking keeps the frames a policy wants and stores the others plain.
        let half = |stored: usize, plain: usize| stored * 2 <= plain;
        let mixed: Vec<u8> = (0..65536u32)
            .map(|i| {
                if i < 32768 {
                    0
                } else {
                    (i / 3 % 200) as u8 ^ (i % 7) as u8
                }
            })
            .collect();
        let arrived = compress(&mixed).unwrap();
        let repacked = repack(&arrived, &mixed, half).unwrap();
        let (plain, ends) = decompress_all(&repacked, mixed.len()).unwrap();
        assert_eq!(plain, mixed);
        let lens: Vec<u32> = std::iter::once(0).chain(ends.iter().copied()).collect();
        for (k, w) in lens.windows(2).enumerate() {
            let stored = (w[1] - w[0]) as usize;
            assert!(
                stored == FRAME || half(stored, FRAME),
                "frame {k}: {stored}"
            );
        }
        assert_eq!(
            repack(&arrived, &mixed, |_, _| false),
            None,
            "nothing saved"
        );
        assert_eq!(repack(&arrived[..10], &mixed, half), None, "bad table");

        let mut rnd = vec![0u8; 65536];
        crate::test_rng::Rng(1).fill(&mut rnd);
        assert!(compress(&rnd).is_none());
        assert!(decompress_all(&rec[..rec.len() - 1], data.len()).is_err());
    }
}
