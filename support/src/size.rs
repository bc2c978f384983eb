//! Sizes: [`parse`] reads them from command lines and settings, [`human`] writes them
//! for people.
//!
//! Units are binary throughout: `K` is 1024 bytes, and a printed `MiB` is 2^20 bytes.

use std::fmt;

/// Why a size did not parse. The messages quote the text as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseSizeError {
    /// Empty, not a whole number, or a number with something other than a suffix.
    NotASize(String),
    /// A letter at the end that is not K, M, G or T.
    UnknownSuffix(String),
    /// More than `u64::MAX` bytes.
    TooLarge(String),
}

impl fmt::Display for ParseSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseSizeError::NotASize(s) => write!(f, "not a size: {s:?}"),
            ParseSizeError::UnknownSuffix(s) => write!(f, "unknown size suffix in {s:?}"),
            ParseSizeError::TooLarge(s) => write!(f, "size too large: {s:?}"),
        }
    }
}

impl std::error::Error for ParseSizeError {}

/// Parses a size in bytes: a whole number of bytes, or of KiB, MiB, GiB or TiB with a
/// one-letter suffix `K`, `M`, `G` or `T` in either case: `0`, `4096`, `4K`, `4k`,
/// `512M`, `2G`, `1T`.
///
/// Also accepted: white space around the whole text, and a leading `+` (older copies of
/// this parser took both). Not accepted: fractions (`1.5G`: write `1536M`), a space
/// between number and suffix (`4 K`), two-letter units (`4KB`, `4KiB`), other suffixes
/// (`P`), a suffix alone (`G`), negative numbers, and anything that would exceed
/// `u64::MAX` bytes (`99999999999T` is an error, never a wrapped value).
pub fn parse(text: &str) -> Result<u64, ParseSizeError> {
    let s = text.trim();
    let (digits, shift) = match s.as_bytes().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                b'K' => 10,
                b'M' => 20,
                b'G' => 30,
                b'T' => 40,
                _ => return Err(ParseSizeError::UnknownSuffix(s.to_string())),
            };
            (&s[..s.len() - 1], shift)
        }
        _ => (s, 0),
    };
    let digits = digits.strip_prefix('+').unwrap_or(digits);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseSizeError::NotASize(s.to_string()));
    }
    // Only digits are left, so the parse can fail by overflow alone.
    let n: u64 = digits
        .parse()
        .map_err(|_| ParseSizeError::TooLarge(s.to_string()))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| ParseSizeError::TooLarge(s.to_string()))
}

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// A byte count for people, in the largest binary unit it reaches, with one decimal:
/// `0 B`, `1023 B`, `1.0 KiB`, `12.3 MiB`, `1.5 GiB`. See [`human_with`].
pub fn human(bytes: u64) -> String {
    human_with(bytes, 1)
}

/// [`human`] with `decimals` digits after the point (bytes below 1 KiB are always whole:
/// `512 B`). A value that would round up to 1024 of a unit is shown in the next one
/// (`1048575` bytes is `1.0 MiB`, not `1024.0 KiB`).
pub fn human_with(bytes: u64, decimals: usize) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let scale = 10f64.powi(decimals.min(17) as i32);
    let mut value = bytes as f64;
    let mut unit = 0;
    while unit + 1 < UNITS.len() && (value * scale).round() / scale >= 1024.0 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.decimals$} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("12"), Ok(12));
        assert_eq!(parse(" 4096\n"), Ok(4096));
        assert_eq!(parse("+12"), Ok(12));
        assert_eq!(parse("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn suffixes_are_binary_and_take_either_case() {
        assert_eq!(parse("4K"), Ok(4096));
        assert_eq!(parse("4k"), Ok(4096));
        assert_eq!(parse("512M"), Ok(512 << 20));
        assert_eq!(parse("512m"), Ok(512 << 20));
        assert_eq!(parse("1G"), Ok(1 << 30));
        assert_eq!(parse("2g"), Ok(2 << 30));
        assert_eq!(parse("1T"), Ok(1 << 40));
        assert_eq!(parse("1t"), Ok(1 << 40));
        assert_eq!(parse("0G"), Ok(0));
    }

    #[test]
    fn what_is_refused() {
        for bad in [
            "", " ", "G", "+", "+G", "x1G", "1.5G", "1,5G", "4 K", "-1", "1e3", "0x10",
        ] {
            assert_eq!(
                parse(bad),
                Err(ParseSizeError::NotASize(bad.trim().to_string())),
                "{bad:?}"
            );
        }
        for bad in ["4KB", "4KiB", "1P", "12b", "4Ki"] {
            assert_eq!(
                parse(bad),
                Err(ParseSizeError::UnknownSuffix(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert_eq!(
            parse("99999999999T"),
            Err(ParseSizeError::TooLarge("99999999999T".into()))
        );
        assert_eq!(
            parse("18446744073709551616"),
            Err(ParseSizeError::TooLarge("18446744073709551616".into()))
        );
        assert_eq!(
            parse("16777216T"),
            Err(ParseSizeError::TooLarge("16777216T".into()))
        );
        assert_eq!(parse("16777215T"), Ok(16777215 << 40));
    }

    #[test]
    fn messages_quote_the_text() {
        assert_eq!(
            parse("1.5G").unwrap_err().to_string(),
            r#"not a size: "1.5G""#
        );
        assert_eq!(
            parse("3X").unwrap_err().to_string(),
            r#"unknown size suffix in "3X""#
        );
        assert_eq!(
            parse("99999999999T").unwrap_err().to_string(),
            r#"size too large: "99999999999T""#
        );
    }

    #[test]
    fn human_picks_the_largest_unit() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12_900_000), "12.3 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(1 << 40), "1.0 TiB");
        assert_eq!(human(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn human_rounds_into_the_next_unit() {
        assert_eq!(human((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human((1 << 20) - 60), "1023.9 KiB");
        assert_eq!(human_with((1 << 20) - 60, 2), "1023.94 KiB");
        assert_eq!(human_with((1 << 20) - 1, 2), "1.00 MiB");
    }

    #[test]
    fn human_with_decimals() {
        assert_eq!(human_with(1_500_000, 2), "1.43 MiB");
        assert_eq!(human_with(1_500_000, 0), "1 MiB");
        assert_eq!(human_with(100, 2), "100 B");
    }
}
