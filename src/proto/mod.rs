//! The wire vocabulary of Reverse HTTP, with no I/O in it.
//!
//! Everything here works on byte slices and `http` types. Public, for a program that builds or
//! judges offers itself: [`request`] builds and judges the upgrade request (sent by the dialer,
//! read by the listener), [`origin`] the `Origin` rules, [`alpn`] the `ALPN` field of `ptth`.
//! Crate-private, used by the roles: `head` reads every HTTP/1.1 head (one scan for requests
//! and responses, with the body framing); `response` builds and judges the `101 Switching
//! Protocols` and the refusals (sent by the listener, read by the dialer); `tokens` matches
//! `Upgrade`/`Connection` lists; `body` decodes the bounded bodies of the handshake; `connect`
//! is the CONNECT request an agent sends to a forward proxy, and what its answer means. Because nothing here touches a socket, all of it is
//! unit-tested with raw bytes, and every parser of it fuzzed (see `fuzz/`).
//!
//! After the flip, HTTP/1.1 on the reversed connection is hyper's job, not this module's. The
//! exceptions are what the forwarding hops share, crate-private: `path` (the dot-segment rules
//! the relay and the agent apply to the requests they forward), `hop` (hop-by-hop fields) and
//! `forwarded` (`Forwarded`/`X-Forwarded-*`); and the dialer's head clock, which follows
//! reversed requests with `head` to time their heads.

pub mod alpn;
pub(crate) mod body;
pub(crate) mod connect;
pub(crate) mod forwarded;
pub(crate) mod head;
pub(crate) mod hop;
pub(crate) mod long_poll;
pub mod origin;
pub(crate) mod path;
pub mod request;
pub(crate) mod response;
pub(crate) mod tokens;

use std::fmt;
use std::str::FromStr;

/// A PTTH protocol version that this crate can offer (dialer) or accept (listener).
///
/// Names compare case-insensitively and versions exactly (RFC 9110 §7.8), so `ptth/1.0` is
/// [`Protocol::Ptth10`], bare `ptth` is [`Protocol::Transposed`] (the IETF protocol, which has no
/// version), and `PTTH/1` is none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `PTTH/0.9`: the token of the Second Life wiki and the original design. The dialer's
    /// default.
    Ptth09,
    /// `PTTH/1.0`: the token of draft-lentczner-rhttp-00, used by AirPlay, Yaler and npm
    /// `reverse-http`.
    Ptth10,
    /// `ptth`, with no version: draft-kazuho-ptth-ptth ("Protocol for Transposed Transactions
    /// over HTTP"). The offer is a `GET` with an `ALPN` field ([`alpn`]) naming what runs inside
    /// (`h2`, `http/1.1`), and the `101` names the one chosen. Not in [`Protocol::ALL`]: a
    /// listener accepts it only when its rules list it (decisions D48).
    Transposed,
}

/// The protocol name, compared case-insensitively.
pub const PROTOCOL_NAME: &str = "PTTH";

impl Protocol {
    /// Both 2009 versions, in the order a listener prefers them when several are offered: what
    /// a listener accepts by default.
    pub const ALL: [Protocol; 2] = [Protocol::Ptth09, Protocol::Ptth10];

    /// Every protocol this crate knows, the 2009 ones and `ptth`.
    pub const KNOWN: [Protocol; 3] = [Protocol::Ptth09, Protocol::Ptth10, Protocol::Transposed];

    /// The `Upgrade` value naming `protocols` in canonical spelling, e.g. `PTTH/0.9, PTTH/1.0`:
    /// what a `426` advertises (RFC 9110 §15.5.22).
    pub fn list(protocols: &[Protocol]) -> String {
        let names: Vec<&str> = protocols.iter().map(|p| p.as_str()).collect();
        names.join(", ")
    }

    /// The canonical spelling, as the dialer sends it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Ptth09 => "PTTH/0.9",
            Protocol::Ptth10 => "PTTH/1.0",
            Protocol::Transposed => "ptth",
        }
    }

    /// The version after the `/`; `None` for `ptth`, which has none (its draft registers the
    /// token with "Expected Version Tokens: None").
    fn version(self) -> Option<&'static [u8]> {
        match self {
            Protocol::Ptth09 => Some(b"0.9"),
            Protocol::Ptth10 => Some(b"1.0"),
            Protocol::Transposed => None,
        }
    }

    /// Whether the protocol carries an `ALPN` negotiation (only `ptth`).
    pub fn negotiates_alpn(self) -> bool {
        self == Protocol::Transposed
    }

    /// Whether one `Upgrade` list member (`name[/version]`, already trimmed) names this
    /// protocol.
    pub fn matches(self, member: &[u8]) -> bool {
        let (name, version) = match member.iter().position(|&b| b == b'/') {
            Some(slash) => (&member[..slash], Some(&member[slash + 1..])),
            None => (member, None),
        };
        name.eq_ignore_ascii_case(PROTOCOL_NAME.as_bytes()) && version == self.version()
    }

    /// The protocol named by one `Upgrade` list member, if it is one we know.
    pub fn from_member(member: &[u8]) -> Option<Protocol> {
        Protocol::KNOWN.into_iter().find(|p| p.matches(member))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Protocol`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown PTTH protocol {0:?}: expected PTTH/0.9, PTTH/1.0 or ptth")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::from_member(s.trim().as_bytes()).ok_or_else(|| UnknownProtocol(s.to_string()))
    }
}

/// `n` in decimal, with no formatting machinery.
pub(crate) fn put_decimal(out: &mut bytes::BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    bytes::BufMut::put_slice(out, &digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_versions_exact() {
        assert_eq!(Protocol::from_member(b"PTTH/0.9"), Some(Protocol::Ptth09));
        assert_eq!(Protocol::from_member(b"ptth/1.0"), Some(Protocol::Ptth10));
        assert_eq!(Protocol::from_member(b"Ptth/1.0"), Some(Protocol::Ptth10));
        assert_eq!(Protocol::from_member(b"ptth"), Some(Protocol::Transposed));
        assert_eq!(Protocol::from_member(b"PTTH"), Some(Protocol::Transposed));
        for bad in [
            &b"ptth/"[..],
            b"ptth/2",
            b"PTTH/1",
            b"PTTH/2.0",
            b"PTTHX/1.0",
            b"PTTH/1.0 ",
            b"/1.0",
            b"",
        ] {
            assert_eq!(Protocol::from_member(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_from_text() {
        assert_eq!("PTTH/0.9".parse::<Protocol>().unwrap(), Protocol::Ptth09);
        assert!("websocket".parse::<Protocol>().is_err());
    }
}
