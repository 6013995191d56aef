//! One reader for HTTP/1.1 heads, requests and responses alike.
//!
//! [`Request::parse`] and [`Response::parse`] find the end of a head at the front of a buffer
//! with one httparse scan, hold it to [`Limits`] (head bytes, field count), and borrow the start
//! line and the fields from the buffer: no allocation and no copy (the field slots live on the
//! stack, see [`Slots`]). [`Request::framing`] and [`Response::framing`] then say how the body
//! is delimited (RFC 9112 §6), and [`Request::to_parts`] / [`Response::to_head`] build the
//! owned `http` types for callers that want them (the handshake, through
//! [`super::request::parse`] and [`super::response::parse`]). The dialer's head clock follows
//! every reversed request with the scan and the framing alone.
//!
//! Parsing is strict RFC 9112 (httparse's defaults): bare CR, whitespace before a colon,
//! obs-fold and NUL are syntax errors. The framing rules are written once, for both field
//! sources (the borrowed fields of a scan, and a `HeaderMap`): `Content-Length` with
//! `Transfer-Encoding`, differing or non-numeric `Content-Length` values, and a
//! `Transfer-Encoding` that does not end in `chunked` are framing errors.

use std::mem::MaybeUninit;

use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Uri, Version, request};

use super::body::Framing;
use super::response::ResponseHead;
use super::tokens;
use crate::error::HeadError;
use crate::limits::Limits;

/// How many fields [`Slots`] holds on the stack; a larger [`Limits::max_headers`] puts them on
/// the heap. Above the default ([`crate::limits::DEFAULT_MAX_HEADERS`], 100) and hyper's.
pub const STACK_FIELDS: usize = 128;

/// The most digits a `Content-Length` may have: every 19-digit number fits in a `u64`.
const MAX_LENGTH_DIGITS: usize = 19;

/// Room for the fields of one head while it is scanned.
///
/// Make one per scan, next to the buffer ([`Slots::new`] costs nothing: the stack slots are
/// left uninitialised until httparse fills them). Up to [`STACK_FIELDS`] fields it never
/// allocates.
pub struct Slots<'b> {
    stack: [MaybeUninit<httparse::Header<'b>>; STACK_FIELDS],
    heap: Vec<MaybeUninit<httparse::Header<'b>>>,
}

impl<'b> Slots<'b> {
    /// Empty slots.
    pub fn new() -> Self {
        Slots {
            stack: [const { MaybeUninit::uninit() }; STACK_FIELDS],
            heap: Vec::new(),
        }
    }

    /// Exactly `limits.max_headers` slots: one more field is httparse's `TooManyHeaders`.
    fn for_limits(&mut self, limits: &Limits) -> &mut [MaybeUninit<httparse::Header<'b>>] {
        if limits.max_headers <= STACK_FIELDS {
            &mut self.stack[..limits.max_headers]
        } else {
            self.heap
                .resize_with(limits.max_headers, MaybeUninit::uninit);
            &mut self.heap[..]
        }
    }
}

impl Default for Slots<'_> {
    fn default() -> Self {
        Slots::new()
    }
}

/// The fields of a scanned head, in order, borrowed from the buffer.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'h, 'b>(&'h [httparse::Header<'b>]);

impl<'h, 'b> Fields<'h, 'b> {
    /// Every field line as (name, value), in order; names as sent (any case).
    pub fn iter(self) -> impl Iterator<Item = (&'b str, &'b [u8])> {
        self.0.iter().map(|h| (h.name, h.value))
    }

    /// The values of every field line named `name` (ASCII case-insensitive), in order.
    pub fn get_all(self, name: &str) -> impl Iterator<Item = &'b [u8]> {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The fields as a `HeaderMap`, keeping repeated fields as separate entries.
    pub fn to_header_map(self) -> Result<HeaderMap, HeadError> {
        let mut map = HeaderMap::with_capacity(self.0.len());
        for (name, value) in self.iter() {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HeadError::Malformed("invalid header name"))?;
            let value = HeaderValue::from_bytes(value)
                .map_err(|_| HeadError::Malformed("invalid header value"))?;
            map.append(name, value);
        }
        Ok(map)
    }
}

/// A request head at the front of a buffer, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'h, 'b> {
    /// The method, as sent (a valid token; not yet an `http::Method`).
    pub method: &'b str,
    /// The request target, as sent (not yet an `http::Uri`).
    pub target: &'b str,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The fields.
    pub fields: Fields<'h, 'b>,
    /// The head's length in bytes, empty line included: the body starts here.
    pub len: usize,
}

