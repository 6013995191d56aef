//! The upgrade request: built by the dialer, parsed and judged by the listener.
//!
//! Parsing is strict RFC 9112 (through httparse): bare CR, whitespace before a colon, obs-fold
//! and NUL are syntax errors; `Content-Length` with `Transfer-Encoding`, differing
//! `Content-Length` values, or a `Transfer-Encoding` that does not end in `chunked` are framing
//! errors. Whether a valid request is a PTTH *offer* is a separate judgement ([`check_offer`]), so
//! that a listener can answer a plain request as plain HTTP.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, EXPECT, HOST, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Uri, Version, request};

use super::Protocol;
use super::body::Framing;
use super::tokens;
use crate::error::{HeadError, HostError, OfferError};
use crate::limits::Limits;

/// Parse one request head from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, and `Ok(Some((head, len)))` with the head's
/// length in bytes when it is complete; the bytes after `len` are the body and whatever follows.
/// A head that has not ended within [`Limits::max_head_bytes`] is [`HeadError::TooLarge`] (or
/// [`HeadError::LineTooLong`] while still in the request line).
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(request::Parts, usize)>, HeadError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head_bytes {
                Err(too_large(buf, limits))
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
        return Err(too_large(buf, limits));
    }

    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let uri = req
        .path
        .unwrap_or_default()
        .parse::<Uri>()
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri)
        .version(version);
    let headers = builder.headers_mut().expect("builder has no error yet");
    copy_headers(req.headers, headers)?;
    let (parts, ()) = builder
        .body(())
        .map_err(|_| HeadError::Malformed("invalid request head"))?
        .into_parts();
    Ok(Some((parts, len)))
}

fn too_large(buf: &[u8], limits: &Limits) -> HeadError {
    if buf[..buf.len().min(limits.max_head_bytes)].contains(&b'\n') {
        HeadError::TooLarge {
            limit: limits.max_head_bytes,
        }
    } else {
        HeadError::LineTooLong {
            limit: limits.max_head_bytes,
        }
    }
}

/// Copy httparse's fields into a `HeaderMap`, keeping repeated fields as separate entries.
pub(crate) fn copy_headers(
    src: &[httparse::Header<'_>],
    dst: &mut HeaderMap,
) -> Result<(), HeadError> {
    dst.reserve(src.len());
    for h in src {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| HeadError::Malformed("invalid header value"))?;
        dst.append(name, value);
    }
    Ok(())
}

