//! Typed errors for both roles.
//!
//! The peer-caused problems are split by what went wrong, rustls-style, so a caller (or a test)
//! can match on them: [`HeadError`] (bytes that are not a valid HTTP/1.1 head), [`BodyError`]
//! (a bad or oversize handshake body), [`OfferError`] (a valid request that is not a PTTH offer),
//! [`SwitchError`] (a `101` the dialer must not accept) and [`Refusal`] (a final answer other
//! than `101`). [`Error`] wraps them with the I/O, timeout and hyper failures around them.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// A head (start line and fields) that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// The head did not end within `limit` bytes.
    #[error("head larger than {limit} bytes")]
    TooLarge {
        /// The byte limit in force.
        limit: usize,
    },
    /// The request line alone did not end within `limit` bytes.
    #[error("request line longer than {limit} bytes")]
    LineTooLong {
        /// The byte limit in force.
        limit: usize,
    },
    /// The head has more than `limit` fields.
    #[error("more than {limit} header fields")]
    TooManyHeaders {
        /// The field limit in force.
        limit: usize,
    },
    /// The bytes are not HTTP/1.x syntax (bad token, bare CR, whitespace before a colon, ...).
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    /// Valid syntax, but a field combination RFC 9112 forbids (CL with TE, differing CLs, ...).
    #[error("invalid head: {0}")]
    Invalid(&'static str),
    /// A transfer coding other than `chunked` (RFC 9112 §6.1 lets a server answer 501).
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
}

