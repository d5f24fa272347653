//! The `Idempotency-Key` header value: an RFC 8941 sf-string, or a bare opaque value.

/// The longest key accepted, in bytes after unquoting (Stripe's limit, and the store's default
/// `max_key_len`).
pub const MAX_KEY_LEN: usize = 255;

/// Why a header value is not a key. [`KeyError::detail`] is the `detail` of the 400 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// Nothing between the quotes, or an empty value.
    Empty,
    /// Longer than the limit after unquoting: the key's real length.
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

impl KeyError {
    /// What is wrong and what to send instead, for the key header `header` whose keys may be
    /// 1 to `max_len` bytes long.
    pub(crate) fn detail(&self, header: &str, max_len: usize) -> String {
        let format = format!(
            "send a quoted RFC 8941 string of printable ASCII such as \
             \"8e03978e-40d5-43e8-bc93-6894a57f9324\" (or the same value unquoted), 1 to \
             {max_len} bytes"
        );
        match self {
            KeyError::Empty => format!("the {header} is empty; {format}"),
            KeyError::TooLong(len) => {
                format!("the {header} is {len} bytes long, over the limit of {max_len}; {format}")
            }
            KeyError::Unterminated => {
                format!("the {header} opens a quoted string that is never closed; {format}")
            }
            KeyError::BadEscape => {
                format!("the {header} has a backslash escape other than \\\" or \\\\; {format}")
            }
            KeyError::BadByte { byte, at } => format!(
                "the {header} has byte 0x{byte:02x} at offset {at}, which a key may not contain \
                 (quoted keys allow printable ASCII with \\\" and \\\\ escapes; unquoted keys \
                 allow printable ASCII except space, '\"', ',' and ';'); {format}"
            ),
            KeyError::Trailing => format!(
                "the {header} has data after its closing quote (parameters and lists are not \
                 accepted: the value must be a single string); {format}"
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
/// Optional whitespace around the value is ignored. The key is 1..=`max_len` bytes after
/// unquoting.
pub(crate) fn parse_key(value: &[u8], max_len: usize) -> Result<Vec<u8>, KeyError> {
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
    if key.len() > max_len {
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
        assert_eq!(parse_key(br#""abc""#, MAX_KEY_LEN).unwrap(), b"abc");
        assert_eq!(parse_key(br#""a b""#, MAX_KEY_LEN).unwrap(), b"a b");
        assert_eq!(
            parse_key(br#""a\"b\\c""#, MAX_KEY_LEN).unwrap(),
            br#"a"b\c"#
        );
        assert_eq!(parse_key(b" \"x\"\t", MAX_KEY_LEN).unwrap(), b"x");
        assert_eq!(
            parse_key(br#""8e03978e-40d5-43e8-bc93-6894a57f9324""#, MAX_KEY_LEN).unwrap(),
            b"8e03978e-40d5-43e8-bc93-6894a57f9324"
        );
    }

    #[test]
    fn bare_values() {
        assert_eq!(parse_key(b"abc", MAX_KEY_LEN).unwrap(), b"abc");
        assert_eq!(parse_key(b"a+b/c=", MAX_KEY_LEN).unwrap(), b"a+b/c=");
        // The same contents quoted or not are the same key.
        assert_eq!(
            parse_key(b"k-1", MAX_KEY_LEN).unwrap(),
            parse_key(br#""k-1""#, MAX_KEY_LEN).unwrap()
        );
    }

    #[test]
    fn bad_values() {
        assert_eq!(parse_key(b"", MAX_KEY_LEN), Err(KeyError::Empty));
        assert_eq!(parse_key(b"  ", MAX_KEY_LEN), Err(KeyError::Empty));
        assert_eq!(parse_key(br#""""#, MAX_KEY_LEN), Err(KeyError::Empty));
        assert_eq!(
            parse_key(br#""abc"#, MAX_KEY_LEN),
            Err(KeyError::Unterminated)
        );
        assert_eq!(
            parse_key(br#""abc\"#, MAX_KEY_LEN),
            Err(KeyError::Unterminated)
        );
        assert_eq!(
            parse_key(br#""a\nb""#, MAX_KEY_LEN),
            Err(KeyError::BadEscape)
        );
        assert_eq!(
            parse_key(br#""abc";a=1"#, MAX_KEY_LEN),
            Err(KeyError::Trailing)
        );
        assert_eq!(
            parse_key(br#""a", "b""#, MAX_KEY_LEN),
            Err(KeyError::Trailing)
        );
        assert_eq!(
            parse_key(b"\"a\x7fb\"", MAX_KEY_LEN),
            Err(KeyError::BadByte { byte: 0x7f, at: 2 })
        );
        assert_eq!(
            parse_key("\"é\"".as_bytes(), MAX_KEY_LEN),
            Err(KeyError::BadByte { byte: 0xc3, at: 1 })
        );
        assert_eq!(
            parse_key(b"a b", MAX_KEY_LEN),
            Err(KeyError::BadByte { byte: b' ', at: 1 })
        );
        assert_eq!(
            parse_key(b"a,b", MAX_KEY_LEN),
            Err(KeyError::BadByte { byte: b',', at: 1 })
        );
        assert_eq!(
            parse_key(b"a;b", MAX_KEY_LEN),
            Err(KeyError::BadByte { byte: b';', at: 1 })
        );
        assert_eq!(
            parse_key(b"ab\"", MAX_KEY_LEN),
            Err(KeyError::BadByte { byte: b'"', at: 2 })
        );
    }

    #[test]
    fn lengths() {
        let max = "k".repeat(MAX_KEY_LEN);
        assert_eq!(
            parse_key(max.as_bytes(), MAX_KEY_LEN).unwrap().len(),
            MAX_KEY_LEN
        );
        assert_eq!(
            parse_key(format!("\"{max}\"").as_bytes(), MAX_KEY_LEN)
                .unwrap()
                .len(),
            MAX_KEY_LEN
        );
        let over = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            parse_key(over.as_bytes(), MAX_KEY_LEN),
            Err(KeyError::TooLong(MAX_KEY_LEN + 1))
        );
        assert_eq!(
            parse_key(format!("\"{over}\"").as_bytes(), MAX_KEY_LEN),
            Err(KeyError::TooLong(MAX_KEY_LEN + 1))
        );
        // Escapes count once: 255 escaped quotes are 255 key bytes.
        let escaped = format!("\"{}\"", "\\\"".repeat(MAX_KEY_LEN));
        assert_eq!(
            parse_key(escaped.as_bytes(), MAX_KEY_LEN).unwrap().len(),
            MAX_KEY_LEN
        );
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
            let detail = e.detail("x-request-key", 64);
            assert!(detail.contains("RFC 8941"), "{detail}");
            assert!(detail.contains("the x-request-key "), "{detail}");
            assert!(detail.contains("1 to 64 bytes"), "{detail}");
        }
        assert!(KeyError::TooLong(300)
            .detail("Idempotency-Key", 255)
            .starts_with("the Idempotency-Key is 300 bytes long, over the limit of 255;"));
    }

    #[test]
    fn long_keys_report_their_real_length_and_the_limit_applies() {
        let long = format!("\"{}\"", "k".repeat(1000));
        assert_eq!(
            parse_key(long.as_bytes(), MAX_KEY_LEN),
            Err(KeyError::TooLong(1000))
        );
        assert_eq!(parse_key(b"abcdef", 5), Err(KeyError::TooLong(6)));
        assert_eq!(parse_key(b"abcde", 5).unwrap(), b"abcde");
    }
}
