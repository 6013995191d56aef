//! The origins a `ptth` backend registers: the well-known URI template of
//! draft-kazuho-ptth-ptth-01 §3.1, `/.well-known/ptth/{serialized_origin}/`.
//!
//! `serialized_origin` is a non-empty list of RFC 6454 ASCII serializations
//! (`scheme "://" host [ ":" port ]`, `null` forbidden), each percent-encoded by URI template
//! expansion and joined with `,`:
//! `/.well-known/ptth/https%3A%2F%2Fbackend.example.com,https%3A%2F%2Fapi.example.com%3A8443/`.
//! The listener reads the list into [`Origin`]s for its authorisation check (the draft: the
//! proxy "MUST … verify that the authenticated backend server is authorized to register every
//! requested backend origin"). Each origin must be the *canonical* serialization (lower case,
//! no default port): one origin has one spelling, so an authorisation table keyed by it cannot
//! be walked around (decisions D51).

use std::fmt;

/// The path prefix of the default template.
pub const WELL_KNOWN_PREFIX: &str = "/.well-known/ptth/";

/// One backend origin (RFC 6454): `http` or `https`, a lower-case host, and the port when it
/// is not the scheme's default.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: Scheme,
    host: String,
    port: Option<u16>,
}

/// The schemes an origin of forwarded HTTP requests can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http`, default port 80.
    Http,
    /// `https`, default port 443.
    Https,
}

impl Scheme {
    /// The scheme's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The default port (RFC 9110 §4.2).
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Why a well-known target does not name a list of origins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// The path is not `/.well-known/ptth/{serialized_origin}/` (a segment missing, extra
    /// segments, no final `/`).
    #[error("expected /.well-known/ptth/{{serialized_origin}}/")]
    Shape,
    /// The list is empty, or has an empty member.
    #[error("empty origin in the serialized_origin list")]
    Empty,
    /// More origins than the listener reads in one offer.
    #[error("more than {limit} origins in one offer")]
    TooMany {
        /// The limit in force.
        limit: usize,
    },
    /// A `%` not followed by two hex digits, or an escape decoding to a non-ASCII octet.
    #[error("broken percent escape in an origin")]
    BadEscape,
    /// `null` (the draft forbids it).
    #[error("the null origin cannot be registered")]
    Null,
    /// Not `scheme://host[:port]`.
    #[error("an origin is scheme://host[:port] with nothing after it")]
    Syntax,
    /// A scheme other than `http` or `https`.
    #[error("only http and https origins can be registered")]
    Scheme,
    /// An invalid host, or port (0, over 65535, leading zeros).
    #[error("invalid host or port in an origin")]
    HostOrPort,
    /// Valid, but not the ASCII serialization (upper case, or the default port written out).
    #[error("origin is not in RFC 6454 serialized form (lower case, no default port)")]
    NotCanonical,
}

impl Origin {
    /// An origin from its parts; the port is dropped when it is the scheme's default.
    pub fn new(scheme: Scheme, host: &str, port: Option<u16>) -> Result<Origin, OriginError> {
        if !valid_host(host) || host.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(OriginError::HostOrPort);
        }
        Ok(Origin {
            scheme,
            host: host.to_string(),
            port: port.filter(|&p| p != scheme.default_port()),
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host, lower case (a reg-name, an IPv4 address, or an IPv6 literal in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, the default one when none is written.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.scheme.default_port())
    }

    /// Parse one decoded serialization; it must be canonical.
    pub fn parse(text: &str) -> Result<Origin, OriginError> {
        if text == "null" {
            return Err(OriginError::Null);
        }
        let (scheme, rest) = text.split_once("://").ok_or(OriginError::Syntax)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "" => return Err(OriginError::Syntax),
            _ => return Err(OriginError::Scheme),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(OriginError::Syntax);
        }
        let (host, port) = split_port(rest)?;
        let lower = host.to_ascii_lowercase();
        let origin = Origin::new(scheme, &lower, port)?;
        if origin.to_string() != text {
            return Err(OriginError::NotCanonical);
        }
        Ok(origin)
    }
}

/// The RFC 6454 §6.2 ASCII serialization.
impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

fn split_port(rest: &str) -> Result<(&str, Option<u16>), OriginError> {
    let colon = if rest.starts_with('[') {
        let close = rest.find(']').ok_or(OriginError::HostOrPort)?;
        match &rest[close + 1..] {
            "" => None,
            tail if tail.starts_with(':') => Some(close + 1),
            _ => return Err(OriginError::HostOrPort),
        }
    } else {
        rest.find(':')
    };
    let Some(colon) = colon else {
        return Ok((rest, None));
    };
    let digits = &rest[colon + 1..];
    let leading_zero = digits.len() > 1 && digits.starts_with('0');
    if digits.is_empty() || leading_zero || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OriginError::HostOrPort);
    }
    match digits.parse::<u16>() {
        Ok(p) if p > 0 => Ok((&rest[..colon], Some(p))),
        _ => Err(OriginError::HostOrPort),
    }
}

/// A reg-name of letters, digits, `-` and `.` (labels not empty), or a bracketed IPv6 literal.
fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether a request path is in the well-known template's space (starts with
/// [`WELL_KNOWN_PREFIX`]): such a target must then name a valid list.
pub fn is_well_known(path: &str) -> bool {
    path.starts_with(WELL_KNOWN_PREFIX)
}

