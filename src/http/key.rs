//! The `Idempotency-Key` header value: an RFC 8941 sf-string, or a bare opaque value.

use std::fmt;

/// The longest key accepted, in bytes after unquoting (Stripe's limit, and the store's default
/// `max_key_len`).
pub const MAX_KEY_LEN: usize = 255;

/// Why a header value is not a key. Its `Display` is the `detail` of the 400 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// Nothing between the quotes, or an empty value.
    Empty,
    /// Longer than [`MAX_KEY_LEN`] bytes after unquoting.
    TooLong(usize),
    /// A `"` that opens an sf-string with no closing `"`.
    Unterminated,
    /// A `\` followed by something other than `"` or `\`.
    BadEscape,
    /// A byte outside printable ASCII (or a `"`, `,` or `;` in a bare value), at an offset.
    BadByte { byte: u8, at: usize },
    /// Anything after the closing quote: parameters (`;a=1`), a list (`, "b"`) or junk.
    Trailing,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const FORMAT: &str = "send a quoted RFC 8941 string of printable ASCII such as \
             \"8e03978e-40d5-43e8-bc93-6894a57f9324\" (or the same value unquoted), 1 to 255 bytes";
        match self {
            KeyError::Empty => write!(f, "the Idempotency-Key is empty; {FORMAT}"),
            KeyError::TooLong(len) => write!(
                f,
                "the Idempotency-Key is {len} bytes long, over the limit of {MAX_KEY_LEN}; {FORMAT}"
            ),
            KeyError::Unterminated => write!(
                f,
                "the Idempotency-Key opens a quoted string that is never closed; {FORMAT}"
            ),
            KeyError::BadEscape => write!(
                f,
                "the Idempotency-Key has a backslash escape other than \\\" or \\\\; {FORMAT}"
            ),
            KeyError::BadByte { byte, at } => write!(
                f,
                "the Idempotency-Key has byte 0x{byte:02x} at offset {at}, which a key may not \
                 contain (quoted keys allow printable ASCII with \\\" and \\\\ escapes; unquoted \
                 keys allow printable ASCII except space, '\"', ',' and ';'); {FORMAT}"
            ),
            KeyError::Trailing => write!(
                f,
                "the Idempotency-Key has data after its closing quote (parameters and lists are \
                 not accepted: the value must be a single string); {FORMAT}"
            ),
        }
    }
}

/// Parses a header value into the key bytes.
///
/// Two forms are accepted, and equal contents are the same key in either form:
/// - an sf-string (RFC 8941 §3.3.3): `"` then printable ASCII (0x20–0x7E) with `\"` and `\\`
///   as the only escapes, then `"`, and nothing after it (no parameters);
/// - a bare value, for clients that predate the draft's sf-string syntax: printable ASCII
///   without space, `"`, `,` and `;` (0x21–0x7E less those three).
///
/// Optional whitespace around the value is ignored. The key is 1..=[`MAX_KEY_LEN`] bytes
/// after unquoting.
pub(crate) fn parse_key(value: &[u8]) -> Result<Vec<u8>, KeyError> {
    let value = trim_ows(value);
    let key = match value.first() {
        None => return Err(KeyError::Empty),
        Some(b'"') => parse_sf_string(value)?,
        Some(_) => {
            if let Some(at) = value
                .iter()
                .position(|&b| !(0x21..=0x7e).contains(&b) || matches!(b, b'"' | b',' | b';'))
            {
                return Err(KeyError::BadByte {
                    byte: value[at],
                    at,
                });
            }
            value.to_vec()
        }
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(key.len()));
    }
    Ok(key)
}

