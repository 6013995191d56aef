//! The relay's own hyper answers, to agents' claims: the body type, and the plain-text refusals
//! (400, 401, 403, 409, 429, 503). Public requests are answered by the engine (`forward.rs`).
//!
//! A `503` or `429` always carries `Retry-After` ([`RETRY_AFTER_SECS`]): both mean "not now",
//! and the mapping of each refusal to its status is the error's own `status()`.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use super::RETRY_AFTER_SECS;

/// Body type of responses the relay sends.
pub(crate) type RelayBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// A plain-text response; a `503` or `429` gets `Retry-After`.
pub(crate) fn text(status: StatusCode, msg: impl Into<String>) -> Response<RelayBody> {
    let mut body = msg.into();
    body.push('\n');
    let mut res = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        h.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    res
}

/// An error's answer: its `status()` and its message.
pub(crate) fn refusal(status: StatusCode, e: &dyn std::error::Error) -> Response<RelayBody> {
    text(status, e.to_string())
}
