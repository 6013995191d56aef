//! A public request for a name served over HTTP/2 (`ptth` with `ALPN: h2`, decisions D83): the
//! engine's exchange runs against one end of a bounded in-memory pipe, as toward an HTTP/1.1
//! agent, and on the other end a hyper HTTP/1.1 server hands the request to the agent's HTTP/2
//! sender as a new stream. Both bodies stream through the pipe and the stream's flow control, so
//! a slow public reader holds back its own stream only. An extended CONNECT (RFC 8441) for a
//! public WebSocket goes through [`super::websocket`] on the same bridge (D85).
//!
//! ```text
//! forward::public -> exchange: h1::exchange(inb, pipe near end, OverH2) ──┐
//!                    bridge_h2: pipe far end -> hyper http1 server -> lease.client (h2 stream)
//! ```

use std::sync::Arc;

use bytes::BytesMut;
use http::StatusCode;
use tracing::debug;

use super::exchange::{AgentRoute, OverH2};
use super::forward::{Public, Stops};
use super::registry::{AgentStream, H2Lease};
use super::{H2_BRIDGE_BUF, Shared, respond, websocket};
use crate::h1::{self, After, Conn, Record, Settings};

/// One exchange over a stream of the agent's HTTP/2 connection: the engine writes the request
/// into a pipe of [`H2_BRIDGE_BUF`] bytes each way and reads the response from it, as from an
/// HTTP/1.1 agent; a hyper HTTP/1.1 server on the pipe's other end sends it as an HTTP/2
/// request and writes the response back. The bridge ends with the exchange: a response still
/// streaming (the public client went away) resets its stream, and nothing else.
#[allow(clippy::too_many_arguments)]
pub(super) async fn exchange<S: AgentStream>(
    inb: &mut Conn<S>,
    lease: H2Lease,
    route: &AgentRoute<'_>,
    settings: &Settings<'_>,
    spare: &mut (BytesMut, BytesMut),
    shared: &Arc<Shared>,
    stops: &mut Stops<'_, '_>,
    record: &mut Record,
) -> Public {
    let (near, far) = tokio::io::duplex(H2_BRIDGE_BUF);
    let bridge = tokio::spawn(bridge_h2(far, lease));
    let rbuf = std::mem::take(&mut spare.0);
    let wbuf = std::mem::take(&mut spare.1);
    let mut out = Some(Conn::with_buffers(near, rbuf, wbuf, &shared.agent_limits));
    let route = OverH2(route);
    let after = stops
        .unless_hard(h1::exchange(inb, &mut out, &route, settings, record))
        .await;
    if after == After::Switched {
        // The bridge answered an extended CONNECT's `200` with the `101`: it runs on, splicing
        // the stream onto the pipe.
        return match out.take() {
            Some(pipe) => Public::SwitchedOverH2(Box::new(pipe)),
            None => Public::After(After::Close),
        };
    }
    bridge.abort();
    if let Some(agent) = out.take() {
        let (_, mut rbuf, mut wbuf) = agent.into_parts();
        rbuf.clear();
        wbuf.clear();
        *spare = (rbuf, wbuf);
    }
    Public::After(after)
}

/// The far end of [`exchange`]'s pipe: one request read as HTTP/1.1, sent on a new stream of
/// the lease's connection. A stream that fails before its response head is the relay's `502`
/// with the reason; one that fails later cuts the response short, which the engine passes on.
async fn bridge_h2(io: tokio::io::DuplexStream, lease: H2Lease) {
    let lease = Arc::new(lease);
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let lease = lease.clone();
        async move {
            if websocket::is_upgrade(&req) {
                return Ok(websocket::over_h2(req, lease).await);
            }
            let res = match lease.client.clone().send(req).await {
                Ok(res) => res.map(http_body_util::BodyExt::boxed_unsync),
                Err(e) => {
                    debug!(error = %e, "the HTTP/2 stream to the agent failed");
                    respond::refusal(StatusCode::BAD_GATEWAY, &e)
                }
            };
            drop(lease);
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The agent's fields as they are: no `Date` of the bridge's own.
    builder.auto_date_header(false);
    if let Err(e) = builder
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .with_upgrades()
        .await
    {
        debug!(error = %e, "the HTTP/2 bridge ended");
    }
}
