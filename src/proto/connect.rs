//! The CONNECT exchange with a forward proxy (RFC 9110 §9.3.6), sans IO: the request a client
//! sends to open a tunnel, and what the proxy's answer means.
//!
//! ```text
//! CONNECT relay.example:443 HTTP/1.1\r\n      authority-form target: host and port, always both
//! Host: relay.example:443\r\n                 the same authority (RFC 9112 §3.2)
//! Proxy-Authorization: Basic YWxpY2U6cHc=\r\n  when the proxy URL has credentials (RFC 7617)
//! User-Agent: ptth/0.1.0\r\n
//! \r\n
//! ```
//!
//! The answer's head is read by [`super::head`] like any other ([`super::response::parse`]). A
//! `2xx` opens the tunnel: it has no body, whatever its fields say, and every byte after its
//! empty line is the tunnel's (RFC 9112 §6.3, rule 2). `1xx` answers are interim and skipped
//! (RFC 9110 §15.2; a `101` is not one a CONNECT can get, so it is a refusal like any other
//! final status). Anything else is a refusal; its body is not read, since the connection is
//! closed after it.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

/// The `User-Agent` of a CONNECT request: proxies log it, and some refuse requests without one.
pub const USER_AGENT: &str = concat!("ptth/", env!("CARGO_PKG_VERSION"));

/// The authority-form request target of a CONNECT to `host` and `port` (RFC 9112 §3.2.3):
/// `host:port`, an IPv6 address in brackets. The port is never left out, even the scheme's
/// default: authority-form has no default.
pub fn authority_form(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A CONNECT request: the tunnel's target and the fields for the proxy.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// Where the tunnel goes, in authority form ([`authority_form`]); also the `Host` value.
    pub authority: String,
    /// Fields for the proxy, such as `Proxy-Authorization`. `Host` in here is ignored: it is
    /// the request's own.
    pub headers: HeaderMap,
}

impl ConnectRequest {
    /// A CONNECT to `authority` with a `User-Agent` ([`USER_AGENT`]) and no other field.
    pub fn new(authority: String) -> ConnectRequest {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        ConnectRequest { authority, headers }
    }

    /// The request head as bytes, ready for one write. A CONNECT request has no body, so it
    /// carries no framing fields (RFC 9110 §9.3.6).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + 2 * self.authority.len());
        out.extend_from_slice(b"CONNECT ");
        out.extend_from_slice(self.authority.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            if is_own_field(name) {
                continue;
            }
            put_field(&mut out, name, value);
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// Fields written in title case (`Proxy-Authorization`, `User-Agent`), as every client sends
/// them: some proxies' logs and filters look for that spelling.
fn put_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    let mut upper = true;
    for &b in name.as_str().as_bytes() {
        out.push(if upper { b.to_ascii_uppercase() } else { b });
        upper = b == b'-';
    }
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The fields a CONNECT request sets itself, or must not carry (it has no body).
fn is_own_field(name: &HeaderName) -> bool {
    use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
    [HOST, CONTENT_LENGTH, TRANSFER_ENCODING].contains(name)
}

/// What a status answering a CONNECT means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `2xx`: the tunnel is open right after the head's empty line.
    Established,
    /// `1xx` other than `101`: interim; the final answer follows.
    Interim,
    /// Anything else: no tunnel.
    Refused,
}

/// Judge the status of an answer to CONNECT.
pub fn answer(status: StatusCode) -> Answer {
    if status.is_success() {
        Answer::Established
    } else if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        Answer::Interim
    } else {
        Answer::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;

    #[test]
    fn encodes_authority_form_with_host_and_fields() {
        let mut r = ConnectRequest::new(authority_form("relay.example", 443));
        r.headers.insert(
            http::header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        );
        r.headers
            .insert(http::header::HOST, HeaderValue::from_static("evil"));
        let raw = String::from_utf8(r.encode()).unwrap();
        assert_eq!(
            raw,
            format!(
                "CONNECT relay.example:443 HTTP/1.1\r\nHost: relay.example:443\r\n\
                 User-Agent: {USER_AGENT}\r\n\
                 Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"
            )
        );
    }

    #[test]
    fn ipv6_targets_are_bracketed() {
        assert_eq!(authority_form("::1", 8080), "[::1]:8080");
        assert_eq!(authority_form("127.0.0.1", 80), "127.0.0.1:80");
    }

    /// The request is a valid head for the crate's own reader: method, authority-form target,
    /// `Host`, and no body.
    #[test]
    fn encoded_request_parses_as_a_connect_without_body() {
        let raw = ConnectRequest::new(authority_form("::1", 9)).encode();
        let (head, len) = super::super::request::parse(&raw, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(len, raw.len());
        assert_eq!(head.method, http::Method::CONNECT);
        assert_eq!(head.uri.authority().unwrap().as_str(), "[::1]:9");
        assert_eq!(head.headers["host"], "[::1]:9");
        assert_eq!(
            super::super::request::framing(&head.headers).unwrap(),
            super::super::body::Framing::Empty
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(answer(StatusCode::OK), Answer::Established);
        assert_eq!(
            answer(StatusCode::from_u16(299).unwrap()),
            Answer::Established
        );
        assert_eq!(answer(StatusCode::CONTINUE), Answer::Interim);
        assert_eq!(answer(StatusCode::SWITCHING_PROTOCOLS), Answer::Refused);
        assert_eq!(
            answer(StatusCode::PROXY_AUTHENTICATION_REQUIRED),
            Answer::Refused
        );
        assert_eq!(answer(StatusCode::MOVED_PERMANENTLY), Answer::Refused);
    }
}
