//! One reversed connection's life, as one task: dial the relay, run the upgrade handshake,
//! serve it until it closes, then tell the pool how it went.
//!
//! ```text
//! dial (TCP, keepalive, nodelay; TLS) -> handshake (Upgrade: PTTH/0.9) -> Parked
//!   -> Serve::serve: a hyper service (Flipped::serve), or the proxy on the h1 engine,
//!      until the relay closes it, the pool stops it, or the drain ends
//!   -> Ended { outcome: Closed | Failed | Refused | Cancelled }
//! ```
//!
//! The connection reports to its supervisor ([`super::pool`]) over a channel ([`Event`]), and
//! counts itself busy from the first byte of a request until its response body is done (or
//! dropped) in the shared [`Gauge`], so that most requests do not wake the supervisor.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::dial::{self, BoxedIo};
use super::target::Target;
use super::{AgentError, BoxError, Config};
use crate::dialer::Flipped;
use crate::error::{Error, Refusal};
use crate::proto::Protocol;
use crate::proto::request::UpgradeRequest;

/// What a connection tells the pool.
#[derive(Debug)]
pub(super) enum Event {
    /// Connection `id` parked: the handshake succeeded.
    Parked { id: u64 },
    /// A connection became busy and the pool may be short of idle connections.
    Busy,
    /// Connection `id` is gone.
    Ended {
        id: u64,
        /// The pool's epoch when this connection was dialled.
        epoch: u64,
        outcome: Outcome,
    },
}

/// How a connection ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The connection parked, then closed.
    Closed {
        /// Whether it served any request.
        served: bool,
        /// How long it was parked.
        lived: Duration,
    },
    /// Connect or handshake failed.
    Failed(AgentError),
    /// The relay answered the upgrade request with something other than `101`.
    Refused(Box<Refusal>),
    /// Shut down before it parked.
    Cancelled,
}

/// What the connections and the supervisor share, so that most requests do not have to wake
/// the supervisor.
#[derive(Debug)]
pub(super) struct Gauge {
    /// Parked connections serving a request.
    pub(super) busy: AtomicUsize,
    /// Parked connections (written by the supervisor).
    pub(super) parked: AtomicUsize,
    /// Whether the pool may still grow (written by the supervisor).
    pub(super) room: AtomicBool,
    /// Idle connections wanted.
    pub(super) connections: usize,
}

impl Gauge {
    /// Whether the idle connections left might be fewer than wanted (the supervisor decides).
    pub(super) fn short(&self, busy: usize) -> bool {
        self.room.load(Ordering::Relaxed)
            && self.parked.load(Ordering::Relaxed).saturating_sub(busy) < self.connections
    }
}

/// How the pool tells a connection to stop.
pub(super) struct Stop {
    /// Finish the exchange in flight, then close (or stop dialling).
    pub(super) graceful: CancellationToken,
    /// The drain timeout passed: close now.
    pub(super) hard: CancellationToken,
}

/// Which connection a task is, and the pool's epoch when it was dialled.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dialled {
    pub(super) id: u64,
    pub(super) epoch: u64,
}

/// How a parked connection is served: with a hyper service ([`Hyper`]), or by the forwarding
/// engine ([`super::proxy::Proxy`]). `serve` returns when the connection is done; `graceful`
/// asks it to finish the exchange in flight and close. Requests are counted in `track`.
pub(super) trait Serve: Send + Sync + 'static {
    fn serve(
        &self,
        flipped: Flipped<BoxedIo>,
        config: &Config,
        track: Arc<Track>,
        graceful: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// A hyper service, served with [`Flipped::serve`]. Each connection serves its own clone, so
/// the service need not be `Sync`: the one kept here is behind a lock, taken once per
/// connection to clone it.
pub(super) struct Hyper<S>(pub(super) std::sync::Mutex<S>);

impl<S, B> Serve for Hyper<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    async fn serve(
        &self,
        flipped: Flipped<BoxedIo>,
        config: &Config,
        track: Arc<Track>,
        graceful: CancellationToken,
    ) {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let svc = Tracked { inner, track };
        let mut serving = std::pin::pin!(flipped.serve(svc, &config.limits));
        let cancelled = graceful.cancelled();
        tokio::pin!(cancelled);
        let mut stopping = false;
        let res = std::future::poll_fn(|cx| {
            if !stopping && cancelled.as_mut().poll(cx).is_ready() {
                stopping = true;
                serving.as_mut().graceful_shutdown();
            }
            serving.as_mut().poll(cx)
        })
        .await;
        if let Err(e) = res {
            debug!(error = %e, "reversed connection ended with an error");
        }
    }
}

