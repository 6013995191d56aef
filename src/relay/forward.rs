//! One public exchange over one parked reversed connection.
//!
//! The request is rewritten (target, hop-by-hop fields, forwarding fields), sent over a leased
//! connection, and the response streams back frame by frame; the connection is parked again
//! when the response body has ended. Failures map to 404 (no such agent), 503 (the agent is
//! offline, or no idle connection in time), 502 (agent gone, or a `101` to a request that did
//! not ask to upgrade) and 504 (no response head in time). A public request body that fails on
//! its way (a bad chunk, a connection closed early) is the client's fault: 400 if no response
//! has started. A bad `Host` (RFC 9112 §3.2) is 400 before anything else. A request is retried
//! on another connection only when hyper hands it back unsent. A body that expects
//! `100 Continue` is held back until the agent answers `100` (`crate::expect`): the public
//! client's `100` comes from the agent side, and a refusal from there costs no upload.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HOST};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::accept::{ConnInfo, busy, text};
use super::registry::{AgentConn, AgentStream, CheckoutError, ForwardBody, Reservation};
use super::route::{RouteError, route};
use super::{RELAY_CONTINUE_WAIT, Shared};
use crate::expect::{Gate, Gated, gate};
use crate::proto::forwarded;
use crate::proto::hop::{Keep, strip_hop_by_hop};
use crate::proto::request;
use crate::proto::response::drop_length_beside_chunked;
use crate::proto::tokens;

/// Body type of responses the relay sends to public clients.
pub type RelayBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// What the relay passes on to the agent: `TE: trailers` (so the agent may send trailers),
/// and the upgrade pair when the public request is an upgrade.
fn keep_for_agent(upgrade: bool) -> Keep {
    Keep {
        upgrade,
        te_trailers: true,
    }
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && tokens::connection_has_upgrade(headers)
}

/// Forward one public request.
pub(crate) async fn forward(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    req: Request<Incoming>,
) -> Response<RelayBody> {
    let started = Instant::now();
    let res = forward_inner(shared, info, req).await;
    shared.metrics.record(res.status(), started.elapsed());
    res
}

async fn forward_inner(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    mut req: Request<Incoming>,
) -> Response<RelayBody> {
    let cfg = &shared.config;
    // RFC 9112 §3.2: one Host (none only in HTTP/1.0); an absolute-form target's authority
    // wins over it (§3.2.2).
    let host = match request::authority(req.version(), req.uri(), req.headers()) {
        Ok(h) => h.and_then(|h| HeaderValue::from_str(h).ok()),
        Err(e) => return closing(text(StatusCode::BAD_REQUEST, e.to_string())),
    };
    let absolute = req.uri().authority().is_some();
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let route = match route(
        host.as_ref().and_then(|h| h.to_str().ok()),
        &pq,
        &cfg.domain,
    ) {
        Ok(r) => r,
        Err(e @ RouteError::NoName) => return text(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Ok(uri) = route.path.parse::<Uri>() else {
        return text(StatusCode::BAD_REQUEST, "invalid request target");
    };
    let upgrade = wants_upgrade(req.headers());
    let mut public_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    if parts.version == http::Version::HTTP_10 {
        // RFC 9110 §10.1.1: an expectation in an HTTP/1.0 request is ignored (hyper sends no
        // `100` to it, and the body is on its way).
        parts.headers.remove(header::EXPECT);
    }
    strip_hop_by_hop(&mut parts.headers, keep_for_agent(upgrade));
    forwarded::set(
        &mut parts.headers,
        info.peer.ip(),
        info.proto(),
        host.as_ref(),
        route.prefix.as_deref(),
        cfg.trust_forwarded,
    );
    if absolute && let Some(h) = &host {
        // The agent sees the authority the request was routed by, not a Host it overrode.
        parts.headers.insert(HOST, h.clone());
    }
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let (sent_tx, sent_rx) = oneshot::channel();
    let request_body = Arc::new(BodyState::default());
    // An upgrade's body (rare) goes as it comes: its exchange is a tunnel, not parked again.
    let (body, continue_gate) = if upgrade {
        (Gated::open(body), None)
    } else {
        gate(&parts.headers, body, RELAY_CONTINUE_WAIT)
    };
    let body = Tracked::new(
        body,
        shared.metrics.bytes_in.clone(),
        Some(sent_tx),
        request_body.clone(),
    )
    .boxed();
    let mut out = Request::from_parts(parts, body);
    if let Some(g) = &continue_gate {
        g.watch(&mut out);
    }

    let deadline = Instant::now() + cfg.queue_timeout;
    let mut retried = false;
    let mut sent_rx = Some(sent_rx);
    loop {
        let conn = match shared.registry.checkout(&route.name, deadline).await {
            Ok(c) => c,
            Err(CheckoutError::Unknown) => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("no agent is connected for the name {:?}", route.name),
                );
            }
            Err(CheckoutError::Offline) => {
                return busy(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the agent for {:?} is offline: it has no connection to the relay (it may be restarting)",
                        route.name
                    ),
                );
            }
            Err(CheckoutError::QueueFull) => {
                return busy(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("too many requests waiting for {:?}", route.name),
                );
            }
            Err(CheckoutError::Timeout) => {
                return busy(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no connection of {:?} became free in time", route.name),
                );
            }
        };
        let sent = sent_rx.take().expect("one attempt in flight");
        let attempt = if let Some(public) = public_upgrade.take() {
            return upgrade_exchange(shared, conn, out, sent, public, &request_body).await;
        } else {
            exchange(
                shared,
                conn,
                out,
                sent,
                &request_body,
                continue_gate.as_ref(),
            )
            .await
        };
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
            Attempt::Unsent(_) => return text(StatusCode::BAD_GATEWAY, "the agent went away"),
        }
    }
}

