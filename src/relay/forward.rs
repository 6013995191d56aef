//! One public exchange over one parked reversed connection.
//!
//! The request is rewritten (target, hop-by-hop fields, forwarding fields), sent over a leased
//! connection, and the response streams back frame by frame; the connection is parked again
//! when the response body has ended. Failures map to 404 (no such agent), 503 (no idle
//! connection in time), 502 (agent gone) and 504 (no response head in time). A request is
//! retried on another connection only when hyper hands it back unsent.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Shared;
use super::accept::{ConnInfo, busy, text};
use super::registry::{CheckoutError, Lease};
use super::route::{RouteError, route};
use crate::proto::tokens;

/// Body type of responses the relay sends to public clients.
pub type RelayBody = BoxBody<Bytes, hyper::Error>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Remove the hop-by-hop fields of RFC 9110 §7.6.1: `Connection` and every field it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE` (except `trailers`, which the agent needs to send
/// trailers), `Transfer-Encoding` (hyper re-frames) and `Upgrade`. With `keep_upgrade`, the
/// upgrade pair is kept for pass-through.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let upgrade = headers.get(header::UPGRADE).cloned();
    for n in named {
        if n != header::TE {
            headers.remove(n);
        }
    }
    let te_trailers = tokens::has_member(headers, &header::TE, "trailers");
    for n in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(n);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade && let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && tokens::connection_has_upgrade(headers)
}

/// Set `Forwarded` and `X-Forwarded-*`; client-sent ones are dropped unless trusted, else
/// appended to.
fn set_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
    prefix: Option<&str>,
    trust: bool,
) {
    let ip = peer.ip();
    let node = if ip.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip.to_string()
    };
    let mut fwd = format!("for={node};proto={proto}");
    if let Some(h) = host.and_then(|h| h.to_str().ok())
        && !h.contains(['"', '\\'])
    {
        fwd.push_str(&format!(";host=\"{h}\""));
    }
    let append = |headers: &mut HeaderMap, name: HeaderName, value: String| {
        let prev = if trust {
            headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        } else {
            None
        };
        let v = match prev {
            Some(p) => format!("{p}, {value}"),
            None => value,
        };
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(name, v);
        }
    };
    append(headers, header::FORWARDED, fwd);
    append(headers, X_FORWARDED_FOR, ip.to_string());
    if !trust {
        headers.remove(X_FORWARDED_HOST);
        headers.remove(X_FORWARDED_PROTO);
        headers.remove(X_FORWARDED_PREFIX);
    }
    if let Some(h) = host
        && (!trust || !headers.contains_key(X_FORWARDED_HOST))
    {
        headers.insert(X_FORWARDED_HOST, h.clone());
    }
    if !trust || !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(p) = prefix.and_then(|p| HeaderValue::from_str(p).ok()) {
        headers.insert(X_FORWARDED_PREFIX, p);
    }
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
    let host = req.headers().get(HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
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
    let public_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    set_forwarded(
        &mut parts.headers,
        info.peer,
        info.proto(),
        host.as_ref(),
        route.prefix.as_deref(),
        cfg.trust_forwarded,
    );
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let (sent_tx, sent_rx) = oneshot::channel();
    let body = Tracked::new(body, shared.metrics.bytes_in.clone(), Some(sent_tx), None).boxed();
    let mut out = Request::from_parts(parts, body);

    let deadline = Instant::now() + cfg.queue_timeout;
    let mut retried = false;
    let mut sent_rx = Some(sent_rx);
    let (lease, response) = loop {
        let mut lease = match shared.registry.checkout(&route.name, deadline).await {
            Ok(l) => l,
            Err(CheckoutError::Unknown) => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("no agent is connected for the name {:?}", route.name),
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
        // A connection that fails here was dead before anything was written: try the next one
        // (bounded by the queue deadline).
        if lease.client().ready().await.is_err() {
            lease.discard();
            continue;
        }
        let send = lease.client().try_send(out);
        let sent = sent_rx.take().expect("one send in flight");
        let timeout = cfg.response_timeout;
        let result = tokio::select! {
            r = send => r,
            () = async {
                // The deadline counts from the end of the request body: uploads may be long.
                let _ = sent.await;
                tokio::time::sleep(timeout).await;
            } => {
                lease.discard();
                return text(StatusCode::GATEWAY_TIMEOUT, "the agent did not answer in time");
            }
        };
        match result {
            Ok(res) => break (lease, res),
            Err(mut e) => {
                lease.discard();
                match e.take_message() {
                    Some(mut again) if !retried => {
                        tracing::debug!(error = %e.error(), "connection failed before sending; retrying once");
                        retried = true;
                        let (tx, rx) = oneshot::channel();
                        sent_rx = Some(rx);
                        replace_done(again.body_mut(), tx);
                        out = again;
                    }
                    _ => {
                        tracing::debug!(error = %e.error(), "forwarding failed");
                        return text(StatusCode::BAD_GATEWAY, "the agent went away");
                    }
                }
            }
        }
    };

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(public_upgrade) = public_upgrade else {
            lease.discard();
            return text(
                StatusCode::BAD_GATEWAY,
                "the agent switched protocols unasked",
            );
        };
        return tunnel(shared, lease, public_upgrade, response);
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let body = Tracked::new(body, shared.metrics.bytes_out.clone(), None, Some(lease));
    Response::from_parts(parts, body.boxed())
}

/// The request body was handed back unsent: its completion signal must follow the new attempt.
fn replace_done(body: &mut super::registry::ForwardBody, tx: oneshot::Sender<()>) {
    // BoxBody hides the Tracked inside; wrap it again (the old signal fires harmlessly).
    let inner = std::mem::replace(
        body,
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *body = Tracked::new(inner, Arc::new(AtomicU64::new(0)), Some(tx), None).boxed();
}

/// Both sides switched: splice the public connection and the reversed connection.
fn tunnel(
    shared: &Arc<Shared>,
    lease: Lease,
    public: hyper::upgrade::OnUpgrade,
    mut response: Response<Incoming>,
) -> Response<RelayBody> {
    let agent = hyper::upgrade::on(&mut response);
    let parked = lease.detach();
    let hard = shared.hard.clone();
    let metrics = shared.metrics.clone();
    tokio::spawn(async move {
        let _keep = parked;
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
            .boxed(),
    )
}

pin_project_lite::pin_project! {
    /// A body that counts its bytes, says when it ended, and holds the lease of the
    /// connection it comes from until then.
    struct Tracked<B> {
        #[pin]
        inner: B,
        counter: Arc<AtomicU64>,
        done: Option<oneshot::Sender<()>>,
        lease: Option<Lease>,
    }
}

impl<B> Tracked<B> {
    fn new(
        inner: B,
        counter: Arc<AtomicU64>,
        done: Option<oneshot::Sender<()>>,
        lease: Option<Lease>,
    ) -> Self {
        Tracked {
            inner,
            counter,
            done,
            lease,
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
                this.done.take();
                // The exchange is complete: park the connection again.
                this.lease.take();
            }
            Poll::Ready(Some(Err(_))) => {
                this.done.take();
                if let Some(l) = this.lease.take() {
                    l.discard();
                }
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