/// Run one connection from its dial to its end, and report both.
pub(super) async fn connection<V: Serve>(
    Dialled { id, epoch }: Dialled,
    target: Target,
    config: Arc<Config>,
    server: Arc<V>,
    gauge: Arc<Gauge>,
    events: mpsc::UnboundedSender<Event>,
    stop: Stop,
) {
    let outcome = tokio::select! {
        o = park(&target, &config) => o,
        () = stop.graceful.cancelled() => Err(Outcome::Cancelled),
    };
    let outcome = match outcome {
        Err(o) => o,
        Ok(flipped) => {
            debug!(relay = %target.url(), "parked");
            let _ = events.send(Event::Parked { id });
            let parked_at = Instant::now();
            let track = Arc::new(Track {
                gauge,
                events: events.clone(),
                in_flight: AtomicUsize::new(0),
                served: AtomicBool::new(false),
            });
            tokio::select! {
                () = server.serve(flipped, &config, track.clone(), stop.graceful.clone()) => {}
                // The drain timeout passed: dropping the connection closes it mid-exchange.
                () = stop.hard.cancelled() => {}
            }
            Outcome::Closed {
                served: track.served.load(Ordering::Relaxed),
                lived: parked_at.elapsed(),
            }
        }
    };
    let _ = events.send(Event::Ended { id, epoch, outcome });
}

/// Dial and upgrade: a parked (flipped) connection, or why there is none.
async fn park(target: &Target, config: &Config) -> Result<Flipped<BoxedIo>, Outcome> {
    let io = dial::relay(target, config).await.map_err(Outcome::Failed)?;
    let request = upgrade_request(
        target,
        &config.method,
        config.protocol,
        config.token.as_ref(),
        &config.headers,
    );
    crate::dialer::handshake(io, &request, &config.limits)
        .await
        .map_err(|e| match e {
            Error::Refused(r) => Outcome::Refused(r),
            e => Outcome::Failed(AgentError::Handshake(e)),
        })
}

/// The upgrade request for `target`: its path names the service, its authority is `Host`.
fn upgrade_request(
    target: &Target,
    method: &Method,
    protocol: Protocol,
    token: Option<&HeaderValue>,
    headers: &HeaderMap,
) -> UpgradeRequest {
    let mut req = UpgradeRequest::new(target.endpoint.authority.clone());
    req.method = method.clone();
    req.target = target.path.clone();
    req.protocols = vec![protocol];
    req.headers = headers.clone();
    if let Some(token) = token {
        req.headers
            .insert(http::header::AUTHORIZATION, token.clone());
    }
    req
}

/// Per-connection request accounting shared by the service wrapper and response bodies.
pub(super) struct Track {
    gauge: Arc<Gauge>,
    events: mpsc::UnboundedSender<Event>,
    in_flight: AtomicUsize,
    served: AtomicBool,
}

/// Held from the start of a request until its response body is finished or dropped.
pub(super) struct InFlight(Arc<Track>);

impl InFlight {
    pub(super) fn start(track: &Arc<Track>) -> InFlight {
        track.served.store(true, Ordering::Relaxed);
        if track.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            let busy = track.gauge.busy.fetch_add(1, Ordering::AcqRel) + 1;
            if track.gauge.short(busy) {
                let _ = track.events.send(Event::Busy);
            }
        }
        InFlight(track.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Becoming idle never calls for a dial: no need to wake the supervisor.
            self.0.gauge.busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The user's service, reporting busy/idle to the pool.
struct Tracked<S> {
    inner: S,
    track: Arc<Track>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::start(&self.track);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its connection counted as busy until it is done.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: InFlight,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_request_names_the_service_and_carries_the_token() {
        let t = Target::parse("http://demo.localhost:8080/").unwrap();
        let req = upgrade_request(
            &t,
            &Method::POST,
            Protocol::Ptth09,
            Some(&HeaderValue::from_static("Bearer s")),
            &HeaderMap::new(),
        );
        let raw = String::from_utf8(req.encode()).unwrap();
        assert!(raw.starts_with("POST / HTTP/1.1\r\nHost: demo.localhost:8080\r\n"));
        assert!(raw.contains("\r\nauthorization: Bearer s\r\n"));
    }
}