impl HeadError {
    /// The status a server answers this error with (RFC 9112 §3, RFC 6585 §5).
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge { .. } | HeadError::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::LineTooLong { .. } => StatusCode::URI_TOO_LONG,
            HeadError::Malformed(_) | HeadError::Invalid(_) => StatusCode::BAD_REQUEST,
            HeadError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

impl From<httparse::Error> for HeadError {
    fn from(e: httparse::Error) -> Self {
        HeadError::Malformed(match e {
            httparse::Error::HeaderName => "invalid header name",
            httparse::Error::HeaderValue => "invalid header value",
            httparse::Error::NewLine => "invalid line ending",
            httparse::Error::Status => "invalid status code",
            httparse::Error::Token => "invalid token",
            httparse::Error::Version => "invalid HTTP version",
            // The caller maps TooManyHeaders to its own variant before this; keep a sane text.
            httparse::Error::TooManyHeaders => "too many headers",
        })
    }
}

/// A handshake body (the upgrade request's, or a refusal's) that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// More than `limit` bytes.
    #[error("body larger than {limit} bytes")]
    TooLarge {
        /// The byte limit in force.
        limit: usize,
    },
    /// Invalid chunked framing.
    #[error("invalid chunked body: {0}")]
    BadChunk(&'static str),
}

/// A well-formed request that the listener will not switch on (RFC 9110 §7.8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    /// HTTP/1.0 requests never upgrade; RFC 9110 §7.8 says to ignore their `Upgrade`.
    #[error("HTTP/1.0 request: Upgrade is ignored")]
    Http10,
    /// No `Upgrade` member names a PTTH version this listener accepts.
    #[error("no accepted PTTH protocol in Upgrade")]
    NoProtocol,
    /// `Upgrade` is there but `Connection` lacks `upgrade` (RFC 9110 §7.8, draft §3.2).
    #[error("Connection does not list upgrade")]
    NoConnectionUpgrade,
    /// The body framing cannot be trusted (RFC 9112 §6.1, §6.3): an offer framed ambiguously is
    /// never switched (protocol-notes §10 #13).
    #[error("upgrade request framing: {0}")]
    Framing(#[source] HeadError),
    /// No `Host` on an HTTP/1.1 request, several, or an invalid one (RFC 9112 §3.2).
    #[error("upgrade request Host: {0}")]
    BadHost(#[source] HostError),
    /// The method is not one the listener accepts for an upgrade.
    #[error("method not accepted for an upgrade")]
    Method,
    /// The client sent bytes after its request before it saw the `101` (RFC 9931).
    #[error("data sent before the 101 (RFC 9931)")]
    EarlyData,
    /// An `Upgrade: ptth` offer without the `ALPN` field its draft requires.
    #[error(
        "Upgrade: ptth needs an ALPN field naming the protocols to run (e.g. ALPN: h2, http%2F1.1)"
    )]
    NoAlpn,
    /// An `ALPN` field that cannot be read.
    #[error("bad ALPN field: {0}")]
    Alpn(#[source] crate::proto::alpn::AlpnError),
    /// An `ALPN` field naming nothing this listener runs.
    #[error("ALPN offers {offered}, none of which this listener runs (it runs {supported})")]
    NoCommonAlpn {
        /// The offered identifiers, as sent.
        offered: Box<str>,
        /// The listener's identifiers.
        supported: Box<str>,
    },
    /// A `/.well-known/ptth/` target that does not name a valid list of origins.
    #[error("bad origin list in the target: {0}")]
    Origin(#[source] crate::proto::origin::OriginError),
}

impl OfferError {
    /// The status the listener answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            OfferError::NoProtocol | OfferError::NoConnectionUpgrade | OfferError::Http10 => {
                StatusCode::UPGRADE_REQUIRED
            }
            OfferError::Method => StatusCode::METHOD_NOT_ALLOWED,
            OfferError::Framing(e) => e.status(),
            OfferError::BadHost(_)
            | OfferError::EarlyData
            | OfferError::NoAlpn
            | OfferError::Alpn(_)
            | OfferError::NoCommonAlpn { .. }
            | OfferError::Origin(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the connection must be closed after the refusal: after a framing error the end
    /// of the request is unknown (RFC 9112 §6.3), and a bad `Host` is a malformed request
    /// another hop may have read differently. Other refusals leave the connection usable.
    pub fn must_close(&self) -> bool {
        matches!(
            self,
            OfferError::Framing(_) | OfferError::BadHost(_) | OfferError::EarlyData
        )
    }
}

/// A request whose `Host` breaks RFC 9112 §3.2: a server answers `400`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// More than one `Host` field line.
    #[error("more than one Host field")]
    Repeated,
    /// An HTTP/1.1 request without `Host`.
    #[error("an HTTP/1.1 request needs a Host field")]
    Missing,
    /// A `Host` value that is not `host[:port]`.
    #[error("invalid Host value")]
    Invalid,
}

/// A `101 Switching Protocols` the dialer must reject (RFC 9110 §7.8, §15.2.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SwitchError {
    /// The 101 is not HTTP/1.1.
    #[error("101 is not HTTP/1.1")]
    NotHttp11,
    /// The 101 has no `Upgrade` field.
    #[error("101 without Upgrade")]
    MissingUpgrade,
    /// The 101 switches to something the dialer did not offer.
    #[error("101 switches to {got:?}, which was not offered")]
    NotOffered {
        /// The `Upgrade` value of the 101, lossily decoded.
        got: String,
    },
    /// The 101 lacks `Connection: upgrade`.
    #[error("101 without Connection: upgrade")]
    MissingConnection,
    /// A `101` to `ptth` without an `ALPN` field naming the chosen protocol.
    #[error("101 to ptth without ALPN")]
    MissingAlpn,
    /// A `101` to `ptth` whose `ALPN` cannot be read.
    #[error("101 with a bad ALPN field: {0}")]
    BadAlpn(#[source] crate::proto::alpn::AlpnError),
    /// A `101` to `ptth` whose `ALPN` is not exactly one identifier the dialer offered.
    #[error("101 chose ALPN {got:?}, which is not one protocol the dialer offered")]
    AlpnNotOffered {
        /// The `ALPN` value of the 101, lossily decoded.
        got: String,
    },
}

/// A final answer other than `101` to the upgrade request: the listener said no.
///
/// Deployed relays use refusals as signals (Yaler: `204` "no client yet, ask again", `307`
/// "another node", `429`/`503` "back off"), so the caller gets what it needs to act on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status code.
    pub status: StatusCode,
    /// The response fields (all of them; see [`Refusal::retry_after`] and friends).
    pub headers: HeaderMap,
    /// The body, cut at [`crate::Limits::max_refusal_body`].
    pub body: Bytes,
    /// Whether the body was longer than what is kept in `body`.
    pub body_truncated: bool,
}

