//! The upgrade request: built by the dialer, parsed and judged by the listener.
//!
//! The head is read by `proto::head` (strict RFC 9112, with its framing rules). Whether a
//! valid request is a PTTH *offer* is a separate judgement ([`check_offer`]), so that a
//! listener can answer a plain request as plain HTTP.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, EXPECT, HOST, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Uri, Version, request};

use super::Protocol;
use super::alpn::{self, ALPN, AlpnId};
use super::body::Framing;
use super::head::{self, FramingFields, Slots};
use super::origin::{self, Origin};
use super::tokens;
use crate::error::{HeadError, HostError, OfferError};
use crate::limits::{Limits, MAX_OFFER_ORIGINS};

/// Parse one request head from the front of `buf` into `http` types: `head::Request::parse`
/// then `head::Request::to_parts`.
///
/// Returns `Ok(None)` when more bytes are needed, and `Ok(Some((head, len)))` with the head's
/// length in bytes when it is complete; the bytes after `len` are the body and whatever follows.
/// A head that has not ended within [`Limits::max_head_bytes`] is [`HeadError::TooLarge`] (or
/// [`HeadError::LineTooLong`] while still in the request line).
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(request::Parts, usize)>, HeadError> {
    let mut slots = Slots::new();
    let Some(head) = head::Request::parse(buf, &mut slots, limits)? else {
        return Ok(None);
    };
    Ok(Some((head.to_parts()?, head.len)))
}

/// How the body of a request is delimited (RFC 9112 §6.3), or why it cannot be trusted: the
/// rules of `head::Request::framing`, for fields already in a `HeaderMap`.
pub fn framing(headers: &HeaderMap) -> Result<Framing, HeadError> {
    FramingFields::of_map(headers).request()
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
    /// For `ptth` offers: the protocols this listener runs inside the transposed channel, in
    /// its order of preference (the first one the dialer also lists is chosen, decisions D50).
    /// Default: `h2`, then `http/1.1`.
    pub alpn: Vec<AlpnId>,
}

impl Default for OfferRules {
    fn default() -> Self {
        OfferRules {
            protocols: Protocol::ALL.to_vec(),
            methods: vec![Method::GET, Method::POST],
            allow_missing_host: false,
            alpn: vec![AlpnId::h2(), AlpnId::http11()],
        }
    }
}

impl OfferRules {
    /// The default rules plus `ptth` (draft-kazuho-ptth-ptth) among the accepted protocols.
    pub fn with_transposed() -> Self {
        let mut rules = OfferRules::default();
        rules.protocols.push(Protocol::Transposed);
        rules
    }
}

/// What a listener agreed to when it judged a request a PTTH offer ([`check_offer`]): the
/// protocol, the dialer's spelling of it, and the framing of the offer's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferTerms {
    /// The protocol chosen from the offer.
    pub protocol: Protocol,
    /// The dialer's exact spelling of it, echoed byte for byte in the `101`.
    pub token: HeaderValue,
    /// How the offer's body is delimited; it is read in full before the switch.
    pub framing: Framing,
    /// For `ptth`: the protocol chosen from the offer's `ALPN`, named in the `101`.
    pub alpn: Option<AlpnId>,
    /// For `ptth` with a `/.well-known/ptth/{serialized_origin}/` target: the origins the
    /// dialer registers (the caller must check it may register every one). Empty otherwise.
    pub origins: Vec<Origin>,
}

/// Judge whether a parsed request is a PTTH offer this listener accepts.
///
/// Checks, in order: the body framing ([`framing`]: `Content-Length` with
/// `Transfer-Encoding`, differing or invalid lengths, chunked not last; protocol-notes §10
/// #13: never a `101`), HTTP/1.1 (RFC 9110 §7.8: ignore Upgrade in 1.0), a PTTH token in
/// `Upgrade`, `upgrade` in `Connection` (draft §3.2), the `Host` rules of [`authority`]
/// (RFC 9112 §3.2; a missing one only with [`OfferRules::allow_missing_host`]), an accepted
/// method. For `ptth` (draft-kazuho-ptth-ptth §3.2) also: `GET` only, an `ALPN` field naming
/// a protocol of [`OfferRules::alpn`], and a well-known target naming valid origins
/// (`transposed_terms`). Every entry point (the raw listener, the hyper one, the relay)
/// judges with this.
pub fn check_offer(head: &request::Parts, rules: &OfferRules) -> Result<OfferTerms, OfferError> {
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
    let (alpn, origins) = if protocol.negotiates_alpn() {
        if head.method != Method::GET {
            return Err(OfferError::Method);
        }
        transposed_terms(head, rules)?
    } else if !rules.methods.contains(&head.method) {
        return Err(OfferError::Method);
    } else {
        (None, Vec::new())
    };
    let token = HeaderValue::from_bytes(spelling).expect("a slice of a valid header value");
    Ok(OfferTerms {
        protocol,
        token,
        framing,
        alpn,
        origins,
    })
}