impl<'h, 'b> Request<'h, 'b> {
    /// Scan one request head from the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed. A head that has not ended within
    /// [`Limits::max_head_bytes`] is [`HeadError::TooLarge`], or [`HeadError::LineTooLong`]
    /// while still in the request line (so a server can answer `431` or `414`); more than
    /// [`Limits::max_headers`] fields is [`HeadError::TooManyHeaders`].
    pub fn parse(
        buf: &'b [u8],
        slots: &'h mut Slots<'b>,
        limits: &Limits,
    ) -> Result<Option<Self>, HeadError> {
        let mut req = httparse::Request::new(&mut []);
        let outcome = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            slots.for_limits(limits),
        );
        let Some(len) = bounded(outcome, buf, limits, StartLine::Request)? else {
            return Ok(None);
        };
        Ok(Some(Request {
            method: req.method.unwrap_or_default(),
            target: req.path.unwrap_or_default(),
            version: version(req.version),
            fields: Fields(req.headers),
            len,
        }))
    }

    /// How the request's body is delimited (RFC 9112 §6.3), or why it cannot be trusted.
    pub fn framing(&self) -> Result<Framing, HeadError> {
        FramingFields::of_fields(self.fields).request()
    }

    /// How a forwarding hop reads the body of this request, and whether the head carried both
    /// `Content-Length` and `Transfer-Encoding`: then the coding frames it (RFC 9112 §6.1 lets
    /// a server do that, if it closes the connection afterwards; decisions D16). Otherwise
    /// [`Request::framing`].
    pub fn forward_framing(&self) -> Result<(Framing, bool), HeadError> {
        let f = FramingFields::of_fields(self.fields);
        if f.coding_line && f.length_line {
            return Ok((f.coding()?, true));
        }
        Ok((f.request()?, false))
    }

    /// The head as `http` types: method, target and fields are checked as `http` checks them.
    pub fn to_parts(self) -> Result<request::Parts, HeadError> {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = Method::from_bytes(self.method.as_bytes())
            .map_err(|_| HeadError::Malformed("invalid method"))?;
        parts.uri = self
            .target
            .parse::<Uri>()
            .map_err(|_| HeadError::Malformed("invalid request target"))?;
        parts.version = self.version;
        parts.headers = self.fields.to_header_map()?;
        Ok(parts)
    }
}

/// A response head at the front of a buffer, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct Response<'h, 'b> {
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The status code.
    pub status: StatusCode,
    /// The reason phrase, as sent (may be empty).
    pub reason: &'b str,
    /// The fields.
    pub fields: Fields<'h, 'b>,
    /// The head's length in bytes, empty line included: the body starts here.
    pub len: usize,
}

impl<'h, 'b> Response<'h, 'b> {
    /// Scan one response head from the front of `buf`; `Ok(None)` means more bytes are needed.
    /// The caps are those of [`Request::parse`], except that a long status line is
    /// [`HeadError::TooLarge`] like the rest of the head.
    pub fn parse(
        buf: &'b [u8],
        slots: &'h mut Slots<'b>,
        limits: &Limits,
    ) -> Result<Option<Self>, HeadError> {
        let mut res = httparse::Response::new(&mut []);
        let outcome = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            slots.for_limits(limits),
        );
        let Some(len) = bounded(outcome, buf, limits, StartLine::Response)? else {
            return Ok(None);
        };
        let status = StatusCode::from_u16(res.code.unwrap_or_default())
            .map_err(|_| HeadError::Malformed("invalid status code"))?;
        Ok(Some(Response {
            version: version(res.version),
            status,
            reason: res.reason.unwrap_or_default(),
            fields: Fields(res.headers),
            len,
        }))
    }

    /// How the body of a response to the upgrade request is delimited (RFC 9112 §6.3). The
    /// request is never HEAD or CONNECT, so only the status decides the no-body cases (`1xx`,
    /// `204`, `304`); with no length, or a last coding that is not chunked, the body ends at
    /// close.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn framing(&self) -> Result<Framing, HeadError> {
        FramingFields::of_fields(self.fields).response(self.status)
    }

    /// How a forwarding hop reads the body of this response to a request (RFC 9112 §6.3), and
    /// whether the head carried both `Content-Length` and `Transfer-Encoding`.
    ///
    /// A response to `HEAD` has no body whatever its fields say. A response with both length
    /// fields is framed by `Transfer-Encoding` (§6.3 item 3: it overrides), its length is not
    /// to be forwarded, and the connection it came on must not be reused (decision D20).
    pub fn forward_framing(&self, head_request: bool) -> Result<(Framing, bool), HeadError> {
        let f = FramingFields::of_fields(self.fields);
        if head_request {
            return Ok((Framing::Empty, false));
        }
        let both = f.coding_line && f.length_line;
        if matches!(self.status.as_u16(), 204 | 304) {
            // §6.3 item 1 comes before item 3: these never have a body, whatever the fields
            // say. Both length fields still mean a confused next hop whose connection is not
            // to be reused (decision D79).
            return Ok((Framing::Empty, both));
        }
        if both && !self.status.is_informational() {
            return Ok((f.coding().unwrap_or(Framing::UntilClose), true));
        }
        Ok((f.response(self.status)?, false))
    }

    /// The head as an owned [`ResponseHead`].
    pub fn to_head(self) -> Result<ResponseHead, HeadError> {
        Ok(ResponseHead {
            version: self.version,
            status: self.status,
            headers: self.fields.to_header_map()?,
        })
    }
}