impl Refusal {
    /// `Retry-After` as a delay, when it is given in seconds (the HTTP-date form is ignored).
    pub fn retry_after(&self) -> Option<Duration> {
        let v = self.headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
        v.trim().parse::<u64>().ok().map(Duration::from_secs)
    }

    /// `Location`, for `3xx` refusals.
    pub fn location(&self) -> Option<&str> {
        self.headers.get(http::header::LOCATION)?.to_str().ok()
    }

    /// `WWW-Authenticate`, for `401` refusals.
    pub fn www_authenticate(&self) -> Option<&str> {
        self.headers
            .get(http::header::WWW_AUTHENTICATE)?
            .to_str()
            .ok()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upgrade refused with {}", self.status)?;
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if !text.is_empty() {
            let short: String = text.chars().take(200).collect();
            write!(f, ": {short}")?;
        }
        Ok(())
    }
}

/// Every failure of a PTTH handshake or reversed connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the stream failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The peer closed the stream before `phase` was complete.
    #[error("peer closed the connection during {phase}")]
    Closed {
        /// What was being done.
        phase: &'static str,
    },
    /// A deadline from [`crate::Limits`] passed.
    #[error("{phase} timed out after {after:?}")]
    Timeout {
        /// What was being waited for.
        phase: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// The peer sent a head that is not valid HTTP/1.1.
    #[error("bad head from peer: {0}")]
    Head(#[from] HeadError),
    /// The peer sent a bad handshake body.
    #[error("bad body from peer: {0}")]
    Body(#[from] BodyError),
    /// The request was not an acceptable PTTH upgrade offer.
    #[error("not a PTTH upgrade: {0}")]
    Offer(#[from] OfferError),
    /// The `101` was not one the dialer may accept.
    #[error("bad 101 switch: {0}")]
    Switch(#[from] SwitchError),
    /// The listener refused the upgrade.
    #[error("{0}")]
    Refused(Box<Refusal>),
    /// The TLS handshake failed; it says why in plain words, and [`crate::tls::TlsError::kind`]
    /// says what kind of failure it was.
    #[error("{0}")]
    Tls(#[source] Box<crate::tls::TlsError>),
    /// A reversed client was started for the other inner protocol than the offer chose (an
    /// HTTP/1.1 client on `ALPN: h2`, or the reverse).
    #[error("the offer chose {chosen}: start the matching reversed client")]
    InnerProtocol {
        /// The inner protocol the offer chose.
        chosen: Box<str>,
    },
    /// hyper failed on the reversed connection.
    #[error("{context}: {source}")]
    Hyper {
        /// What was being done.
        context: &'static str,
        /// The hyper error.
        #[source]
        source: hyper::Error,
    },
}

impl From<crate::tls::TlsError> for Error {
    fn from(e: crate::tls::TlsError) -> Self {
        Error::Tls(Box::new(e))
    }
}

impl Error {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { context, source }
    }

    pub(crate) fn hyper(context: &'static str) -> impl FnOnce(hyper::Error) -> Error {
        move |source| Error::Hyper { context, source }
    }

    /// The refusal, when the listener answered with something other than `101`.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// Whether a deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_and_small() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
        // Refusal is boxed so that the happy path does not carry a HeaderMap around.
        assert!(std::mem::size_of::<Error>() <= 40);
    }

    #[test]
    fn refusal_exposes_signals() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        headers.insert("location", "http://127.0.0.1:9/x".parse().unwrap());
        let r = Refusal {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers,
            body: Bytes::from_static(b"slow down\n"),
            body_truncated: false,
        };
        assert_eq!(r.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(r.location(), Some("http://127.0.0.1:9/x"));
        assert_eq!(
            r.to_string(),
            "upgrade refused with 429 Too Many Requests: slow down"
        );
    }
}
