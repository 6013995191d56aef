//! The listener's answers: built by the listener, parsed and judged by the dialer.
//!
//! The `101` is written byte for byte as strict deployed dialers expect it (npm reverse-http and
//! Go reversehttp compare the status line, `Upgrade` and `Connection` exactly):
//!
//! ```text
//! HTTP/1.1 101 Switching Protocols\r\n
//! Upgrade: <the dialer's own spelling of the chosen token>\r\n
//! Connection: Upgrade\r\n
//! \r\n
//! ```

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, StatusCode, Version};

use super::Protocol;
use super::body::Framing;
use super::request::{content_length, copy_headers, transfer_coding};
use super::tokens;
use crate::error::{HeadError, SwitchError};
use crate::limits::Limits;

/// `100 Continue`, sent before the `101` when the upgrade request asked for it.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The status code.
    pub status: StatusCode,
    /// The fields.
    pub headers: HeaderMap,
}

/// Parse one response head from the front of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head_bytes {
                Err(HeadError::TooLarge {
                    limit: limits.max_head_bytes,
                })
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        Err(e) => return Err(e.into()),
    };
    if len > limits.max_head_bytes {
        return Err(HeadError::TooLarge {
            limit: limits.max_head_bytes,
        });
    }
    let status = StatusCode::from_u16(res.code.unwrap_or_default())
        .map_err(|_| HeadError::Malformed("invalid status code"))?;
    let version = match res.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::new();
    copy_headers(res.headers, &mut headers)?;
    Ok(Some((
        ResponseHead {
            version,
            status,
            headers,
        },
        len,
    )))
}

/// Judge a `101`: it must be HTTP/1.1, switch to exactly one protocol the dialer offered, and
/// carry `Connection: upgrade` (RFC 9110 §7.8, §15.2.2; draft §3.2).
pub fn check_switch(head: &ResponseHead, offered: &[Protocol]) -> Result<Protocol, SwitchError> {
    if head.version != Version::HTTP_11 {
        return Err(SwitchError::NotHttp11);
    }
    let mut members = tokens::members(&head.headers, &UPGRADE);
    let first = members.next().ok_or(SwitchError::MissingUpgrade)?;
    let protocol = Protocol::from_member(first).filter(|p| offered.contains(p));
    let protocol = match (protocol, members.next()) {
        (Some(p), None) => p,
        _ => {
            let got = head
                .headers
                .get_all(UPGRADE)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(SwitchError::NotOffered { got });
        }
    };
    if !tokens::connection_has_upgrade(&head.headers) {
        return Err(SwitchError::MissingConnection);
    }
    Ok(protocol)
}