fn version(minor: Option<u8>) -> Version {
    match minor {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    }
}

/// Which start line a head has: only a request line has its own "too long" error (`414`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartLine {
    Request,
    Response,
}

/// httparse's outcome for the head at the front of `buf`, held to `limits`: the head's length
/// when it is complete, `None` when more bytes may complete it.
fn bounded(
    outcome: httparse::Result<usize>,
    buf: &[u8],
    limits: &Limits,
    start: StartLine,
) -> Result<Option<usize>, HeadError> {
    let len = match outcome {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            return Err(too_large(buf, limits, start));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        Err(e) => return Err(e.into()),
    };
    if len > limits.max_head_bytes {
        return Err(too_large(buf, limits, start));
    }
    Ok(Some(len))
}

fn too_large(buf: &[u8], limits: &Limits, start: StartLine) -> HeadError {
    let limit = limits.max_head_bytes;
    let line_ended = buf[..buf.len().min(limit)].contains(&b'\n');
    if start == StartLine::Request && !line_ended {
        HeadError::LineTooLong { limit }
    } else {
        HeadError::TooLarge { limit }
    }
}

/// The fields that frame a body (RFC 9112 §6): every `Content-Length` and `Transfer-Encoding`
/// line of one head, gathered from either field source and judged by one set of rules.
#[derive(Debug)]
pub(crate) struct FramingFields<'a> {
    /// `Content-Length` so far; the first bad or differing value stays as the error.
    length: Result<Option<u64>, HeadError>,
    /// Whether a `Content-Length` line was seen (one with no value is an error too).
    length_line: bool,
    /// Whether a `Transfer-Encoding` line was seen.
    coding_line: bool,
    /// How many transfer codings were listed, and the last one.
    codings: usize,
    last_coding: &'a [u8],
}

impl<'a> FramingFields<'a> {
    fn new() -> Self {
        FramingFields {
            length: Ok(None),
            length_line: false,
            coding_line: false,
            codings: 0,
            last_coding: b"",
        }
    }

    /// The framing fields of a `HeaderMap`.
    pub(crate) fn of_map(headers: &'a HeaderMap) -> Self {
        let mut f = FramingFields::new();
        for v in headers.get_all(CONTENT_LENGTH) {
            f.add_length(v.as_bytes());
        }
        for v in headers.get_all(TRANSFER_ENCODING) {
            f.add_coding(v.as_bytes());
        }
        f
    }

