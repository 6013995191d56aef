//! The listener's answers: built by the listener, parsed and judged by the dialer.
//!
//! The head is read by [`super::head`]. The `101` and the refusals are built here once, for
//! both listener entry points: [`switching_fields`] and [`refusal_fields`] are the fields, and
//! [`encode_switching`] / [`encode_refusal`] the bytes the raw listener writes.
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
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, UPGRADE};
use http::{HeaderMap, HeaderValue, StatusCode, Version};

use super::Protocol;
use super::alpn::{self, ALPN, AlpnId};
use super::body::Framing;
use super::head::{self, FramingFields, Slots};
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

/// Parse one response head from the front of `buf` into a [`ResponseHead`]:
/// [`head::Response::parse`] then [`head::Response::to_head`]. `Ok(None)` means more bytes are
/// needed.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let mut slots = Slots::new();
    let Some(head) = head::Response::parse(buf, &mut slots, limits)? else {
        return Ok(None);
    };
    Ok(Some((head.to_head()?, head.len)))
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

/// Judge the `ALPN` of a `101` to `ptth`: exactly one identifier, one the dialer offered
/// (draft-kazuho-ptth-ptth §3.2: the response names "the chosen HTTP version").
pub fn check_alpn(head: &ResponseHead, offered: &[AlpnId]) -> Result<AlpnId, SwitchError> {
    let ids = alpn::parse(&head.headers)
        .map_err(SwitchError::BadAlpn)?
        .ok_or(SwitchError::MissingAlpn)?;
    match ids.as_slice() {
        [one] if offered.contains(one) => Ok(one.clone()),
        _ => Err(SwitchError::AlpnNotOffered {
            got: String::from_utf8_lossy(alpn::encode_list(&ids).as_bytes()).into_owned(),
        }),
    }
}

/// How the body of a (non-101) response to the upgrade request is delimited (RFC 9112 §6.3):
/// the rules of [`head::Response::framing`], for a head already in a [`ResponseHead`].
pub fn framing(head: &ResponseHead) -> Result<Framing, HeadError> {
    FramingFields::of_map(&head.headers).response(head.status)
}

/// The fields of the `101`, in the order they are written: `Upgrade` echoing `token` (the
/// dialer's own spelling), then `Connection: Upgrade`, then for `ptth` the chosen `alpn`. Both
/// listener entry points send exactly these: [`encode_switching`] writes them, the hyper
/// listener puts them in its response.
pub fn switching_fields(
    token: &HeaderValue,
    alpn: Option<&AlpnId>,
) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
    let alpn = alpn.map(|id| (ALPN, alpn::encode_list(std::slice::from_ref(id))));
    [
        (UPGRADE, token.clone()),
        (CONNECTION, HeaderValue::from_static("Upgrade")),
    ]
    .into_iter()
    .chain(alpn)
}

/// The exact `101 Switching Protocols` head, echoing `token` (the dialer's spelling) and, for
/// `ptth`, naming the chosen `alpn`.
pub fn encode_switching(token: &HeaderValue, alpn: Option<&AlpnId>) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in switching_fields(token, alpn) {
        put_own_field(&mut out, &name, &value);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The `Content-Type` of a refusal: its body is [`refusal_body`] text.
pub const REFUSAL_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// The handshake's own fields of a refusal with `status`, in the order they are written; both
/// listener entry points send these. A `426` names the `accepted` protocols in `Upgrade` (RFC
/// 9110 §15.5.22), and a sender of `Upgrade` lists `upgrade` in `Connection` (§7.8); `close`
/// adds the `close` option, for a refusal after which the connection ends.
pub fn refusal_fields(
    status: StatusCode,
    accepted: &[Protocol],
    close: bool,
) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
    let upgrade = (status == StatusCode::UPGRADE_REQUIRED).then(|| {
        HeaderValue::from_str(&Protocol::list(accepted))
            .expect("protocol names are valid header text")
    });
    let connection = match (upgrade.is_some(), close) {
        (true, true) => Some("Upgrade, close"),
        (true, false) => Some("Upgrade"),
        (false, true) => Some("close"),
        (false, false) => None,
    };
    let upgrade = upgrade.map(|v| (UPGRADE, v));
    let connection = connection.map(|c| (CONNECTION, HeaderValue::from_static(c)));
    upgrade.into_iter().chain(connection)
}

