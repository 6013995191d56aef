//! A public WebSocket upgrade carried to an HTTP/2 agent as RFC 8441 extended CONNECT.
//!
//! The bridge ([`super::forward`]) reads the public `GET` with `Upgrade: websocket` as
//! HTTP/1.1. Here it becomes `CONNECT` with `:protocol websocket` on a new stream (RFC 8441
//! §4: the same `:scheme`, `:authority` and `:path`, no `Sec-WebSocket-Key`, §5). On the
//! agent's `200` the relay answers the public client's handshake itself (`101` with the
//! `Sec-WebSocket-Accept` of its key, RFC 6455 §4.2.2) and splices the two streams; any other
//! answer is passed on as a refusal. The registry gives a WebSocket only a connection whose
//! agent advertised `SETTINGS_ENABLE_CONNECT_PROTOCOL` ([`super::h2_settings`]); one that did
//! not is `502` with the reason (decisions D85).

use std::sync::Arc;

use base64::Engine;
use http::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::registry::H2Lease;
use super::respond::{self, RelayBody};
use crate::proto::hop::connection_names;

/// The GUID of RFC 6455 §1.3, appended to the key before hashing.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether the bridged request is a WebSocket upgrade (`Connection: upgrade` and `Upgrade:
/// websocket`).
pub(super) fn is_upgrade(req: &Request<Incoming>) -> bool {
    let connection = req.headers().get_all(CONNECTION).iter();
    connection_names(connection.map(HeaderValue::as_bytes), "upgrade")
        && req
            .headers()
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2 step 5.4).
fn accept(key: &[u8]) -> HeaderValue {
    let mut input = key.to_vec();
    input.extend_from_slice(WEBSOCKET_GUID.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    let text = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    HeaderValue::from_str(&text).expect("base64 is a field value")
}

/// Carry the upgrade over the lease's connection (see the module docs).
pub(super) async fn over_h2(
    mut req: Request<Incoming>,
    lease: Arc<H2Lease>,
) -> Response<RelayBody> {
    if req.method() != Method::GET {
        return respond::text(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade is a GET (RFC 6455 §4.1)",
        );
    }
    if !lease.connect.enabled() {
        // A request that waited for a connection may get one that does not allow it.
        return respond::text(
            StatusCode::BAD_GATEWAY,
            "the agent's HTTP/2 connection does not allow extended CONNECT (RFC 8441 \
             SETTINGS_ENABLE_CONNECT_PROTOCOL), so the WebSocket cannot reach it",
        );
    }
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        return respond::text(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs Sec-WebSocket-Key (RFC 6455 §4.1)",
        );
    };
    let public = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    parts.method = Method::CONNECT;
    parts
        .extensions
        .insert(hyper::ext::Protocol::from_static("websocket"));
    for name in [CONNECTION, UPGRADE, SEC_WEBSOCKET_KEY] {
        parts.headers.remove(name);
    }
    let mut res = match lease
        .client
        .clone()
        .send(Request::from_parts(parts, body))
        .await
    {
        Ok(res) => res,
        Err(e) => {
            return respond::text(
                StatusCode::BAD_GATEWAY,
                format!("the agent's stream for the WebSocket (extended CONNECT) failed: {e}"),
            );
        }
    };
    if res.status() != StatusCode::OK {
        // A refusal (401, 404, 501): passed on as it is.
        return res.map(BodyExt::boxed_unsync);
    }
    let agent = hyper::upgrade::on(&mut res);
    tokio::spawn(async move {
        // The lease counts the stream open until the tunnel ends.
        let _lease = lease;
        let (Ok(public), Ok(agent)) = tokio::join!(public, agent) else {
            return;
        };
        let (mut a, mut b) = (TokioIo::new(public), TokioIo::new(agent));
        if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
            tracing::debug!(error = %e, "WebSocket over HTTP/2 ended with an error");
        }
    });
    let mut out = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = out.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept(key.as_bytes()));
    for (name, value) in res.headers() {
        // The agent's choice of subprotocol and extensions (RFC 8441 §5 keeps them).
        let n = name.as_str();
        if n == "sec-websocket-protocol" || n == "sec-websocket-extensions" {
            h.append(name, value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// RFC 6455 §1.3's example.
    #[test]
    fn the_accept_value_of_rfc_6455() {
        assert_eq!(
            super::accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