    /// The framing fields of a scanned head.
    fn of_fields(fields: Fields<'_, 'a>) -> Self {
        let mut f = FramingFields::new();
        for (name, value) in fields.iter() {
            if name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str()) {
                f.add_length(value);
            } else if name.eq_ignore_ascii_case(TRANSFER_ENCODING.as_str()) {
                f.add_coding(value);
            }
        }
        f
    }

    /// One `Content-Length` line. Repeated equal values are one value (RFC 9112 §6.3 item 5);
    /// differing or non-numeric values are an error.
    fn add_length(&mut self, value: &[u8]) {
        self.length_line = true;
        let Ok(found) = &mut self.length else {
            return;
        };
        for member in tokens::list_members(value) {
            let Some(n) = plain_length(member) else {
                self.length = Err(HeadError::Invalid("invalid Content-Length"));
                return;
            };
            match *found {
                Some(prev) if prev != n => {
                    self.length = Err(HeadError::Invalid("differing Content-Length values"));
                    return;
                }
                _ => *found = Some(n),
            }
        }
    }

    fn add_coding(&mut self, value: &'a [u8]) {
        self.coding_line = true;
        for coding in tokens::list_members(value) {
            self.codings += 1;
            self.last_coding = coding;
        }
    }

    /// The `Content-Length`, if any.
    fn length(&self) -> Result<Option<u64>, HeadError> {
        match &self.length {
            Ok(None) if self.length_line => Err(HeadError::Invalid("empty Content-Length")),
            other => other.clone(),
        }
    }

    /// `chunked` must be the last coding; any other coding is not implemented here.
    fn coding(&self) -> Result<Framing, HeadError> {
        let chunked = self.last_coding.eq_ignore_ascii_case(b"chunked");
        match self.codings {
            1 if chunked => Ok(Framing::Chunked),
            2.. if chunked => Err(HeadError::UnsupportedCoding),
            _ => Err(HeadError::Invalid(
                "Transfer-Encoding does not end in chunked",
            )),
        }
    }

    /// How a request's body is delimited (RFC 9112 §6.3): no length is no body.
    pub(crate) fn request(&self) -> Result<Framing, HeadError> {
        let length = self.length()?;
        if self.coding_line {
            if length.is_some() {
                // RFC 9112 §6.1: "ought to be handled as an error"; it is the classic
                // smuggling vector, so it always is here.
                return Err(HeadError::Invalid(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            return self.coding();
        }
        Ok(match length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        })
    }

    /// How the body of a response with `status` to the upgrade request is delimited: the rules
    /// of [`Response::framing`].
    pub(crate) fn response(&self, status: StatusCode) -> Result<Framing, HeadError> {
        let s = status;
        if s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED {
            return Ok(Framing::Empty);
        }
        let length = self.length()?;
        if self.coding_line {
            if length.is_some() {
                return Err(HeadError::Invalid(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            return Ok(self.coding().unwrap_or(Framing::UntilClose));
        }
        Ok(match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        })
    }
}

/// One `Content-Length` member that is a plain decimal number.
fn plain_length(member: &[u8]) -> Option<u64> {
    if member.is_empty()
        || member.len() > MAX_LENGTH_DIGITS
        || !member.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    std::str::from_utf8(member).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    /// Scan `raw` as a request and give (framing by the scan, framing by the HeaderMap).
    fn both_framings(raw: &[u8]) -> (Result<Framing, HeadError>, Result<Framing, HeadError>) {
        let mut slots = Slots::new();
        let head = Request::parse(raw, &mut slots, &limits()).unwrap().unwrap();
        let map = head.to_parts().unwrap().headers;
        (head.framing(), FramingFields::of_map(&map).request())
    }

    #[test]
    fn partial_heads_need_more() {
        let mut slots = Slots::new();
        let partial = b"POST / HTTP/1.1\r\nHost: x\r\n";
        assert!(matches!(
            Request::parse(partial, &mut slots, &limits()),
            Ok(None)
        ));
        let mut slots = Slots::new();
        assert!(matches!(
            Request::parse(b"", &mut slots, &limits()),
            Ok(None)
        ));
        let mut slots = Slots::new();
        assert!(matches!(
            Response::parse(b"HTTP/1.1 200 OK\r\n", &mut slots, &limits()),
            Ok(None)
        ));
    }

    #[test]
    fn oversize_heads_are_refused() {
        let mut l = limits();
        l.max_head_bytes = 64;
        let line = [b"GET /".as_slice(), &[b'a'; 100]].concat();
        let mut slots = Slots::new();
        assert_eq!(
            Request::parse(&line, &mut slots, &l).unwrap_err(),
            HeadError::LineTooLong { limit: 64 }
        );
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        head.extend(std::iter::repeat_n(b"X: y\r\n".as_slice(), 20).flatten());
        let mut slots = Slots::new();
        assert_eq!(
            Request::parse(&head, &mut slots, &l).unwrap_err(),
            HeadError::TooLarge { limit: 64 }
        );
        // A response has no 414: a long status line is a large head.
        let status = [b"HTTP/1.1 200 ".as_slice(), &[b'a'; 100]].concat();
        let mut slots = Slots::new();
        assert_eq!(
            Response::parse(&status, &mut slots, &l).unwrap_err(),
            HeadError::TooLarge { limit: 64 }
        );
    }

    #[test]
    fn field_count_is_capped_on_the_stack_and_on_the_heap() {
        for max_headers in [2, STACK_FIELDS + 2] {
            let l = Limits {
                max_headers,
                max_head_bytes: 64 * 1024,
                ..limits()
            };
            let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
            raw.extend(std::iter::repeat_n(b"X: y\r\n".as_slice(), max_headers).flatten());
            let mut exact = raw.clone();
            exact.extend_from_slice(b"\r\n");
            let mut slots = Slots::new();
            let head = Request::parse(&exact, &mut slots, &l).unwrap().unwrap();
            assert_eq!(
                (head.fields.iter().count(), head.len),
                (max_headers, exact.len())
            );
            raw.extend_from_slice(b"X: y\r\n\r\n");
            let mut slots = Slots::new();
            assert_eq!(
                Request::parse(&raw, &mut slots, &l).unwrap_err(),
                HeadError::TooManyHeaders { limit: max_headers }
            );
        }
    }

    #[test]
    fn scans_borrow_the_start_line_and_fields() {
        let raw = b"POST /a?b HTTP/1.0\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody";
        let mut slots = Slots::new();
        let head = Request::parse(raw, &mut slots, &limits()).unwrap().unwrap();
        assert_eq!(
            (head.method, head.target, head.version, head.len),
            ("POST", "/a?b", Version::HTTP_10, raw.len() - 4)
        );
        assert_eq!(head.fields.get_all("x-a").collect::<Vec<_>>(), [b"1", b"2"]);
        let parts = head.to_parts().unwrap();
        assert_eq!(parts.uri, "/a?b");
        assert_eq!(parts.headers.get_all("x-a").iter().count(), 2);

        let raw = b"HTTP/1.1 401 No\r\nWWW-Authenticate: Bearer\r\nContent-Length: 2\r\n\r\nno";
        let mut slots = Slots::new();
        let head = Response::parse(raw, &mut slots, &limits())
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::UNAUTHORIZED);
        assert_eq!(head.framing(), Ok(Framing::Length(2)));
        assert_eq!(
            head.to_head().unwrap().headers["www-authenticate"],
            "Bearer"
        );
        let mut slots = Slots::new();
        assert_eq!(
            Response::parse(b"HTTP/1.1 000 X\r\n\r\n", &mut slots, &limits()).unwrap_err(),
            HeadError::Malformed("invalid status code")
        );
    }

    #[test]
    fn framing_rules() {
        let f = |raw: &[u8]| {
            let (scanned, mapped) = both_framings(raw);
            assert_eq!(scanned, mapped, "{}", String::from_utf8_lossy(raw));
            scanned
        };
        assert_eq!(f(b"GET / HTTP/1.1\r\n\r\n"), Ok(Framing::Empty));
        assert_eq!(
            f(b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            Ok(Framing::Length(3))
        );
        assert_eq!(
            f(b"GET / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n"),
            Ok(Framing::Length(3))
        );
        assert!(f(b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n").is_err());
        assert!(f(b"GET / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n").is_err());
        assert!(f(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(f(b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n").is_err());
        assert_eq!(
            f(b"GET / HTTP/1.1\r\nContent-Length:\r\n\r\n"),
            Err(HeadError::Invalid("empty Content-Length"))
        );
        assert_eq!(
            f(b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            Err(HeadError::Invalid("invalid Content-Length"))
        );
        assert_eq!(
            f(b"GET / HTTP/1.1\r\nContent-Length: 9999999999999999999\r\n\r\n"),
            Ok(Framing::Length(9_999_999_999_999_999_999))
        );
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
            f(b"GET / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n"),
            Err(HeadError::Invalid(
                "Transfer-Encoding does not end in chunked"
            ))
        );
        assert_eq!(
            f(b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(HeadError::UnsupportedCoding)
        );
        assert_eq!(
            f(b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"),
            Err(HeadError::UnsupportedCoding)
        );
        assert_eq!(
            f(b"GET / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
    }

    #[test]
    fn response_framing_rules() {
        let f = |raw: &[u8]| {
            let mut slots = Slots::new();
            let head = Response::parse(raw, &mut slots, &limits())
                .unwrap()
                .unwrap();
            let owned = head.to_head().unwrap();
            let mapped = FramingFields::of_map(&owned.headers).response(owned.status);
            assert_eq!(head.framing(), mapped, "{}", String::from_utf8_lossy(raw));
            mapped
        };
        assert_eq!(f(b"HTTP/1.1 204 \r\n\r\n"), Ok(Framing::Empty));
        assert_eq!(
            f(b"HTTP/1.1 304 X\r\nContent-Length: 4\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            f(b"HTTP/1.1 401 No\r\nContent-Length: 4\r\n\r\n"),
            Ok(Framing::Length(4))
        );
        assert_eq!(f(b"HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::UntilClose));
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Ok(Framing::UntilClose)
        );
        assert!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n")
                .is_err()
        );
    }
}
