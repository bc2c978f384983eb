//! Names of appliances, users, disks and networks. They become path components on the
//! repository's disk and in URLs, so they are restricted to a small safe alphabet: this is
//! what keeps `../` and friends out of every path the repository builds.

use crate::error::{Error, Result};

/// Longest allowed name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Checks that `name` is `[a-z0-9][a-z0-9._-]{0,63}` and does not end in `.json`-like
/// confusion (`.` alone or `..` are excluded by the first-character rule).
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            what,
            format!("{name:?} must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    let first_ok = bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit();
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if !first_ok || !rest_ok {
        return Err(Error::invalid(
            what,
            format!("{name:?} may only use lowercase letters, digits, '.', '_' and '-', and must start with a letter or digit"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("user", "alice").is_ok());
        assert!(validate_name("user", "desk-1.2_b").is_ok());
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "Alice",
            "a b",
            "-x",
            &"a".repeat(65),
        ] {
            assert!(validate_name("user", bad).is_err(), "{bad:?} accepted");
        }
    }
}
