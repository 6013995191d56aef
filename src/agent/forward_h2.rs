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
//! upstream's address (that goes to the log). Extended CONNECT (RFC 8441) is answered `501`:
//! WebSocket over this path is not forwarded yet.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{HOST, PROXY_AUTHORIZATION};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
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
    /// One permit per request in flight upstream, held until its response body is done.
    permits: Arc<Semaphore>,
}

impl Upstreams {
    /// At most `connections` requests in flight upstream, and so at most that many upstream
    /// connections (idle ones are kept for reuse, up to the same number).
    pub(super) fn new(cfg: Arc<ProxyConfig>, connections: usize) -> Upstreams {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            // `Host` is set by the proxy (the upstream's authority), as on HTTP/1.1.
            .set_host(false)
            .build(Connector(cfg));
        Upstreams {
            client,
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
            return text(
                StatusCode::NOT_IMPLEMENTED,
                "501 Not Implemented: the agent does not forward CONNECT (WebSocket over HTTP/2 \
                 is not supported yet)\n",
            );
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
            Err(e) => {
                let why = failure(&e);
                tracing::warn!(
                    upstream = %self.cfg.upstream.endpoint.authority_str(),
                    error = %chain(&e),
                    "upstream request failed"
                );
                text(
                    StatusCode::BAD_GATEWAY,
                    &format!("502 Bad Gateway: the agent could not reach its upstream: {why}\n"),
                )
            }
        }
    }

    /// The upstream request: target rewritten onto the upstream (prefix, dot segments),
    /// hop-by-hop fields and `Proxy-Authorization` dropped, `Host` the upstream's authority.
    fn rewrite(&self, req: Request<Incoming>) -> Result<Request<Incoming>, String> {
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
