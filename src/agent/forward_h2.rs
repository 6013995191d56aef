//! The proxy on a reversed HTTP/2 connection (`ptth` with `ALPN: h2`): each stream is one
//! request, forwarded to the upstream over HTTP/1.1 and answered on its stream.
//!
//! ```text
//! relay ══ h2 streams ══> Flipped::serve_h2 ─> Forward::call ─┬─> upstream conn 1 (HTTP/1.1)
//!                         (conn::serve_h2)     target, Host,  ├─> upstream conn 2
//!                                              hop-by-hop     └─> ... at most `upstream_connections`
//! ```
//!
//! The HTTP/1.1 path (`super::proxy`, on the `src/h1` engine) keeps one upstream connection per
//! reversed connection, because it serves one request at a time. Here one reversed connection
//! carries many requests at once, so the agent shares a small bounded pool of keep-alive
//! upstream connections between all its HTTP/2 streams: hyper-util's client, which reuses idle
//! connections, behind a semaphore that bounds the requests in flight, and so the connections
//! (decisions D76). The request rewriting is the HTTP/1.1 path's: the same target rewrite
//! ([`super::proxy::upstream_target`]), the same dropped fields, the same `Host`, the same
//! upstream dial (TCP tuned, TLS for `https://`).
//!
//! Bodies stream both ways: a stream's request body is the upstream request's body, the
//! upstream's response body is the stream's, with HTTP/2 flow control on one side and TCP on
//! the other, so a slow reader holds back only its own stream and its upstream connection. An
//! upstream that cannot be reached is a `502` whose body says why in words, without the
//! upstream's address (that goes to the log). Extended CONNECT with `:protocol websocket`
//! (RFC 8441) becomes the upstream's HTTP/1.1 WebSocket upgrade, and the stream and the
//! upgraded connection are spliced; any other CONNECT is `501`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, HOST, HeaderValue, PROXY_AUTHORIZATION, UPGRADE};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Semaphore;

use super::BoxError;
use super::conn::Guarded;
use super::dial::BoxedIo;
use super::proxy::{ProxyConfig, connect_upstream, upstream_target};
use crate::proto::hop::{Keep, strip_hop_by_hop};

/// What a forwarded stream answers with: the upstream's body, or a short text of ours.
pub(super) type ForwardBody = BoxBody<Bytes, BoxError>;

/// The upstream side shared by every HTTP/2 stream of one agent: the client over the bounded
/// pool of upstream connections. Cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Upstreams {
    client: Client<Connector, Incoming>,
    /// For WebSocket upgrades, which send no body and take their connection out of the pool.
    upgrades: Client<Connector, Empty<Bytes>>,
    /// One permit per request in flight upstream, held until its response body is done.
    permits: Arc<Semaphore>,
}

impl Upstreams {
    /// At most `connections` requests in flight upstream, and so at most that many upstream
    /// connections (idle ones are kept for reuse, up to the same number).
    pub(super) fn new(cfg: Arc<ProxyConfig>, connections: usize) -> Upstreams {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_max_idle_per_host(connections)
            // `Host` is set by the proxy (the upstream's authority), as on HTTP/1.1.
            .set_host(false);
        Upstreams {
            client: builder.build(Connector(cfg.clone())),
            upgrades: builder.build(Connector(cfg)),
            permits: Arc::new(Semaphore::new(connections)),
        }
    }
}

/// The hyper service a reversed HTTP/2 connection of `ptth-connect` serves.
#[derive(Clone)]
pub(super) struct Forward {
    pub(super) cfg: Arc<ProxyConfig>,
    pub(super) upstreams: Upstreams,
}

impl hyper::service::Service<Request<Incoming>> for Forward {
    type Response = Response<ForwardBody>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

impl Forward {
    async fn forward(self, req: Request<Incoming>) -> Response<ForwardBody> {
        if req.method() == Method::CONNECT {
            return self.websocket(req).await;
        }
        let req = match self.rewrite(req) {
            Ok(req) => req,
            Err(why) => return text(StatusCode::BAD_REQUEST, &why),
        };
        let Ok(permit) = self.upstreams.permits.clone().acquire_owned().await else {
            return text(
                StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: the agent is stopping\n",
            );
        };
        match self.upstreams.client.request(req).await {
            Ok(res) => {
                let (mut parts, body) = res.into_parts();
                strip_hop_by_hop(&mut parts.headers, Keep::default());
                parts.version = Version::HTTP_2;
                let body = Guarded {
                    inner: body,
                    _guard: permit,
                };
                Response::from_parts(parts, body.map_err(BoxError::from).boxed())
            }
            Err(e) => self.unreachable(&e),
        }
    }

