//! An LZ4 block decoder tuned for the cache's 4 KiB frames.
//!
//! Why not lz4_flex's decoder: disk images are full of zero runs, which LZ4
//! encodes as overlapping matches (offset 1, or short periods), and
//! lz4_flex copies those byte by byte: it made a 4 KiB frame of a binary
//! cost about 3 µs. Here an offset-1 match is a `fill` and other overlapping
//! matches copy in doubling runs. Safe Rust, and every length and offset read
//! from the input is checked: garbage gives an error, never a panic.

/// Decompresses one LZ4 block from `src` into exactly `out.len()` bytes.
pub fn decompress_into(src: &[u8], out: &mut [u8]) -> Result<(), &'static str> {
    let mut i = 0usize;
    let mut o = 0usize;
    let byte = |i: &mut usize| -> Result<u8, &'static str> {
        let b = *src.get(*i).ok_or("truncated block")?;
        *i += 1;
        Ok(b)
    };
    loop {
        let token = byte(&mut i)?;
        let mut lit = (token >> 4) as usize;
        if lit == 15 {
            loop {
                let b = byte(&mut i)?;
                lit += b as usize;
                if b != 255 {
                    break;
                }
            }
        }
        if lit <= 16 && i + 16 <= src.len() && o + 16 <= out.len() {
            // Short literals: one fixed 16-byte copy (no memcpy call). The
            // bytes past `o + lit` are rewritten by what follows: the output
            // is filled strictly in order up to its end.
            out[o..o + 16].copy_from_slice(&src[i..i + 16]);
        } else {
            let lit_src = src.get(i..i + lit).ok_or("literals beyond input")?;
            out.get_mut(o..o + lit)
                .ok_or("literals beyond output")?
                .copy_from_slice(lit_src);
        }
        i += lit;
        o += lit;
        if i == src.len() {
            break; // the last sequence is literals only
        }
        let lo = byte(&mut i)? as usize;
        let hi = byte(&mut i)? as usize;
        let offset = lo | hi << 8;
        if offset == 0 || offset > o {
            return Err("match offset out of range");
        }
        let mut len = (token & 15) as usize + 4;
        if token & 15 == 15 {
            loop {
                let b = byte(&mut i)?;
                len += b as usize;
                if b != 255 {
                    break;
                }
            }
        }
        if o + len > out.len() {
            return Err("match beyond output");
        }
        let start = o - offset;
        if len <= 16 && offset >= 16 && o + 16 <= out.len() {
            let mut t = [0u8; 16];
            t.copy_from_slice(&out[start..start + 16]);
            out[o..o + 16].copy_from_slice(&t);
        } else if offset >= len {
            out.copy_within(start..start + len, o);
        } else if offset == 1 {
            let b = out[start];
            out[o..o + len].fill(b);
        } else {
            // Periodic with period `offset`: copy the growing valid prefix;
            // `done` stays a multiple of `offset`, so the pattern is kept.
            let mut done = 0;
            while done < len {
                let n = (offset + done).min(len - done);
                out.copy_within(start..start + n, o + done);
                done += n;
            }
        }
        o += len;
    }
    if o != out.len() {
        return Err("block decompressed to the wrong length");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    #[test]
    fn matches_lz4_flex_on_varied_inputs_and_rejects_garbage() {
        let mut rng = Rng(5);
        for case in 0..3000 {
            let len = 1 + rng.below(5000) as usize;
            let mut d = vec![0u8; len];
            match case % 5 {
                0 => rng.fill(&mut d),
                1 => {}
                2 => d
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, b)| *b = (j % (1 + case % 7)) as u8),
                3 => {
                    rng.fill(&mut d);
                    let a = rng.below(len as u64) as usize;
                    let b = (a + rng.below(3000) as usize).min(len);
                    d[a..b].fill(0);
                }
                _ => d
                    .iter_mut()
                    .for_each(|b| *b = b"abcab"[rng.below(5) as usize]),
            }
            let c = lz4_flex::block::compress(&d);
            // A poisoned buffer: every byte must be written, none left over.
            let mut out = vec![0xA5u8; len];
            decompress_into(&c, &mut out).unwrap();
            assert_eq!(out, d, "case {case}");
            // Garbage: mutated or truncated input must error or decode, not panic.
            let mut g = c.clone();
            let k = rng.below(g.len() as u64) as usize;
            g[k] ^= 1 << rng.below(8);
            let _ = decompress_into(&g, &mut out);
            let _ = decompress_into(&c[..k], &mut out);
            let mut short = vec![0u8; len / 2];
            assert!(decompress_into(&c, &mut short).is_err() || len / 2 == len);
        }
    }
}