/// A complete plain-text final response that refuses the upgrade, with `Connection: close`:
/// the [`refusal_fields`], then `extra`, then the body's `Content-Type` and `Content-Length`.
///
/// `extra` carries fields such as `WWW-Authenticate` or `Retry-After` (written as `http` spells
/// them, in lower case); its `Connection`, `Upgrade` and `Content-Length` are ignored.
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
    for (name, value) in refusal_fields(status, accepted, true) {
        put_own_field(&mut out, &name, &value);
    }
    for (name, value) in extra {
        if name == CONNECTION || name == UPGRADE || name == CONTENT_LENGTH {
            continue;
        }
        put_field(&mut out, name.as_str(), value.as_bytes());
    }
    put_own_field(&mut out, &CONTENT_TYPE, &REFUSAL_CONTENT_TYPE);
    put_own_field(&mut out, &CONTENT_LENGTH, &HeaderValue::from(body.len()));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Write a field the handshake adds itself, its name in title case (`Upgrade`,
/// `Content-Length`): strict dialers compare names too.
fn put_own_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    if *name == ALPN {
        // RFC 7639 and the ptth draft spell it in capitals.
        return put_field(out, "ALPN", value.as_bytes());
    }
    let start = out.len();
    put_field(out, name.as_str(), value.as_bytes());
    let mut upper = true;
    for b in &mut out[start..start + name.as_str().len()] {
        if upper {
            b.make_ascii_uppercase();
        }
        upper = *b == b'-';
    }
}

fn put_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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

/// Whether a response leaves its connection open for another exchange: HTTP/1.1 without
/// `close` in `Connection` (RFC 9112 §9.3; an HTTP/1.0 response closes unless it negotiated
/// keep-alive, which a reversed client never asks for).
pub fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11 && !tokens::has_member(headers, &CONNECTION, "close")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> ResponseHead {
        parse(raw, &Limits::default()).unwrap().unwrap().0
    }

    #[test]
    fn keep_alive_is_http11_without_close() {
        let mut h = HeaderMap::new();
        assert!(keeps_alive(Version::HTTP_11, &h));
        assert!(!keeps_alive(Version::HTTP_10, &h));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Close"));
        assert!(!keeps_alive(Version::HTTP_11, &h));
    }

    #[test]
    fn switching_bytes_are_exact() {
        assert_eq!(
            encode_switching(&HeaderValue::from_static("ptth/1.0"), None),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ptth/1.0\r\nConnection: Upgrade\r\n\r\n"
        );
        // draft-kazuho-ptth-ptth-00 figure 1 (and the -01 prose): the proxy selects h2.
        assert_eq!(
            encode_switching(&HeaderValue::from_static("ptth"), Some(&AlpnId::h2())),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h2\r\n\r\n"
        );
    }

    #[test]
    fn alpn_of_a_101() {
        let offered = [AlpnId::h2(), AlpnId::http11()];
        let check = |raw: &[u8]| check_alpn(&head(raw), &offered);
        let ok =
            b"HTTP/1.1 101 S\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: http%2F1.1\r\n\r\n";
        assert_eq!(check(ok), Ok(AlpnId::http11()));
        let base = "HTTP/1.1 101 S\r\nUpgrade: ptth\r\nConnection: Upgrade\r\n";
        let with = |alpn: &str| format!("{base}{alpn}\r\n").into_bytes();
        assert_eq!(check(&with("")), Err(SwitchError::MissingAlpn));
        assert_eq!(
            check(&with("ALPN: h2, http%2F1.1\r\n")),
            Err(SwitchError::AlpnNotOffered {
                got: "h2, http%2F1.1".into()
            })
        );
        // The -01 figure's answer, to a dialer that did not offer h3qx.
        assert_eq!(
            check(&with("ALPN: h3qx\r\n")),
            Err(SwitchError::AlpnNotOffered { got: "h3qx".into() })
        );
        assert_eq!(
            check(&with("ALPN: http/1.1\r\n")),
            Err(SwitchError::BadAlpn(alpn::AlpnError::NotToken))
        );
    }

    #[test]
    fn own_101_passes_own_check() {
        let raw = encode_switching(&HeaderValue::from_static("PTTH/0.9"), None);
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
