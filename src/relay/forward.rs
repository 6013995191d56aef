//! One public request: routed, rewritten for the agent, sent over a checked-out connection,
//! retried once on another connection when it was never sent.
//!
//! ```text
//! Host check -> route -> rewrite (proto::forwarded) -> checkout -> exchange | tunnel
//!                                                          ^-- once more if handed back unsent
//! ```
//!
//! Failures map to 404 (no such agent), 503 (the agent is offline, or no idle connection in
//! time), 502 (agent gone, or a `101` to a request that did not ask to upgrade) and 504 (no
//! response head in time). A public request body that fails on its way (a bad chunk, a
//! connection closed early) is the client's fault: 400 if no response has started. A bad
//! `Host` (RFC 9112 §3.2) is 400 before anything else. A request is retried on another
//! connection only when hyper hands it back unsent. A body that expects `100 Continue` is held
//! back until the agent answers `100` (`crate::expect`): the public client's `100` comes from
//! the agent side, and a refusal from there costs no upload.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::exchange::{Attempt, BodyState, Tracked, exchange};
use super::metrics::{self, Pending};
use super::registry::{CheckoutError, ForwardBody};
use super::respond::{self, RelayBody};
use super::route::{RouteError, route};
use super::tunnel::tunnel;
use super::{ConnInfo, RELAY_CONTINUE_WAIT, Shared};
use crate::expect::{Gated, gate};
use crate::proto::forwarded::{self, Hop};
use crate::proto::hop::{self, Keep};
use crate::proto::request;

/// Forward one public request.
pub(crate) async fn forward(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    req: Request<Incoming>,
) -> Response<RelayBody> {
    let mut pending = Pending {
        metrics: shared.metrics.clone(),
        name: None,
        known: false,
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string(),
        client: info.peer,
        started: Instant::now(),
        bytes_in: Arc::default(),
    };
    let res = forward_inner(shared, info, req, &mut pending).await;
    metrics::observe(res, pending)
}

/// The response for `req`; `pending` learns the name and whether the relay knows it.
async fn forward_inner(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    mut req: Request<Incoming>,
    pending: &mut Pending,
) -> Response<RelayBody> {
    let arrived = Instant::now();
    let cfg = &shared.config;
    // RFC 9112 §3.2: one Host (none only in HTTP/1.0); an absolute-form target's authority
    // wins over it (§3.2.2).
    let host = match request::authority(req.version(), req.uri(), req.headers()) {
        Ok(h) => h.and_then(|h| HeaderValue::from_str(h).ok()),
        Err(e) => return respond::closing(respond::text(StatusCode::BAD_REQUEST, e.to_string())),
    };
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let route = match route(host.as_ref().and_then(|h| h.to_str().ok()), pq, &cfg.domain) {
        Ok(r) => r,
        Err(RouteError::NoName) => return respond::no_name(&cfg.domain),
        Err(e) => return respond::text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    pending.name = Some(route.name.clone());
    let Ok(target) = route.path.parse::<Uri>() else {
        return respond::text(StatusCode::BAD_REQUEST, "invalid request target");
    };
    let upgrade = hop::is_upgrade(req.headers());
    let mut public_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    forwarded::request_head(
        &mut parts,
        Hop {
            client: info.peer.ip(),
            proto: info.proto(),
            host: host.as_ref(),
            prefix: route.prefix.as_deref(),
            trust: cfg.trust_forwarded,
            target,
            keep: Keep::relay(upgrade),
        },
    );
    let (sent_tx, sent_rx) = oneshot::channel();
    let request_body = Arc::new(BodyState::default());
    // An upgrade's body (rare) goes as it comes: its exchange is a tunnel, not parked again.
    let (body, continue_gate) = if upgrade {
        (Gated::open(body), None)
    } else {
        gate(&parts.headers, body, RELAY_CONTINUE_WAIT)
    };
    let body = Tracked::request(
        body,
        pending.bytes_in.clone(),
        sent_tx,
        request_body.clone(),
    )
    .boxed();
    let mut out = Request::from_parts(parts, body);
    // Only this relay writes it (decision D66): a client's own is not passed on.
    out.headers_mut().remove(forwarded::QUEUE_WAIT_FIELD);
    if let Some(g) = &continue_gate {
        g.watch(&mut out);
    }

    let deadline = Instant::now() + cfg.queue_timeout;
    let mut retried = false;
    let mut sent_rx = Some(sent_rx);
    loop {
        let conn = shared.registry.checkout(&route.name, deadline).await;
        pending.known = !matches!(conn, Err(CheckoutError::Unknown(_)));
        let conn = match conn {
            Ok(c) => c,
            Err(e) => return respond::refusal(e.status(), &e),
        };
        if conn.reservation.queue_wait {
            let waited = arrived.elapsed().as_micros().to_string();
            if let Ok(v) = HeaderValue::from_str(&waited) {
                out.headers_mut().insert(forwarded::QUEUE_WAIT_FIELD, v);
            }
        }
        let sent = sent_rx.take().expect("one attempt in flight");
        if let Some(public) = public_upgrade.take() {
            return tunnel(shared, conn, out, sent, public, &request_body).await;
        }
        let attempt = exchange(
            shared,
            conn,
            out,
            sent,
            &request_body,
            continue_gate.as_ref(),
        )
        .await;
        match attempt {
            Attempt::Done(res) => return res,
            Attempt::Unsent(again) if !retried => {
                // hyper handed the request back before writing a byte of it: one more try on
                // another connection is safe.
                retried = true;
                let (tx, rx) = oneshot::channel();
                sent_rx = Some(rx);
                out = again;
                replace_done(out.body_mut(), tx, request_body.clone());
            }
            Attempt::Unsent(_) => return respond::agent_gone(),
        }
    }
}

/// The request body was handed back unsent: its completion signal must follow the new attempt.
fn replace_done(body: &mut ForwardBody, tx: oneshot::Sender<()>, state: Arc<BodyState>) {
    // BoxBody hides the Tracked inside; wrap it again (the old signal fires harmlessly, and
    // the new counter is not the metrics': the bytes are counted by the inner one).
    let inner = std::mem::replace(
        body,
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *body = Tracked::request(inner, Arc::new(AtomicU64::new(0)), tx, state).boxed();
}