    /// Extended CONNECT with `:protocol websocket` (RFC 8441): the upstream gets the HTTP/1.1
    /// WebSocket upgrade (RFC 6455 §4.1: `GET`, `Upgrade: websocket`, a fresh
    /// `Sec-WebSocket-Key`); on its `101` the stream is answered `200` and the two are spliced.
    /// Any other CONNECT is `501`: the agent forwards to one upstream, it is no tunnel.
    async fn websocket(self, mut req: Request<Incoming>) -> Response<ForwardBody> {
        let websocket = req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        if !websocket {
            return text(
                StatusCode::NOT_IMPLEMENTED,
                "501 Not Implemented: the agent forwards CONNECT only as a WebSocket \
                 (:protocol websocket)\n",
            );
        }
        let stream = hyper::upgrade::on(&mut req);
        // The stream itself is the tunnel: the upstream request has no body.
        let (parts, _) = req.into_parts();
        let mut up = match self.rewrite(Request::from_parts(parts, Empty::<Bytes>::new())) {
            Ok(up) => up,
            Err(why) => return text(StatusCode::BAD_REQUEST, &why),
        };
        *up.method_mut() = Method::GET;
        let headers = up.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        headers.insert(
            "sec-websocket-key",
            HeaderValue::from_str(&key).expect("base64 is a field value"),
        );
        let Ok(permit) = self.upstreams.permits.clone().acquire_owned().await else {
            return text(
                StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: the agent is stopping\n",
            );
        };
        let mut res = match self.upstreams.upgrades.request(up).await {
            Ok(res) => res,
            Err(e) => return self.unreachable(&e),
        };
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            // A refusal (a 401, a 404): passed back as it is, body and all.
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers, Keep::default());
            let body = Guarded {
                inner: body,
                _guard: permit,
            };
            return Response::from_parts(parts, body.map_err(BoxError::from).boxed());
        }
        let upstream = hyper::upgrade::on(&mut res);
        tokio::spawn(async move {
            let _permit = permit;
            let (Ok(stream), Ok(upstream)) = tokio::join!(stream, upstream) else {
                return;
            };
            let (mut a, mut b) = (TokioIo::new(stream), TokioIo::new(upstream));
            if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
                tracing::debug!(error = %e, "WebSocket over HTTP/2 ended with an error");
            }
        });
        let (mut parts, _) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers, Keep::default());
        parts.headers.remove("sec-websocket-accept");
        parts.status = StatusCode::OK;
        Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed())
    }

    /// The `502` for an upstream that cannot be reached, and its log line.
    fn unreachable(&self, e: &hyper_util::client::legacy::Error) -> Response<ForwardBody> {
        tracing::warn!(
            upstream = %self.cfg.upstream.endpoint.authority_str(),
            error = %chain(e),
            "upstream request failed"
        );
        text(
            StatusCode::BAD_GATEWAY,
            &format!(
                "502 Bad Gateway: the agent could not reach its upstream: {}\n",
                failure(e)
            ),
        )
    }

    /// The upstream request: target rewritten onto the upstream (prefix, dot segments),
    /// hop-by-hop fields and `Proxy-Authorization` dropped, `Host` the upstream's authority.
    fn rewrite<B>(&self, req: Request<B>) -> Result<Request<B>, String> {
        let (mut parts, body) = req.into_parts();
        let endpoint = &self.cfg.upstream.endpoint;
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut path = BytesMut::new();
        upstream_target(&self.cfg.upstream.prefix, pq, &mut path)
            .map_err(|e| format!("400 Bad Request: bad request target: {e}\n"))?;
        let path = std::str::from_utf8(&path).map_err(|_| "400 Bad Request\n".to_string())?;
        // The client needs an absolute URI to pick a pooled connection; it sends origin form.
        parts.uri = Uri::builder()
            .scheme(endpoint.scheme())
            .authority(endpoint.authority_str())
            .path_and_query(path)
            .build()
            .map_err(|e| format!("400 Bad Request: bad request target: {e}\n"))?;
        strip_hop_by_hop(&mut parts.headers, Keep::default());
        parts.headers.remove(PROXY_AUTHORIZATION);
        parts.headers.insert(HOST, endpoint.authority.clone());
        parts.version = Version::HTTP_11;
        Ok(Request::from_parts(parts, body))
    }
}

/// An error and its sources, `: `-separated, for the log.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Why the upstream failed, in words that name no address.
fn failure(e: &hyper_util::client::legacy::Error) -> &'static str {
    if e.is_connect() {
        "the connection failed (refused, timed out, or TLS)"
    } else {
        "the upstream closed or broke off the exchange"
    }
}

fn text(status: StatusCode, body: &str) -> Response<ForwardBody> {
    let mut res = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// Dials the upstream for the client: the HTTP/1.1 path's dial ([`connect_upstream`]),
/// whatever URI the client asks for (it is always the upstream's).
#[derive(Clone, Debug)]
struct Connector(Arc<ProxyConfig>);

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Upstream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let cfg = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(Upstream(connect_upstream(&cfg).await?))) })
    }
}

/// An upstream connection, as the client's pool wants it (a `Connection`).
struct Upstream(BoxedIo);

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl tokio::io::AsyncRead for Upstream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Upstream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