/// How the body of a (non-101) response to the upgrade request is delimited (RFC 9112 §6.3).
/// The request is never HEAD or CONNECT, so only the status decides the no-body cases.
pub fn framing(head: &ResponseHead) -> Result<Framing, HeadError> {
    let s = head.status;
    if s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    let length = content_length(&head.headers)?;
    if head.headers.contains_key(http::header::TRANSFER_ENCODING) {
        if length.is_some() {
            return Err(HeadError::Invalid(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        // A response whose last coding is not chunked is delimited by close (RFC 9112 §6.3).
        return Ok(transfer_coding(&head.headers).unwrap_or(Framing::UntilClose));
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// The exact `101 Switching Protocols` head, echoing `token` (the dialer's spelling).
pub fn encode_switching(token: &HeaderValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ");
    out.extend_from_slice(token.as_bytes());
    out.extend_from_slice(b"\r\nConnection: Upgrade\r\n\r\n");
    out
}

/// A complete plain-text final response that refuses the upgrade, with `Connection: close`.
///
/// `extra` carries fields such as `WWW-Authenticate` or `Retry-After`. A `426` gets the
/// `Upgrade` (and so `Connection: Upgrade`) fields RFC 9110 §15.5.22 requires, naming the
/// `accepted` protocols.
pub fn encode_refusal(
    status: StatusCode,
    accepted: &[Protocol],
    extra: &HeaderMap,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Refused").as_bytes());
    out.extend_from_slice(b"\r\n");
    if status == StatusCode::UPGRADE_REQUIRED {
        out.extend_from_slice(b"Upgrade: ");
        out.extend_from_slice(Protocol::list(accepted).as_bytes());
        out.extend_from_slice(b"\r\nConnection: Upgrade, close\r\n");
    } else {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    for (name, value) in extra {
        if name == CONNECTION || name == UPGRADE || name == http::header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// The body text for a refusal caused by `reason`, ending in a newline.
pub fn refusal_body(reason: &dyn std::fmt::Display) -> Bytes {
    Bytes::from(format!("{reason}\n"))
}

/// A response framed by `Transfer-Encoding` that also carries `Content-Length`: drop the
/// `Content-Length` and return `true`.
///
/// RFC 9112 §6.3: the chunked coding wins, the message "ought to be handled as an error", and
/// an intermediary that forwards it must remove the `Content-Length` first. The caller must not
/// reuse the connection it came on: its peer and this side may disagree about where the next
/// message starts.
pub fn drop_length_beside_chunked(headers: &mut HeaderMap) -> bool {
    let conflict = headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers.contains_key(http::header::CONTENT_LENGTH);
    if conflict {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    conflict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> ResponseHead {
        parse(raw, &Limits::default()).unwrap().unwrap().0
    }

    #[test]
    fn switching_bytes_are_exact() {
        assert_eq!(
            encode_switching(&HeaderValue::from_static("ptth/1.0")),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ptth/1.0\r\nConnection: Upgrade\r\n\r\n"
        );
    }

    #[test]
    fn own_101_passes_own_check() {
        let raw = encode_switching(&HeaderValue::from_static("PTTH/0.9"));
        assert_eq!(
            check_switch(&head(&raw), &[Protocol::Ptth09]),
            Ok(Protocol::Ptth09)
        );
    }

    #[test]
    fn switch_checks() {
        let all = &Protocol::ALL[..];
        let check = |raw: &[u8], offered: &[Protocol]| check_switch(&head(raw), offered);
        assert_eq!(
            check(
                b"HTTP/1.1 101 X\r\nUpgrade: PTTH/1.0\r\nConnection: upgrade\r\n\r\n",
                &[Protocol::Ptth09]
            ),
            Err(SwitchError::NotOffered {
                got: "PTTH/1.0".into()
            })
        );
        assert_eq!(
            check(b"HTTP/1.1 101 X\r\nConnection: upgrade\r\n\r\n", all),
            Err(SwitchError::MissingUpgrade)
        );
        assert_eq!(
            check(b"HTTP/1.1 101 X\r\nUpgrade: PTTH/1.0\r\n\r\n", all),
            Err(SwitchError::MissingConnection)
        );
        assert_eq!(
            check(
                b"HTTP/1.0 101 X\r\nUpgrade: PTTH/1.0\r\nConnection: upgrade\r\n\r\n",
                all
            ),
            Err(SwitchError::NotHttp11)
        );
        assert!(
            check(
                b"HTTP/1.1 101 X\r\nUpgrade: websocket, PTTH/1.0\r\nConnection: upgrade\r\n\r\n",
                all
            )
            .is_err()
        );
        assert_eq!(
            check(
                b"HTTP/1.1 101\r\nUpgrade: ptth/1.0\r\nConnection: keep-alive, Upgrade\r\n\r\n",
                all
            ),
            Ok(Protocol::Ptth10)
        );
    }

    #[test]
    fn refusal_framing() {
        assert_eq!(framing(&head(b"HTTP/1.1 204 \r\n\r\n")), Ok(Framing::Empty));
        assert_eq!(
            framing(&head(b"HTTP/1.1 401 No\r\nContent-Length: 4\r\n\r\n")),
            Ok(Framing::Length(4))
        );
        assert_eq!(
            framing(&head(b"HTTP/1.1 200 OK\r\n\r\n")),
            Ok(Framing::UntilClose)
        );
        assert!(
            framing(&head(
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            ))
            .is_err()
        );
    }
}
