//! The `ALPN` header field (RFC 7639): which protocol runs inside a transposed `ptth` channel.
//!
//! draft-kazuho-ptth-ptth: the backend (our dialer) lists the HTTP versions it will serve in
//! `ALPN` on its `Upgrade: ptth` request; the reverse proxy (our listener) names the one it
//! chose in `ALPN` on the `101`. The value is `1#protocol-id`, each `protocol-id` a token in
//! which the octets of the ALPN identifier that are not token characters, and `%` itself, are
//! percent-encoded: `http/1.1` travels as `http%2F1.1`.
//!
//! Case rules (decisions D49): identifiers are octet strings (RFC 7301 §3.1), compared exactly
//! after decoding, so `H2` is not `h2`; a sender writes upper-case hex digits (RFC 7639 §2),
//! a recipient decodes either case. A member that is not a token (a raw `/`, a space) or has a
//! broken escape is an error, not a guess.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use super::tokens;

/// The `ALPN` field name.
pub const ALPN: HeaderName = HeaderName::from_static("alpn");

/// Longest ALPN identifier: 255 octets (RFC 7301 §3.1).
pub const MAX_ID_LEN: usize = 255;

/// One ALPN protocol identifier, decoded: 1 to 255 octets, compared exactly.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AlpnId(Box<[u8]>);

/// Why an `ALPN` field could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AlpnError {
    /// The field is there but lists nothing (RFC 7639: `1#protocol-id`).
    #[error("ALPN lists no protocol")]
    Empty,
    /// A member has an octet that is neither a token character nor part of an escape.
    #[error("ALPN member is not a token: percent-encode it (http/1.1 is http%2F1.1)")]
    NotToken,
    /// A `%` not followed by two hex digits.
    #[error("ALPN member has a broken percent escape")]
    BadEscape,
    /// A decoded identifier longer than [`MAX_ID_LEN`] octets.
    #[error("ALPN identifier longer than 255 octets")]
    TooLong,
}

impl AlpnId {
    /// `h2`: HTTP/2 over the bare byte stream (RFC 9113).
    pub const H2: &'static [u8] = b"h2";
    /// `http/1.1` (RFC 9112).
    pub const HTTP11: &'static [u8] = b"http/1.1";

    /// `h2`.
    pub fn h2() -> AlpnId {
        AlpnId(Self::H2.into())
    }

    /// `http/1.1`.
    pub fn http11() -> AlpnId {
        AlpnId(Self::HTTP11.into())
    }

    /// An identifier from its octets; `None` when empty or longer than [`MAX_ID_LEN`].
    pub fn new(octets: &[u8]) -> Option<AlpnId> {
        (!octets.is_empty() && octets.len() <= MAX_ID_LEN).then(|| AlpnId(octets.into()))
    }

    /// The identifier's octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Decode one `protocol-id` (already trimmed of whitespace).
    pub fn decode(member: &[u8]) -> Result<AlpnId, AlpnError> {
        let mut out = Vec::with_capacity(member.len());
        let mut rest = member;
        while let [b, tail @ ..] = rest {
            if *b == b'%' {
                let [hi, lo, tail @ ..] = tail else {
                    return Err(AlpnError::BadEscape);
                };
                let (Some(hi), Some(lo)) = (hex(*hi), hex(*lo)) else {
                    return Err(AlpnError::BadEscape);
                };
                out.push(hi << 4 | lo);
                rest = tail;
            } else if tokens::is_tchar(*b) {
                out.push(*b);
                rest = tail;
            } else {
                return Err(AlpnError::NotToken);
            }
        }
        match out.len() {
            0 => Err(AlpnError::Empty),
            n if n > MAX_ID_LEN => Err(AlpnError::TooLong),
            _ => Ok(AlpnId(out.into())),
        }
    }

    /// The `protocol-id` form: token octets as they are, every other octet and `%` as `%HH`
    /// with upper-case hex (RFC 7639 §2).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for &b in self.0.iter() {
            if tokens::is_tchar(b) && b != b'%' {
                out.push(char::from(b));
            } else {
                out.push('%');
                out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
                out.push(char::from(HEX_UPPER[usize::from(b & 15)]));
            }
        }
        out
    }
}