/// How the body of a request is delimited (RFC 9112 §6.3), or why it cannot be trusted.
pub fn framing(headers: &HeaderMap) -> Result<Framing, HeadError> {
    let has_te = headers.contains_key(TRANSFER_ENCODING);
    let length = content_length(headers)?;
    if has_te {
        if length.is_some() {
            // RFC 9112 §6.1: "ought to be handled as an error"; it is the classic smuggling
            // vector, so it always is here.
            return Err(HeadError::Invalid(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        return transfer_coding(headers);
    }
    Ok(match length {
        Some(0) | None => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// `chunked` must be the last coding; any other coding is not implemented here.
pub(crate) fn transfer_coding(headers: &HeaderMap) -> Result<Framing, HeadError> {
    let codings: Vec<&[u8]> = tokens::members(headers, &TRANSFER_ENCODING).collect();
    match codings.as_slice() {
        [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
        [.., last] if last.eq_ignore_ascii_case(b"chunked") => Err(HeadError::UnsupportedCoding),
        _ => Err(HeadError::Invalid(
            "Transfer-Encoding does not end in chunked",
        )),
    }
}

/// The `Content-Length`, if any. Repeated equal values are one value (RFC 9112 §6.3 item 5);
/// differing or non-numeric values are an error.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, HeadError> {
    let mut found: Option<u64> = None;
    for member in tokens::members(headers, &CONTENT_LENGTH) {
        if member.is_empty() || !member.iter().all(u8::is_ascii_digit) || member.len() > 19 {
            return Err(HeadError::Invalid("invalid Content-Length"));
        }
        let n: u64 = std::str::from_utf8(member)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(HeadError::Invalid("invalid Content-Length"))?;
        match found {
            Some(prev) if prev != n => {
                return Err(HeadError::Invalid("differing Content-Length values"));
            }
            _ => found = Some(n),
        }
    }
    if found.is_none() && headers.contains_key(CONTENT_LENGTH) {
        return Err(HeadError::Invalid("empty Content-Length"));
    }
    Ok(found)
}

/// What a listener requires of an upgrade request, beyond valid HTTP/1.1.
#[derive(Debug, Clone)]
pub struct OfferRules {
    /// Protocols accepted, in the listener's order of preference when the dialer's order ties.
    /// Default: both `PTTH/0.9` and `PTTH/1.0`.
    pub protocols: Vec<Protocol>,
    /// Methods accepted for the upgrade request. Default: `GET` and `POST` (the draft leaves
    /// the method open; deployed dialers use POST, RFC 9931 recommends GET).
    pub methods: Vec<Method>,
    /// Whether an HTTP/1.1 upgrade request without `Host` is accepted. Default `false` (RFC
    /// 9112 §3.2 says 400); set it for AirPlay senders, which send none.
    pub allow_missing_host: bool,
}

impl Default for OfferRules {
    fn default() -> Self {
        OfferRules {
            protocols: Protocol::ALL.to_vec(),
            methods: vec![Method::GET, Method::POST],
            allow_missing_host: false,
        }
    }
}

/// A request that the listener has agreed is a PTTH offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The protocol chosen from the offer.
    pub protocol: Protocol,
    /// The dialer's exact spelling of it, echoed byte for byte in the `101`.
    pub token: HeaderValue,
    /// How the offer's body is delimited; it is read in full before the switch.
    pub framing: Framing,
}

/// Judge whether a parsed request is a PTTH offer this listener accepts.
///
/// Checks, in order: the body framing ([`framing`]: `Content-Length` with
/// `Transfer-Encoding`, differing or invalid lengths, chunked not last; protocol-notes §10
/// #13: never a `101`), HTTP/1.1 (RFC 9110 §7.8: ignore Upgrade in 1.0), a PTTH token in
/// `Upgrade`, `upgrade` in `Connection` (draft §3.2), the `Host` rules of [`authority`]
/// (RFC 9112 §3.2; a missing one only with [`OfferRules::allow_missing_host`]), an accepted
/// method. Every entry point (the raw listener, the hyper one, the relay) judges with this.
pub fn check_offer(head: &request::Parts, rules: &OfferRules) -> Result<Offer, OfferError> {
    let framing = framing(&head.headers).map_err(OfferError::Framing)?;
    if head.version < Version::HTTP_11 {
        return Err(OfferError::Http10);
    }
    let (protocol, spelling) =
        tokens::offered_protocol(&head.headers, &rules.protocols).ok_or(OfferError::NoProtocol)?;
    if !tokens::connection_has_upgrade(&head.headers) {
        return Err(OfferError::NoConnectionUpgrade);
    }
    match authority(head.version, &head.uri, &head.headers) {
        Ok(_) => {}
        Err(HostError::Missing) if rules.allow_missing_host => {}
        Err(e) => return Err(OfferError::BadHost(e)),
    }
    if !rules.methods.contains(&head.method) {
        return Err(OfferError::Method);
    }
    let token = HeaderValue::from_bytes(spelling).expect("a slice of a valid header value");
    Ok(Offer {
        protocol,
        token,
        framing,
    })
}

/// The authority a request is for, by the `Host` rules of RFC 9112 §3.2: exactly one `Host`
/// on an HTTP/1.1 request (none is fine in HTTP/1.0), never two, with a `host[:port]` value
/// (empty is valid: a target without an authority). With an absolute-form target the target's
/// authority wins over `Host` (§3.2.2). `Ok(None)`: an HTTP/1.0 request with neither.
///
/// For requests a server receives by name (a relay's public requests and agent claims, a
/// listener's upgrade requests); never for reversed requests, which a PTTH dialer serves
/// whatever their `Host` (draft §3.1, decisions D7).
pub fn authority<'a>(
    version: Version,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, HostError> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(HostError::Repeated),
        (Some(h), None) => Some(h),
        (None, _) if version >= Version::HTTP_11 => return Err(HostError::Missing),
        (None, _) => None,
    };
    let host = match host {
        Some(h) if h.as_bytes().iter().all(|&b| is_authority_byte(b)) => {
            Some(h.to_str().map_err(|_| HostError::Invalid)?)
        }
        Some(_) => return Err(HostError::Invalid),
        None => None,
    };
    Ok(uri.authority().map(|a| a.as_str()).or(host))
}

/// The bytes of `uri-host [ ":" port ]` (RFC 3986 §3.2.2: reg-name, IP literal, port).
fn is_authority_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b)
}

/// Whether the request asks for `100 Continue` before it sends its body (RFC 9110 §10.1.1).
pub fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Everything the dialer puts in its upgrade request.
#[derive(Debug, Clone)]
pub struct UpgradeRequest {
    /// Method. Default `POST`, as in the draft's example and every deployed dialer.
    pub method: Method,
    /// Request target in origin form, e.g. `/NAME`. Default `/`.
    pub target: String,
    /// `Host` value: the listener's authority (RFC 9112 §3.2). Must be set by the caller.
    pub host: HeaderValue,
    /// Protocols offered, most preferred first. Default: `PTTH/0.9` only.
    pub protocols: Vec<Protocol>,
    /// Extra fields, such as `Authorization`. `Host`, `Upgrade`, `Connection` and the framing
    /// fields in here are ignored: they are the handshake's own.
    pub headers: HeaderMap,
    /// Body, sent in full before anything else (RFC 9110 §7.8). Default empty.
    pub body: Bytes,
}

impl UpgradeRequest {
    /// A `POST /` offering `PTTH/0.9` to `host`.
    pub fn new(host: HeaderValue) -> Self {
        UpgradeRequest {
            method: Method::POST,
            target: "/".to_string(),
            host,
            protocols: vec![Protocol::Ptth09],
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// The request head and body as bytes, ready for one write.
    ///
    /// Always sends `Content-Length` (also `0`): AirPlay, Yaler and reverse-http do, and some
    /// listeners wait for a body otherwise. Never sends `Expect: 100-continue` (an extra round
    /// trip almost no listener implements).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\r\nUpgrade: ");
        for (i, p) in self.protocols.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(p.as_str().as_bytes());
        }
        out.extend_from_slice(b"\r\nConnection: Upgrade\r\n");
        for (name, value) in &self.headers {
            if is_handshake_field(name) {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(self.body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn is_handshake_field(name: &HeaderName) -> bool {
    use http::header::{CONNECTION, UPGRADE};
    [
        HOST,
        UPGRADE,
        CONNECTION,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        EXPECT,
    ]
    .contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn parse_ok(raw: &[u8]) -> (request::Parts, usize) {
        parse(raw, &limits()).unwrap().unwrap()
    }

    #[test]
    fn encodes_the_draft_request() {
        let mut r = UpgradeRequest::new(HeaderValue::from_static("b.example.com"));
        r.target = "/message-queue?id=iamsam".into();
        r.protocols = vec![Protocol::Ptth10];
        assert_eq!(
            r.encode(),
            b"POST /message-queue?id=iamsam HTTP/1.1\r\nHost: b.example.com\r\n\
              Upgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn encode_then_parse_round_trips_as_an_offer() {
        let mut r = UpgradeRequest::new(HeaderValue::from_static("relay:8080"));
        r.protocols = vec![Protocol::Ptth09, Protocol::Ptth10];
        r.headers
            .insert("authorization", HeaderValue::from_static("Bearer x"));
        r.headers
            .insert("upgrade", HeaderValue::from_static("evil"));
        r.body = Bytes::from_static(b"creds");
        let raw = r.encode();
        let (head, len) = parse_ok(&raw);
        assert_eq!(&raw[len..], b"creds");
        assert_eq!(framing(&head.headers).unwrap(), Framing::Length(5));
        let offer = check_offer(&head, &OfferRules::default()).unwrap();
        assert_eq!(offer.protocol, Protocol::Ptth09);
        assert_eq!(head.headers.get_all("upgrade").iter().count(), 1);
    }

    #[test]
    fn partial_heads_need_more() {
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nHost: x\r\n", &limits()),
            Ok(None)
        ));
        assert!(matches!(parse(b"", &limits()), Ok(None)));
    }

    #[test]
    fn oversize_heads_are_refused() {
        let mut l = limits();
        l.max_head_bytes = 64;
        let line = [b"GET /".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(
            parse(&line, &l).unwrap_err(),
            HeadError::LineTooLong { limit: 64 }
        );
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        head.extend(std::iter::repeat_n(b"X: y\r\n".as_slice(), 20).flatten());
        assert_eq!(
            parse(&head, &l).unwrap_err(),
            HeadError::TooLarge { limit: 64 }
        );
    }

    #[test]
    fn framing_rules() {
        let f = |raw: &[u8]| framing(&parse_ok(raw).0.headers);
        assert_eq!(f(b"GET / HTTP/1.1\r\n\r\n"), Ok(Framing::Empty));
        assert_eq!(
            f(b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            Ok(Framing::Length(3))
        );
        assert!(f(b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n").is_err());
        assert!(f(b"GET / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n").is_err());
        assert!(f(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(f(b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n").is_err());
        assert!(
            f(b"GET / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
                .is_err()
        );
        assert_eq!(
            f(b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(HeadError::Invalid(
                "Transfer-Encoding does not end in chunked"
            ))
        );
        assert_eq!(
            f(b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(HeadError::UnsupportedCoding)
        );
        assert_eq!(
            f(b"GET / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
    }
}
