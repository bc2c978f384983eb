//! Canonical JSON: the byte string that signatures cover.
//!
//! Rules (normative copy in `docs/formats.md`):
//! - no whitespace anywhere;
//! - object members sorted by key, comparing the keys' UTF-8 bytes; duplicate keys are an error
//!   (serde_json keeps the last one, so the parsed value can no longer show them — readers
//!   must therefore verify over the value they parsed, never over the raw text);
//! - numbers must be integers in `[-2^63, 2^64)`, written in shortest decimal form;
//!   floats are rejected;
//! - strings are written with `"` and `\` escaped as `\"` and `\\`, the control characters
//!   U+0008, U+0009, U+000A, U+000C, U+000D as `\b \t \n \f \r`, other characters below
//!   U+0020 as `\u00XX` (lowercase hex), and everything else as raw UTF-8;
//! - `true`, `false`, `null` as such.
//!
//! This is written out here instead of relying on `serde_json::to_vec` because serde_json's
//! key order depends on a cargo feature (`preserve_order`) that any crate in a build can turn
//! on, which would silently change signed bytes.

use serde_json::Value;

use crate::error::{Error, Result};

/// The canonical encoding of `value`.
pub fn to_canonical_json(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(4096);
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else {
                return Err(Error::invalid(
                    "canonical JSON",
                    format!("number {n} is not an integer; signed documents use integers only"),
                ));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_value(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorted_compact_and_escaped() {
        let v = json!({"b": 1, "a": [true, null, -3], "é": "x\"y\\z\n\u{1}ü", "B": 18446744073709551615u64});
        let s = String::from_utf8(to_canonical_json(&v).unwrap()).unwrap();
        assert_eq!(
            s,
            r#"{"B":18446744073709551615,"a":[true,null,-3],"b":1,"é":"x\"y\\z\n\u0001ü"}"#
        );
        // Parsing the canonical form and re-encoding is a fixed point.
        let again: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(to_canonical_json(&again).unwrap(), s.as_bytes());
    }

    #[test]
    fn rejects_floats() {
        assert!(to_canonical_json(&json!({"x": 1.5})).is_err());
    }
}