/// The origins named by a well-known request path (the query, if any, already removed), at
/// most `limit` of them.
pub fn parse_well_known(path: &str, limit: usize) -> Result<Vec<Origin>, OriginError> {
    let list = path
        .strip_prefix(WELL_KNOWN_PREFIX)
        .and_then(|rest| rest.strip_suffix('/'))
        .filter(|list| !list.contains('/'))
        .ok_or(OriginError::Shape)?;
    let mut origins = Vec::new();
    for member in list.split(',') {
        if origins.len() == limit {
            return Err(OriginError::TooMany { limit });
        }
        let text = percent_decode(member)?;
        if text.is_empty() {
            return Err(OriginError::Empty);
        }
        origins.push(Origin::parse(&text)?);
    }
    Ok(origins)
}

/// The well-known target registering `origins`: the template expanded as RFC 6570 expands a
/// list in a simple `{var}` (members joined by `,`, every reserved character encoded).
pub fn well_known_target(origins: &[Origin]) -> String {
    let mut out = String::from(WELL_KNOWN_PREFIX);
    for (i, origin) in origins.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for b in origin.to_string().bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out.push('/');
    out
}

fn percent_decode(member: &str) -> Result<String, OriginError> {
    let mut out = Vec::with_capacity(member.len());
    let mut rest = member.as_bytes();
    while let [b, tail @ ..] = rest {
        if *b == b'%' {
            let [hi, lo, tail @ ..] = tail else {
                return Err(OriginError::BadEscape);
            };
            let (Some(hi), Some(lo)) = (super::alpn::hex(*hi), super::alpn::hex(*lo)) else {
                return Err(OriginError::BadEscape);
            };
            let octet = hi << 4 | lo;
            if !octet.is_ascii() {
                return Err(OriginError::BadEscape);
            }
            out.push(octet);
            rest = tail;
        } else {
            out.push(*b);
            rest = tail;
        }
    }
    String::from_utf8(out).map_err(|_| OriginError::BadEscape)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRAFT_EXAMPLE: &str =
        "/.well-known/ptth/https%3A%2F%2Fbackend.example.com,https%3A%2F%2Fapi.example.com%3A8443/";

    #[test]
    fn reads_and_writes_the_drafts_example() {
        let origins = parse_well_known(DRAFT_EXAMPLE, 8).unwrap();
        assert_eq!(
            origins.iter().map(Origin::to_string).collect::<Vec<_>>(),
            [
                "https://backend.example.com",
                "https://api.example.com:8443"
            ]
        );
        assert_eq!(origins[0].port(), 443);
        assert_eq!(origins[1].port(), 8443);
        assert_eq!(well_known_target(&origins), DRAFT_EXAMPLE);
    }

    #[test]
    fn bad_templates_are_typed_errors() {
        let cases: &[(&str, OriginError)] = &[
            ("/.well-known/ptth/", OriginError::Shape),
            ("/.well-known/ptth/http%3A%2F%2Fa", OriginError::Shape),
            ("/.well-known/ptth/http%3A%2F%2Fa/x/", OriginError::Shape),
            ("/.well-known/ptth//", OriginError::Empty),
            ("/.well-known/ptth/http%3A%2F%2Fa,/", OriginError::Empty),
            ("/.well-known/ptth/null/", OriginError::Null),
            (
                "/.well-known/ptth/http%3A%2F%2Fa%2/",
                OriginError::BadEscape,
            ),
            (
                "/.well-known/ptth/http%3A%2F%2Fa%FF/",
                OriginError::BadEscape,
            ),
            ("/.well-known/ptth/a.example/", OriginError::Syntax),
            (
                "/.well-known/ptth/http%3A%2F%2Fa%2Fpath/",
                OriginError::Syntax,
            ),
            ("/.well-known/ptth/http%3A%2F%2Fu%40a/", OriginError::Syntax),
            ("/.well-known/ptth/ftp%3A%2F%2Fa/", OriginError::Scheme),
            (
                "/.well-known/ptth/http%3A%2F%2Fa%3A0/",
                OriginError::HostOrPort,
            ),
            (
                "/.well-known/ptth/http%3A%2F%2Fa%3A65536/",
                OriginError::HostOrPort,
            ),
            (
                "/.well-known/ptth/http%3A%2F%2Fa%3A080/",
                OriginError::HostOrPort,
            ),
            (
                "/.well-known/ptth/http%3A%2F%2Fa_b/",
                OriginError::HostOrPort,
            ),
            (
                "/.well-known/ptth/http%3A%2F%2FA.example/",
                OriginError::NotCanonical,
            ),
            (
                "/.well-known/ptth/HTTP%3A%2F%2Fa/",
                OriginError::NotCanonical,
            ),
            (
                "/.well-known/ptth/http%3A%2F%2Fa%3A80/",
                OriginError::NotCanonical,
            ),
            (
                "/.well-known/ptth/https%3A%2F%2Fa%3A443/",
                OriginError::NotCanonical,
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parse_well_known(path, 8), Err(*want), "{path}");
        }
        let many = format!("{WELL_KNOWN_PREFIX}{}/", ["http%3A%2F%2Fa"; 3].join(","));
        assert_eq!(
            parse_well_known(&many, 2),
            Err(OriginError::TooMany { limit: 2 })
        );
    }

    #[test]
    fn ip_literals_and_raw_colons() {
        let got = parse_well_known(
            "/.well-known/ptth/http:%2F%2F[::1]:8080,http%3A%2F%2F127.0.0.1/",
            8,
        )
        .unwrap();
        assert_eq!(got[0].host(), "[::1]");
        assert_eq!(got[0].port(), 8080);
        assert_eq!(got[1].to_string(), "http://127.0.0.1");
    }
}