impl std::fmt::Debug for AlpnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlpnId({})", self.encode())
    }
}

/// The wire form ([`AlpnId::encode`]), which is also readable: `h2`, `http%2F1.1`.
impl std::fmt::Display for AlpnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Every identifier of the `ALPN` field in `headers`, across all its field lines, in order.
/// `Ok(None)`: no `ALPN` field at all. Empty list members are skipped (RFC 9110 §5.6.1), but a
/// field with no member at all is [`AlpnError::Empty`].
pub fn parse(headers: &HeaderMap) -> Result<Option<Vec<AlpnId>>, AlpnError> {
    if !headers.contains_key(ALPN) {
        return Ok(None);
    }
    let ids = tokens::members(headers, &ALPN)
        .map(AlpnId::decode)
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err(AlpnError::Empty);
    }
    Ok(Some(ids))
}

/// The `ALPN` value listing `ids`, e.g. `h2, http%2F1.1`.
pub fn encode_list(ids: &[AlpnId]) -> HeaderValue {
    let text = ids
        .iter()
        .map(AlpnId::encode)
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::from_str(&text).expect("encoded ALPN identifiers are tokens")
}

/// The listener's choice: the first of `supported` (its order of preference) that `offered`
/// lists (decisions D50).
pub fn choose<'a>(supported: &'a [AlpnId], offered: &[AlpnId]) -> Option<&'a AlpnId> {
    supported.iter().find(|s| offered.contains(s))
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The value of one hex digit of a percent escape, either case: the one digit reader of the
/// crate's percent-decoding (here and [`super::origin`]).
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(lines: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in lines {
            h.append(ALPN, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn decodes_the_drafts_example_and_round_trips() {
        let ids = parse(&map(&["h2, http%2F1.1"])).unwrap().unwrap();
        assert_eq!(ids, vec![AlpnId::h2(), AlpnId::http11()]);
        assert_eq!(encode_list(&ids), "h2, http%2F1.1");
        // Split over lines, padded, with empty members: the same list.
        let split = parse(&map(&[" h2 ,, ", "\thttp%2f1.1"])).unwrap().unwrap();
        assert_eq!(split, ids);
    }

    #[test]
    fn identifiers_compare_exactly_after_decoding() {
        assert_ne!(AlpnId::decode(b"H2").unwrap(), AlpnId::h2());
        // An escaped token character decodes to the same identifier.
        assert_eq!(AlpnId::decode(b"h%32").unwrap(), AlpnId::h2());
        // `%` itself must be escaped on the way out; odd octets are upper-case hex.
        let odd = AlpnId::new(b"a%b/\xff ").unwrap();
        assert_eq!(odd.encode(), "a%25b%2F%FF%20");
        assert_eq!(AlpnId::decode(odd.encode().as_bytes()).unwrap(), odd);
    }

    #[test]
    fn bad_members_are_typed_errors() {
        let cases: &[(&[u8], AlpnError)] = &[
            (b"http/1.1", AlpnError::NotToken),
            (b"h 2", AlpnError::NotToken),
            (b"h\"2\"", AlpnError::NotToken),
            (b"h2%", AlpnError::BadEscape),
            (b"h2%2", AlpnError::BadEscape),
            (b"h2%zz", AlpnError::BadEscape),
            (b"", AlpnError::Empty),
        ];
        for (member, want) in cases {
            assert_eq!(AlpnId::decode(member), Err(*want), "{member:?}");
        }
        assert_eq!(AlpnId::decode(&[b'a'; 256]), Err(AlpnError::TooLong));
        assert!(AlpnId::decode(&[b'a'; 255]).is_ok());
        assert_eq!(parse(&map(&[" , "])), Err(AlpnError::Empty));
        assert_eq!(parse(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn the_listeners_preference_wins() {
        let supported = [AlpnId::h2(), AlpnId::http11()];
        let offered = [AlpnId::http11(), AlpnId::h2()];
        assert_eq!(choose(&supported, &offered), Some(&AlpnId::h2()));
        let h3qx = AlpnId::new(b"h3qx").unwrap();
        assert_eq!(choose(&supported, &[h3qx]), None);
    }
}
