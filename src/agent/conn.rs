//! One reversed connection's life, as one task: dial the relay, run the upgrade handshake,
//! serve it until it closes, then tell the pool how it went.
//!
//! ```text
//! dial (TCP, keepalive, nodelay; TLS) -> handshake (Upgrade: PTTH/0.9, or ptth + ALPN)
//!   -> Parked { h2: the relay chose ALPN h2 }
//!   -> serve: on h2, the server's HTTP/2 service (Serve::h2: the user's hyper service, or
//!      the proxy's forwarder) under Flipped::serve_h2; on HTTP/1.1, Serve::serve_h1 (hyper's
//!      Flipped::serve, or the proxy's h1 engine),
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

use super::config::{Wire, falls_back};
use super::dial::{self, BoxedIo};
use super::long_poll;
use super::target::Target;
use super::{AgentError, Config};
use crate::dialer::Flipped;
use crate::error::{Error, Refusal};
use crate::proto::Protocol;
use crate::proto::origin::{self, Origin, Scheme};
use crate::proto::request::UpgradeRequest;
use crate::service::HttpService;

/// What a connection tells the pool.
#[derive(Debug)]
pub(super) enum Event {
    /// Connection `id` parked: the handshake succeeded.
    Parked {
        id: u64,
        /// Whether the relay chose `h2` inside `ptth`: the connection carries many requests at
        /// once.
        h2: bool,
    },
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
    /// Connections being dialled (written by the supervisor), for the metrics.
    pub(super) dialing: AtomicUsize,
    /// Where requests and the pool's events are counted (`--admin`).
    pub(super) metrics: Arc<super::metrics::Metrics>,
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
/// engine ([`super::proxy::Proxy`]). On HTTP/2 (the relay chose `h2`) every server hands its
/// streams to a hyper service ([`Serve::h2`]) and [`serve`] runs it; on HTTP/1.1
/// [`Serve::serve_h1`] serves the connection itself. Either returns when the connection is done.
pub(super) trait Serve: Send + Sync + 'static {
    /// What answers the streams of an HTTP/2 connection.
    type H2: HttpService + Send + 'static;

    /// The service for one HTTP/2 connection's streams.
    fn h2(&self) -> Self::H2;