/// The `ptth` parts of an offer: the chosen `ALPN` protocol, and the origins of a well-known
/// target (none for another target: the draft leaves those to the deployment).
fn transposed_terms(
    head: &request::Parts,
    rules: &OfferRules,
) -> Result<(Option<AlpnId>, Vec<Origin>), OfferError> {
    let offered = alpn::parse(&head.headers)
        .map_err(OfferError::Alpn)?
        .ok_or(OfferError::NoAlpn)?;
    let chosen = alpn::choose(&rules.alpn, &offered).ok_or_else(|| OfferError::NoCommonAlpn {
        offered: list_text(&offered),
        supported: list_text(&rules.alpn),
    })?;
    let path = head.uri.path();
    let origins = if origin::is_well_known(path) {
        origin::parse_well_known(path, MAX_OFFER_ORIGINS).map_err(OfferError::Origin)?
    } else {
        Vec::new()
    };
    Ok((Some(chosen.clone()), origins))
}

fn list_text(ids: &[AlpnId]) -> Box<str> {
    let text = alpn::encode_list(ids);
    String::from_utf8_lossy(text.as_bytes()).into()
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
    let hosts = headers.get_all(HOST).iter().map(|h| h.as_bytes());
    authority_of(version, uri.authority().map(|a| a.as_str()), hosts)
}

/// [`authority`] over a head's own fields: `target_authority` is the authority of an
/// absolute-form target, `hosts` the values of its `Host` fields.
pub fn authority_of<'a>(
    version: Version,
    target_authority: Option<&'a str>,
    mut hosts: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<&'a str>, HostError> {
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(HostError::Repeated),
        (Some(h), None) => Some(h),
        (None, _) if version >= Version::HTTP_11 => return Err(HostError::Missing),
        (None, _) => None,
    };
    let host = match host {
        Some(h) if h.iter().all(|&b| is_authority_byte(b)) => {
            // Authority bytes are all ASCII.
            Some(std::str::from_utf8(h).map_err(|_| HostError::Invalid)?)
        }
        Some(_) => return Err(HostError::Invalid),
        None => None,
    };
    Ok(target_authority.or(host))
}

/// The bytes of `uri-host [ ":" port ]` (RFC 3986 §3.2.2: reg-name, IP literal, port).
fn is_authority_byte(b: u8) -> bool {
    AUTHORITY_BYTES[usize::from(b)]
}

/// [`is_authority_byte`] as a table: it is asked of every byte of every public `Host`.
const AUTHORITY_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=:[]%";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

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
    /// The `ALPN` list sent with a `ptth` offer, most preferred first; not sent when empty.
    /// Default: empty ([`UpgradeRequest::transposed`] sets `h2, http/1.1`).
    pub alpn: Vec<AlpnId>,
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
            alpn: Vec::new(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// A `GET /` offering `ptth` (draft-kazuho-ptth-ptth) with `ALPN: h2, http%2F1.1` to
    /// `host`. Set `target` to [`origin::well_known_target`] to register origins.
    pub fn transposed(host: HeaderValue) -> Self {
        UpgradeRequest {
            method: Method::GET,
            protocols: vec![Protocol::Transposed],
            alpn: vec![AlpnId::h2(), AlpnId::http11()],
            ..UpgradeRequest::new(host)
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
        if !self.alpn.is_empty() {
            out.extend_from_slice(b"ALPN: ");
            out.extend_from_slice(alpn::encode_list(&self.alpn).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
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
        ALPN,
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

    fn offer(raw: &[u8]) -> Result<OfferTerms, OfferError> {
        check_offer(&parse_ok(raw).0, &OfferRules::with_transposed())
    }

    #[test]
    fn the_ptth_drafts_requests_are_offers() {
        // -00 figure 1: a deployment-specific target, so no origins.
        let terms = offer(
            b"GET /reverse-endpoint HTTP/1.1\r\nHost: example.com\r\nConnection: upgrade\r\n\
              Upgrade: ptth\r\nAuthorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\
              ALPN: h2, http%2F1.1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(terms.protocol, Protocol::Transposed);
        assert_eq!(terms.token, "ptth");
        assert_eq!(terms.alpn, Some(AlpnId::h2()));
        assert!(terms.origins.is_empty());
        // -01 figure: h3qx first, which this listener does not run; h2 is chosen.
        let terms = offer(
            b"GET /.well-known/ptth/https%3A%2F%2Fbackend.example.com/ HTTP/1.1\r\n\
              Host: proxy.example.com\r\nConnection: upgrade\r\nUpgrade: ptth\r\n\
              ALPN: h3qx, h2, http%2F1.1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(terms.alpn, Some(AlpnId::h2()));
        assert_eq!(terms.origins.len(), 1);
        assert_eq!(terms.origins[0].to_string(), "https://backend.example.com");
        // The 2009 protocols never get ALPN terms, whatever fields they carry.
        let old = offer(
            b"POST /.well-known/ptth/x/ HTTP/1.1\r\nHost: h\r\nUpgrade: PTTH/1.0\r\n\
              Connection: Upgrade\r\nALPN: nonsense/\r\n\r\n",
        )
        .unwrap();
        assert_eq!((old.alpn, old.origins.len()), (None, 0));
    }

    #[test]
    fn the_transposed_request_encodes_the_drafts_fields() {
        let mut r = UpgradeRequest::transposed(HeaderValue::from_static("proxy.example"));
        r.headers
            .insert("alpn", HeaderValue::from_static("injected"));
        assert_eq!(
            r.encode(),
            b"GET / HTTP/1.1\r\nHost: proxy.example\r\nUpgrade: ptth\r\nConnection: Upgrade\r\n\
              ALPN: h2, http%2F1.1\r\nContent-Length: 0\r\n\r\n"
        );
        let terms = offer(&r.encode()).unwrap();
        assert_eq!(terms.alpn, Some(AlpnId::h2()));
    }
}