/// How one attempt on one connection ended.
enum Attempt {
    /// An answer for the public client (the agent's, or a 502/504).
    Done(Response<RelayBody>),
    /// The connection failed before any byte of the request was written.
    Unsent(Request<ForwardBody>),
}

/// The HTTP/1.1 client for one exchange on a parked stream. It is created per exchange (it
/// costs no I/O) so that an idle parked connection holds no client state or buffers.
fn client_builder() -> hyper::client::conn::http1::Builder {
    let mut b = hyper::client::conn::http1::Builder::new();
    b.read_buf_exact_size(Some(AGENT_READ_BUF));
    b
}

/// Every read from an agent's connection asks for this much: 64 KiB, which is also the largest
/// response head accepted from an agent.
///
/// The client lives for one exchange, so hyper's adaptive buffer (8 KiB, doubling while reads
/// fill it) restarted small on every response. Measured on a 64 KiB response at c8 under
/// strace: 5 reads and 5 writes per request with the adaptive buffer, 3 and 3 with this one.
const AGENT_READ_BUF: usize = 64 * 1024;

/// One request and response on `conn`, driving the client connection in this task (no
/// extra task, no cross-task wakeups). The response body keeps driving it; when the body
/// has ended the stream goes back to the pool.
///
/// A final response that comes while `continue_gate` still holds the body back is a refusal
/// before the upload: the body is never sent, the public connection closes after the answer,
/// and the agent's connection (told a body would follow) is dropped, not parked.
async fn exchange(
    shared: &Arc<Shared>,
    conn: AgentConn,
    out: Request<ForwardBody>,
    sent: oneshot::Receiver<()>,
    request_body: &BodyState,
    continue_gate: Option<&Gate>,
) -> Attempt {
    let AgentConn { io, reservation } = conn;
    let (mut sender, client) = match client_builder().handshake(TokioIo::new(io)).await {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(%e, "starting the reversed client");
            return Attempt::Done(text(StatusCode::BAD_GATEWAY, "the agent went away"));
        }
    };
    let response = sender.try_send_request(out);
    // With the sender gone, the connection finishes (and hands the stream back) as soon as
    // this one exchange is complete.
    drop(sender);
    let mut client: ClientFuture = Box::pin(async move {
        client
            .without_shutdown()
            .await
            .inspect_err(|e| tracing::debug!(%e, "reversed connection failed"))
            .ok()
    });
    let mut response = std::pin::pin!(response);
    let timeout = shared.config.response_timeout;
    let mut head_deadline = std::pin::pin!(async {
        // The deadline counts from the end of the request body: uploads may be long.
        let _ = sent.await;
        tokio::time::sleep(timeout).await;
    });
    let mut client_done: Option<Option<Parts>> = None;
    let result = loop {
        tokio::select! {
            r = &mut response => break r,
            r = &mut client, if client_done.is_none() => client_done = Some(r),
            () = &mut head_deadline => {
                return Attempt::Done(text(StatusCode::GATEWAY_TIMEOUT, "the agent did not answer in time"));
            }
        }
    };
    let response = match result {
        Ok(r) => r,
        Err(mut e) => {
            if request_body.failed() {
                tracing::debug!(error = %e.error(), "the public request body failed");
                return Attempt::Done(client_body_error());
            }
            tracing::debug!(error = %e.error(), "forwarding failed");
            return match e.take_message() {
                Some(again) => Attempt::Unsent(again),
                None => Attempt::Done(text(StatusCode::BAD_GATEWAY, "the agent went away")),
            };
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Only an upgrade may be answered with 101 (RFC 9110 §15.2.2); the stream is in an
        // unknown state now, so it is dropped with the response.
        tracing::info!("the agent answered 101 to a request that did not ask to upgrade");
        return Attempt::Done(text(
            StatusCode::BAD_GATEWAY,
            "the agent switched protocols on a request that did not ask to upgrade",
        ));
    }
    let (mut parts, body) = response.into_parts();
    let conflicting = drop_length_beside_chunked(&mut parts.headers);
    if conflicting {
        tracing::info!(
            "the agent sent Content-Length with Transfer-Encoding; its connection is closed after this response"
        );
    }
    let refused = continue_gate.is_some_and(Gate::refuse);
    let reusable = !refused && !conflicting && keeps_alive(&parts);
    strip_hop_by_hop(&mut parts.headers, keep_for_agent(false));
    // The relay answers in its own version (RFC 9110 §6.2), whatever the agent spoke.
    parts.version = http::Version::HTTP_11;
    if refused {
        // The public client announced a body the relay will not read: say the connection
        // closes (RFC 9110 §10.1.1), rather than leave the client guessing.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // A finished client future must not be polled again. One still running while the request
    // body is still on its way gets its own task: hyper polls this response body only while
    // the public client reads, and an upload must not stall behind an unread download. A
    // refused body is never sent: nothing to run for.
    let client = match (client_done.is_some(), refused || request_body.ended()) {
        (true, _) => None,
        (false, true) => Some(client),
        (false, false) => {
            let task = tokio::spawn(client);
            let joined: ClientFuture = Box::pin(async move { task.await.ok().flatten() });
            Some(joined)
        }
    };
    let body = ExchangeBody {
        inner: body,
        client,
        client_done,
        reservation: Some(reservation),
        reusable,
        counter: shared.metrics.bytes_out.clone(),
    };
    Attempt::Done(Response::from_parts(parts, body.boxed_unsync()))
}

/// Whether the agent left the connection open after this response (HTTP/1.1 persistence,
/// RFC 9112 §9.3).
fn keeps_alive(res: &http::response::Parts) -> bool {
    res.version == http::Version::HTTP_11
        && !tokens::has_member(&res.headers, &header::CONNECTION, "close")
}

/// A public upgrade (WebSocket and others): the agent's connection becomes a tunnel for this
/// exchange and is never parked again, so its client runs as a task that can hand over the
/// stream.
async fn upgrade_exchange(
    shared: &Arc<Shared>,
    conn: AgentConn,
    out: Request<ForwardBody>,
    sent: oneshot::Receiver<()>,
    public: hyper::upgrade::OnUpgrade,
    request_body: &BodyState,
) -> Response<RelayBody> {
    let AgentConn { io, reservation } = conn;
    let (mut sender, client) = match client_builder().handshake(TokioIo::new(io)).await {
        Ok(x) => x,
        Err(_) => return text(StatusCode::BAD_GATEWAY, "the agent went away"),
    };
    let task = tokio::spawn(client.with_upgrades());
    let timeout = shared.config.response_timeout;
    let response = tokio::select! {
        r = sender.send_request(out) => r,
        () = async { let _ = sent.await; tokio::time::sleep(timeout).await; } => {
            task.abort();
            return text(StatusCode::GATEWAY_TIMEOUT, "the agent did not answer in time");
        }
    };
    let mut response = match response {
        Ok(r) => r,
        Err(e) if request_body.failed() => {
            tracing::debug!(%e, "the public request body failed");
            return client_body_error();
        }
        Err(e) => {
            tracing::debug!(%e, "forwarding an upgrade failed");
            return text(StatusCode::BAD_GATEWAY, "the agent went away");
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The agent declined the upgrade: an ordinary response, but the connection is not
        // reused (it may still be set up for the upgrade).
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, keep_for_agent(false));
        parts.version = http::Version::HTTP_11;
        let body = Tracked::new(body, shared.metrics.bytes_out.clone(), None, Arc::default());
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
                Ok((up, down)) => {
                    metrics.bytes_in.fetch_add(up, Ordering::Relaxed);
                    metrics.bytes_out.fetch_add(down, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(%e, "tunnel ended"),
            },
            _ = hard.cancelled() => {}
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(
        parts,
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

/// The request body was handed back unsent: its completion signal must follow the new attempt.
fn replace_done(body: &mut ForwardBody, tx: oneshot::Sender<()>, state: Arc<BodyState>) {
    // BoxBody hides the Tracked inside; wrap it again (the old signal fires harmlessly).
    let inner = std::mem::replace(
        body,
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *body = Tracked::new(inner, Arc::new(AtomicU64::new(0)), Some(tx), state).boxed();
}

type Parts = hyper::client::conn::http1::Parts<TokioIo<Box<dyn AgentStream>>>;
/// The reversed connection's client for one exchange; it yields the stream back (or `None`
/// when the connection failed).
type ClientFuture = Pin<Box<dyn Future<Output = Option<Parts>> + Send>>;

pin_project_lite::pin_project! {
    /// The agent's response body on its way to the public client. Polling it also drives the
    /// reversed connection's client (which may still be sending the request body). When the
    /// body is complete the stream goes back to the pool, also when hyper stops polling at a
    /// known end (`is_end_stream`) or sends no body at all (HEAD, 204, 304) and just drops it.
    /// Dropped before the end (public client gone), it drops the stream: that connection is
    /// mid-exchange and cannot be reused.
    struct ExchangeBody {
        #[pin]
        inner: Incoming,
        client: Option<ClientFuture>,
        client_done: Option<Option<Parts>>,
        reservation: Option<Reservation>,
        reusable: bool,
        counter: Arc<AtomicU64>,
    }

    impl PinnedDrop for ExchangeBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.reusable && this.inner.is_end_stream() {
                finish(this.client.take(), this.client_done.take(), this.reservation.take());
            }
        }
    }
}

/// How long a finished exchange may take to hand its stream back before it is dropped.
const HAND_BACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn drive(
    client: &mut Option<ClientFuture>,
    done: &mut Option<Option<Parts>>,
    cx: &mut Context<'_>,
) {
    if let Some(c) = client
        && let Poll::Ready(r) = c.as_mut().poll(cx)
    {
        *done = Some(r);
        *client = None;
    }
}

/// The response is complete: park the stream once the client has handed it back (it may still
/// be finishing the request body, so that part runs as a short task).
fn finish(
    client: Option<ClientFuture>,
    done: Option<Option<Parts>>,
    reservation: Option<Reservation>,
) {
    let Some(reservation) = reservation else {
        return;
    };
    match (done, client) {
        (Some(done), _) => hand_back(done, reservation),
        (None, Some(client)) => {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Ok(done) = tokio::time::timeout(HAND_BACK_TIMEOUT, client).await {
                        hand_back(done, reservation);
                    }
                });
            }
        }
        (None, None) => {}
    }
}

impl Body for ExchangeBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        drive(this.client, this.client_done, cx);
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.counter.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => {
                drive(this.client, this.client_done, cx);
                if *this.reusable {
                    finish(
                        this.client.take(),
                        this.client_done.take(),
                        this.reservation.take(),
                    );
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.reservation.take();
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Park the stream of a completed exchange again, unless the agent left bytes nobody asked for.
fn hand_back(done: Option<Parts>, reservation: Reservation) {
    match done {
        Some(parts) if parts.read_buf.is_empty() => {
            let registry = reservation.registry().clone();
            registry.park(AgentConn {
                io: parts.io.into_inner(),
                reservation,
            });
        }
        Some(_) => tracing::debug!("agent sent bytes after its response; dropping the connection"),
        None => {}
    }
}

/// What became of a body on its way through the relay, for the exchange that sent it.
#[derive(Debug, Default)]
struct BodyState {
    ended: AtomicBool,
    failed: AtomicBool,
}

impl BodyState {
    /// The body has ended, completely or with an error.
    fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The body ended with an error: for the public request body, a malformed chunk or a
    /// connection that closed early, which is the public client's fault, not the agent's.
    fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// The answer when the public client's own request body failed before any response started:
/// `400`, counted as a client error, and the connection closed (where its request ended is
/// unknown).
fn client_body_error() -> Response<RelayBody> {
    closing(text(
        StatusCode::BAD_REQUEST,
        "the request body was malformed or ended early",
    ))
}

/// `res` with `Connection: close`, so that hyper closes the public connection after it.
fn closing(mut res: Response<RelayBody>) -> Response<RelayBody> {
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

pin_project_lite::pin_project! {
    /// A body that counts its bytes and says when it ended (`done` fires, `state` is set).
    struct Tracked<B> {
        #[pin]
        inner: B,
        counter: Arc<AtomicU64>,
        done: Option<oneshot::Sender<()>>,
        state: Arc<BodyState>,
    }
}

impl<B> Tracked<B> {
    fn new(
        inner: B,
        counter: Arc<AtomicU64>,
        done: Option<oneshot::Sender<()>>,
        state: Arc<BodyState>,
    ) -> Self {
        Tracked {
            inner,
            counter,
            done,
            state,
        }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.counter.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => {
                this.state.ended.store(true, Ordering::Release);
                this.done.take();
            }
            Poll::Ready(Some(Err(_))) => {
                this.state.failed.store(true, Ordering::Release);
                this.state.ended.store(true, Ordering::Release);
                this.done.take();
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
