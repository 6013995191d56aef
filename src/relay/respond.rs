//! The relay's own answers: the body type of every response it sends to a public client or an
//! agent, and the plain-text refusals (400, 404, 409, 429, 502, 503, 504).
//!
//! A `503` or `429` always carries `Retry-After` ([`RETRY_AFTER_SECS`]): both mean "not now",
//! and the mapping of each refusal to its status is the error's own `status()`.

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

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

/// `res` with `Connection: close`, so that hyper closes the connection after it.
pub(crate) fn closing(mut res: Response<RelayBody>) -> Response<RelayBody> {
    res.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    res
}

/// `404` for a request that names no agent: how to name one, with the relay's `--domain`.
pub(crate) fn no_name(domain: &str) -> Response<RelayBody> {
    text(
        StatusCode::NOT_FOUND,
        format!("no agent name in the request: use http://NAME.{domain}/ or /NAME/"),
    )
}

/// `502`: the agent's connection failed (before or during its response head).
pub(crate) fn agent_gone() -> Response<RelayBody> {
    text(StatusCode::BAD_GATEWAY, "the agent went away")
}

/// `504`: no response head within the response timeout after the request body ended.
pub(crate) fn agent_timeout() -> Response<RelayBody> {
    text(
        StatusCode::GATEWAY_TIMEOUT,
        "the agent did not answer in time",
    )
}

/// `502`: a `101` to a request that did not ask to upgrade (RFC 9110 §15.2.2).
pub(crate) fn unasked_switch() -> Response<RelayBody> {
    text(
        StatusCode::BAD_GATEWAY,
        "the agent switched protocols on a request that did not ask to upgrade",
    )
}

/// The answer when the public client's own request body failed before any response started:
/// `400`, counted as a client error, and the connection closed (where its request ended is
/// unknown).
pub(crate) fn client_body_error() -> Response<RelayBody> {
    closing(text(
        StatusCode::BAD_REQUEST,
        "the request body was malformed or ended early",
    ))
}

/// An empty body (a `101`'s).
pub(crate) fn empty() -> RelayBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}
