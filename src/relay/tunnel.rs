//! A public upgrade (WebSocket and others) over an agent's connection.
//!
//! The request goes through the listener role's [`crate::listener::ReversedClient`] like any
//! other; hyper's connection under it runs as a task that can hand the stream over. On a `101`
//! the agent's connection becomes a tunnel to the public client's: bytes are copied both ways
//! until either side closes (or the drain ends), and the connection is never parked again. An
//! agent that declines the upgrade answers an ordinary response, which is passed on; its
//! connection is not reused either (it may still be set up for the upgrade).

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use super::Shared;
use super::exchange::{self, BodyState};
use super::registry::{AgentConn, ForwardBody};
use super::respond::{self, RelayBody};
use crate::proto::hop::{self, Keep};

/// Send the upgrade request `out` on `conn` and, on a `101`, join the two streams.
pub(super) async fn tunnel(
    shared: &Arc<Shared>,
    conn: AgentConn,
    out: Request<ForwardBody>,
    sent: oneshot::Receiver<()>,
    public: OnUpgrade,
    request_body: &BodyState,
) -> Response<RelayBody> {
    let AgentConn { io, reservation } = conn;
    let (mut client, connection) = match exchange::client(shared, io).await {
        Ok(x) => x,
        Err(_) => return respond::agent_gone(),
    };
    let task = tokio::spawn(connection.with_upgrades());
    let timeout = shared.config.response_timeout;
    let response = tokio::select! {
        r = client.send(out) => r,
        () = async { let _ = sent.await; tokio::time::sleep(timeout).await; } => {
            task.abort();
            return respond::agent_timeout();
        }
    };
    let mut response = match response {
        Ok(r) => r,
        Err(e) if request_body.failed() => {
            tracing::debug!(%e, "the public request body failed");
            return respond::client_body_error();
        }
        Err(e) => {
            tracing::debug!(%e, "forwarding an upgrade failed");
            return respond::agent_gone();
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = response.into_parts();
        hop::pass_response(&mut parts, Keep::relay(false));
        let keep = (task, reservation);
        return Response::from_parts(
            parts,
            body.map_frame(move |f| {
                let _ = &keep;
                f
            })
            .boxed_unsync(),
        );
    }
    let agent = hyper::upgrade::on(&mut response);
    let hard = shared.hard.clone();
    let metrics = shared.metrics.clone();
    // Tracked, so a drain lets open tunnels run until the drain timeout instead of cutting them.
    shared.tasks.spawn(async move {
        let _held = (reservation, task);
        let (a, p) = match tokio::try_join!(agent, public) {
            Ok(x) => x,
            Err(e) => return tracing::debug!(%e, "upgrade did not complete"),
        };
        let (mut a, mut p) = (TokioIo::new(a), TokioIo::new(p));
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut p, &mut a) => match r {
                Ok((up, down)) => metrics.tunnel_closed(up, down),
                Err(e) => tracing::debug!(%e, "tunnel ended"),
            },
            _ = hard.cancelled() => {}
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, respond::empty())
}