/// The contents of an sf-string that starts at `value[0] == b'"'`.
fn parse_sf_string(value: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(value.len().saturating_sub(2));
    let mut i = 1;
    loop {
        let Some(&b) = value.get(i) else {
            return Err(KeyError::Unterminated);
        };
        match b {
            b'\\' => match value.get(i + 1) {
                Some(&e @ (b'"' | b'\\')) => {
                    out.push(e);
                    i += 2;
                }
                Some(_) => return Err(KeyError::BadEscape),
                None => return Err(KeyError::Unterminated),
            },
            b'"' => {
                i += 1;
                break;
            }
            0x20..=0x7e => {
                out.push(b);
                i += 1;
            }
            _ => return Err(KeyError::BadByte { byte: b, at: i }),
        }
        // A key can never be longer than this: stop reading a huge value early.
        if out.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong(out.len()));
        }
    }
    if i != value.len() {
        return Err(KeyError::Trailing);
    }
    Ok(out)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sf_strings() {
        assert_eq!(parse_key(br#""abc""#).unwrap(), b"abc");
        assert_eq!(parse_key(br#""a b""#).unwrap(), b"a b");
        assert_eq!(parse_key(br#""a\"b\\c""#).unwrap(), br#"a"b\c"#);
        assert_eq!(parse_key(b" \"x\"\t").unwrap(), b"x");
        assert_eq!(
            parse_key(br#""8e03978e-40d5-43e8-bc93-6894a57f9324""#).unwrap(),
            b"8e03978e-40d5-43e8-bc93-6894a57f9324"
        );
    }

    #[test]
    fn bare_values() {
        assert_eq!(parse_key(b"abc").unwrap(), b"abc");
        assert_eq!(parse_key(b"a+b/c=").unwrap(), b"a+b/c=");
        // The same contents quoted or not are the same key.
        assert_eq!(parse_key(b"k-1").unwrap(), parse_key(br#""k-1""#).unwrap());
    }

    #[test]
    fn bad_values() {
        assert_eq!(parse_key(b""), Err(KeyError::Empty));
        assert_eq!(parse_key(b"  "), Err(KeyError::Empty));
        assert_eq!(parse_key(br#""""#), Err(KeyError::Empty));
        assert_eq!(parse_key(br#""abc"#), Err(KeyError::Unterminated));
        assert_eq!(parse_key(br#""abc\"#), Err(KeyError::Unterminated));
        assert_eq!(parse_key(br#""a\nb""#), Err(KeyError::BadEscape));
        assert_eq!(parse_key(br#""abc";a=1"#), Err(KeyError::Trailing));
        assert_eq!(parse_key(br#""a", "b""#), Err(KeyError::Trailing));
        assert_eq!(
            parse_key(b"\"a\x7fb\""),
            Err(KeyError::BadByte { byte: 0x7f, at: 2 })
        );
        assert_eq!(
            parse_key("\"é\"".as_bytes()),
            Err(KeyError::BadByte { byte: 0xc3, at: 1 })
        );
        assert_eq!(
            parse_key(b"a b"),
            Err(KeyError::BadByte { byte: b' ', at: 1 })
        );
        assert_eq!(
            parse_key(b"a,b"),
            Err(KeyError::BadByte { byte: b',', at: 1 })
        );
        assert_eq!(
            parse_key(b"a;b"),
            Err(KeyError::BadByte { byte: b';', at: 1 })
        );
        assert_eq!(
            parse_key(b"ab\""),
            Err(KeyError::BadByte { byte: b'"', at: 2 })
        );
    }

    #[test]
    fn lengths() {
        let max = "k".repeat(MAX_KEY_LEN);
        assert_eq!(parse_key(max.as_bytes()).unwrap().len(), MAX_KEY_LEN);
        assert_eq!(
            parse_key(format!("\"{max}\"").as_bytes()).unwrap().len(),
            MAX_KEY_LEN
        );
        let over = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            parse_key(over.as_bytes()),
            Err(KeyError::TooLong(MAX_KEY_LEN + 1))
        );
        assert_eq!(
            parse_key(format!("\"{over}\"").as_bytes()),
            Err(KeyError::TooLong(MAX_KEY_LEN + 1))
        );
        // Escapes count once: 255 escaped quotes are 255 key bytes.
        let escaped = format!("\"{}\"", "\\\"".repeat(MAX_KEY_LEN));
        assert_eq!(parse_key(escaped.as_bytes()).unwrap().len(), MAX_KEY_LEN);
    }

    #[test]
    fn details_say_what_to_send() {
        for e in [
            KeyError::Empty,
            KeyError::TooLong(300),
            KeyError::Unterminated,
            KeyError::BadEscape,
            KeyError::BadByte { byte: 1, at: 0 },
            KeyError::Trailing,
        ] {
            let detail = e.to_string();
            assert!(detail.contains("RFC 8941"), "{detail}");
        }
    }
}