    /// Serve one HTTP/1.1 connection until it is done.
    fn serve_h1(
        &self,
        flipped: Flipped<BoxedIo>,
        on: Parked<'_>,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// What serving a parked connection takes beside the connection: the agent's settings, where
/// its requests are counted, and the pool's ask to finish (`graceful`: finish the exchange in
/// flight and close; on HTTP/2: send GOAWAY and let the open streams finish).
pub(super) struct Parked<'a> {
    pub(super) config: &'a Config,
    pub(super) track: Arc<Track>,
    pub(super) graceful: CancellationToken,
}

/// Serve a parked connection with `server`: the one place that tells HTTP/2 from HTTP/1.1.
async fn serve<V: Serve>(server: &V, flipped: Flipped<BoxedIo>, on: Parked<'_>) {
    if flipped.is_h2() {
        let svc = Tracked {
            inner: server.h2(),
            track: on.track,
        };
        serve_h2(flipped, svc, on.config, on.graceful).await;
    } else {
        server.serve_h1(flipped, on).await;
    }
}

/// A hyper service, served with [`Flipped::serve`]. Each connection serves its own clone, so
/// the service need not be `Sync`: the one kept here is behind a lock, taken once per
/// connection to clone it.
pub(super) struct Hyper<S>(pub(super) std::sync::Mutex<S>);

impl<S: Clone> Hyper<S> {
    /// A clone of the user's service: one per connection, whichever protocol it speaks.
    fn service(&self) -> S {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl<S> Serve for Hyper<S>
where
    S: HttpService + Clone + Send + 'static,
{
    type H2 = S;

    fn h2(&self) -> S {
        self.service()
    }

    async fn serve_h1(&self, flipped: Flipped<BoxedIo>, on: Parked<'_>) {
        let svc = Tracked {
            inner: self.service(),
            track: on.track,
        };
        let serving = flipped.serve(svc, &on.config.limits);
        if let Err(e) = until_drained(serving, &on.graceful).await {
            debug!(error = %e, "reversed connection ended with an error");
        }
    }
}

/// A connection being served that can be asked to finish what it has open and close:
/// hyper's HTTP/1.1 and HTTP/2 servers, behind [`Flipped::serve`] and [`Flipped::serve_h2`].
trait Drain: Future<Output = hyper::Result<()>> {
    fn drain(self: Pin<&mut Self>);
}

impl<IO: crate::io::ByteStream, S: HttpService> Drain for crate::dialer::Serving<IO, S> {
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

impl<IO: crate::io::ByteStream, S: HttpService> Drain for crate::dialer::ServingH2<IO, S> {
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

/// Run `serving` to its end; once `graceful` is cancelled, ask it to drain and keep polling it,
/// so that the request (or the streams) in flight finish instead of being cut.
async fn until_drained<F: Drain>(serving: F, graceful: &CancellationToken) -> hyper::Result<()> {
    let mut serving = std::pin::pin!(serving);
    let mut cancelled = std::pin::pin!(graceful.cancelled());
    let mut stopping = false;
    std::future::poll_fn(|cx| {
        if !stopping && cancelled.as_mut().poll(cx).is_ready() {
            stopping = true;
            serving.as_mut().drain();
        }
        serving.as_mut().poll(cx)
    })
    .await
}

/// Serve HTTP/2 on a `ptth` connection whose relay chose `h2` ([`Flipped::serve_h2`]): the
/// one place the agent runs hyper's HTTP/2 server, for user services and the proxy alike.
/// `graceful` sends GOAWAY; the open streams then finish (or the drain timeout drops them).
async fn serve_h2<S: HttpService>(
    flipped: Flipped<BoxedIo>,
    service: S,
    config: &Config,
    graceful: CancellationToken,
) {
    let serving = flipped.serve_h2(service, &config.limits);
    match until_drained(serving, &graceful).await {
        Ok(()) => debug!("reversed HTTP/2 connection closed"),
        Err(e) => debug!(error = %e, "reversed HTTP/2 connection ended with an error"),
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
        o = park(&target, &config, || {
            let _ = events.send(Event::Parked { id, h2: false });
        }) => o,
        () = stop.graceful.cancelled() => Err(Outcome::Cancelled),
    };
    let outcome = match outcome {
        Err(o) => o,
        Ok(flipped) => {
            let h2 = flipped.is_h2();
            debug!(
                relay = %target.url(),
                protocol = %flipped.protocol(),
                inner = if h2 { "h2" } else { "http/1.1" },
                "parked"
            );
            let _ = events.send(Event::Parked { id, h2 });
            let parked_at = Instant::now();
            let track = Arc::new(Track {
                gauge,
                events: events.clone(),
                in_flight: AtomicUsize::new(0),
                served: AtomicBool::new(false),
            });
            tokio::select! {
                () = serve(&*server, flipped, Parked {
                    config: &config,
                    track: track.clone(),
                    graceful: stop.graceful.clone(),
                }) => {}
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
/// `held` is told when a long poll is held (long polling parks without a handshake).
async fn park(
    target: &Target,
    config: &Arc<Config>,
    held: impl FnOnce(),
) -> Result<Flipped<BoxedIo>, Outcome> {
    if config.long_polls() {
        return long_poll::park(target, config, held).await;
    }
    let io = dial::relay(target, config).await.map_err(Outcome::Failed)?;
    let mut request = upgrade_request(
        target,
        &config.upgrade_method(),
        config.protocol,
        config.token.as_ref(),
        &config.headers,
    );
    if config.wire == Wire::Auto {
        // Says "this was an offer" to a relay that gets it with `Upgrade` removed on the way:
        // it answers 426, and the agent falls back (spec-notes/long-poll.md).
        request.headers.insert(
            crate::proto::long_poll::FIELD,
            http::HeaderValue::from_static("offer"),
        );
    }
    let flipped = crate::dialer::handshake(io, &request, &config.limits)
        .await
        .map_err(|e| match e {
            Error::Refused(r) => Outcome::Refused(r),
            e => Outcome::Failed(AgentError::Handshake(e)),
        });
    match flipped {
        Err(Outcome::Refused(r)) if config.wire == Wire::Auto && falls_back(r.status) => {
            // The upgrade does not pass (an intermediary answered, or took the offer for a
            // public request): every connection long-polls from now on.
            if !config
                .fell_back
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::info!(
                    relay = %target.url(),
                    status = %r.status,
                    "the upgrade did not reach the relay; falling back to long polling"
                );
            }
            long_poll::park(target, config, held).await
        }
        other => other,
    }
}

/// The upgrade request for `target`: its path names the service, its authority is `Host`.
/// A `ptth` offer lists `ALPN: h2, http%2F1.1` and, in host mode, registers the relay URL's
/// origin ([`offer_target`]).
fn upgrade_request(
    target: &Target,
    method: &Method,
    protocol: Protocol,
    token: Option<&HeaderValue>,
    headers: &HeaderMap,
) -> UpgradeRequest {
    let mut req = if protocol.negotiates_alpn() {
        UpgradeRequest::transposed(target.endpoint.authority.clone())
    } else {
        UpgradeRequest::new(target.endpoint.authority.clone())
    };
    req.method = method.clone();
    req.target = if protocol.negotiates_alpn() {
        offer_target(target)
    } else {
        target.path.clone()
    };
    req.protocols = vec![protocol];
    req.headers = headers.clone();
    if let Some(token) = token {
        req.headers
            .insert(http::header::AUTHORIZATION, token.clone());
    }
    req
}

/// The target of a `ptth` offer (draft-kazuho-ptth-ptth-01 §3.1, decisions D74). In host mode
/// (`http://NAME.relay-domain/`: the relay URL's path is `/`) the service's scope is an origin,
/// the relay URL's own, so the offer uses the well-known template
/// `/.well-known/ptth/{serialized_origin}/` with that one origin. In path mode (`/NAME`) the
/// scope is a name the relay gave, which the draft leaves to the deployment: the path is sent
/// as it is, as with the 2009 tokens.
fn offer_target(target: &Target) -> String {
    if target.path != "/" {
        return target.path.clone();
    }
    let endpoint = &target.endpoint;
    let scheme = if endpoint.tls {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let host = endpoint.host.to_ascii_lowercase();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    match Origin::new(scheme, &host, Some(endpoint.port)) {
        Ok(origin) => origin::well_known_target(&[origin]),
        // A host that is no origin host (an underscore, say): the relay routes by `Host` then.
        Err(_) => target.path.clone(),
    }
}

/// Per-connection request accounting shared by the service wrapper and response bodies.
pub(super) struct Track {
    pub(super) gauge: Arc<Gauge>,
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
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) track: Arc<Track>,
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
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            let metrics = &guard.0.gauge.metrics;
            metrics.request(res.status(), started.elapsed());
            Ok(res.map(|inner| Guarded {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its connection counted as busy until it is done.
pub type TrackedBody<B> = Guarded<B, InFlight>;

pin_project_lite::pin_project! {
    /// A body that holds `G` (a count, a permit) until it is done or dropped.
    pub struct Guarded<B, G> {
        #[pin]
        pub(super) inner: B,
        pub(super) _guard: G,
    }
}

impl<B: Body, G> Body for Guarded<B, G> {
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

    /// A `ptth` offer: `GET`, `ALPN: h2, http%2F1.1`; in host mode the well-known target with
    /// the relay URL's origin in canonical form (D74), in path mode the path as it is.
    #[test]
    fn a_ptth_offer_lists_alpn_and_registers_the_host_modes_origin() {
        let offer = |url: &str| {
            let t = Target::parse(url).unwrap();
            let req = upgrade_request(
                &t,
                &Method::GET,
                Protocol::Transposed,
                None,
                &HeaderMap::new(),
            );
            String::from_utf8(req.encode()).unwrap()
        };
        let raw = offer("http://Demo.localhost:8080/");
        assert!(
            raw.starts_with(
                "GET /.well-known/ptth/http%3A%2F%2Fdemo.localhost%3A8080/ HTTP/1.1\r\n\
                 Host: Demo.localhost:8080\r\nUpgrade: ptth\r\nConnection: Upgrade\r\n\
                 ALPN: h2, http%2F1.1\r\n"
            ),
            "{raw}"
        );
        // The default port is not written; IPv6 in brackets.
        assert!(
            offer("https://demo.example/")
                .starts_with("GET /.well-known/ptth/https%3A%2F%2Fdemo.example/ ")
        );
        assert!(
            offer("http://[::1]:81/")
                .starts_with("GET /.well-known/ptth/http%3A%2F%2F%5B%3A%3A1%5D%3A81/ ")
        );
        // Path mode: the name is the deployment's target.
        assert!(offer("http://127.0.0.1:8080/demo").starts_with("GET /demo HTTP/1.1\r\n"));
        // The 2009 tokens are unchanged: no ALPN.
        let t = Target::parse("http://demo.localhost:8080/").unwrap();
        let req = upgrade_request(&t, &Method::POST, Protocol::Ptth09, None, &HeaderMap::new());
        let raw = String::from_utf8(req.encode()).unwrap();
        assert!(
            raw.starts_with("POST / HTTP/1.1\r\n") && !raw.contains("ALPN"),
            "{raw}"
        );
    }

    #[test]
    fn ptth_is_always_get() {
        let a = crate::agent::Agent::builder("http://127.0.0.1:8080/demo")
            .protocol(Protocol::Transposed)
            .method(Method::POST)
            .build()
            .unwrap();
        assert_eq!(a.config().upgrade_method(), Method::GET);
        assert_eq!(a.config().h2_connections, 2);
        let a = crate::agent::Agent::builder("http://127.0.0.1:8080/demo")
            .build()
            .unwrap();
        assert_eq!(a.config().upgrade_method(), Method::POST);
    }
}
