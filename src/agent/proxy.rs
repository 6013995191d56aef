//! The service `ptth-connect` serves: forward each reversed request to a local upstream.
//!
//! Bodies stream both ways (nothing is buffered), hop-by-hop fields are dropped as RFC 9110
//! §7.6.1 says, the request URI is rewritten onto the upstream (with its path as a prefix) and
//! `Host` is set to the upstream's authority. A request with `Upgrade` (WebSocket) is forwarded
//! with its upgrade fields; if the upstream answers `101`, the two upgraded streams are spliced.
//! An unreachable upstream gets `502` with a plain-text reason. A body that expects
//! `100 Continue` is held back until the upstream answers `100` or [`CONTINUE_WAIT`] passes
//! (`crate::expect`), so the relay's `100` comes from the upstream and a refusal costs no
//! upload; an HTTP/1.0 upstream is answered for in HTTP/1.1.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tracing::{Instrument, debug, info_span, warn};

use super::config::{DEFAULT_UPSTREAM_CONNECT_TIMEOUT, UPSTREAM_MAX_BUF, default_tls};
use super::target::Upstream;
use super::{AgentError, BoxError};
use crate::expect::{Gate, Gated, gate};
use crate::limits::CONTINUE_WAIT;
use crate::proto::hop::{Keep, strip_hop_by_hop};
use crate::proto::path::{self, AboveRoot, PathError};
use crate::proto::response::drop_length_beside_chunked;

/// Response body of the proxy.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A reversed request's body on its way upstream (held back while it waits for a `100`).
type UpstreamBody = Gated<Incoming>;

/// The future that runs one upstream HTTP/1.1 connection (boxed so that plain TCP and, later,
/// TLS upstreams have one type).
type UpstreamConn = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// Forwards requests to one upstream `http://` or `https://` URL. Cheap to clone.
///
/// Each reversed connection gets its own [`ProxyConn`] (the service) and [`UpstreamDriver`]
/// from [`Proxy::connection`]: one keep-alive upstream connection per reversed connection,
/// dialed on the first request and again whenever it has closed, and run by the driver inside
/// the reversed connection's own task (no pool, no extra task per upstream connection).
#[derive(Clone, Debug)]
pub struct Proxy {
    cfg: Arc<ProxyConfig>,
}

#[derive(Debug, Clone)]
struct ProxyConfig {
    upstream: Upstream,
    /// TLS for an `https://` upstream: SNI and verification use the URL's host.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Deadline of the TCP connect, and again of the TLS handshake.
    connect_timeout: Duration,
}

impl Proxy {
    /// A proxy to `upstream` (`http://host:port` or `https://host:port`, with an optional path
    /// prefix). An `https://` upstream is verified against the system's roots.
    pub fn new(upstream: &str) -> Result<Proxy, AgentError> {
        Proxy::with_tls(upstream, None)
    }

    /// Like [`Proxy::new`], with the TLS configuration for an `https://` upstream (a private
    /// CA, say; see [`crate::tls::client_config`]). `None` means the system's roots.
    pub fn with_tls(
        upstream: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Proxy, AgentError> {
        let upstream = Upstream::parse(upstream)?;
        let tls = match (upstream.endpoint.tls, tls) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(default_tls()?),
        };
        Ok(Proxy {
            cfg: Arc::new(ProxyConfig {
                upstream,
                tls,
                connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            }),
        })
    }

    /// Deadline for the TCP connect to the upstream, and again for its TLS handshake; past it
    /// the request gets `502`. Default: [`DEFAULT_UPSTREAM_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, d: Duration) -> Proxy {
        Arc::make_mut(&mut self.cfg).connect_timeout = d;
        self
    }

    /// The service for one reversed connection, and the driver of its upstream connection.
    /// Poll the driver in the same task as the connection that calls the service (it never
    /// completes; drop it when the connection is done).
    pub fn connection(&self) -> (ProxyConn, UpstreamDriver) {
        let slot = Arc::new(Mutex::new(Slot::default()));
        (
            ProxyConn {
                cfg: self.cfg.clone(),
                slot: slot.clone(),
            },
            UpstreamDriver { slot },
        )
    }

    /// The request target sent upstream: origin-form, with the upstream's path as a prefix.
    ///
    /// The path is normalised first, whatever the relay sent (it may not be ours): dot
    /// segments are removed, a `..` at the root stays at the root, so nothing climbs above the
    /// prefix, and a dot segment hidden behind `%2F`, `\` or `;` is refused (decisions D22).
    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, BadTarget> {
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        if !pq.starts_with('/') {
            // `*` or an absolute form: keep only what a proxy can forward.
            let root = format!("{}/", self.cfg.upstream.prefix);
            return Ok(Uri::from(PathAndQuery::try_from(root)?));
        }
        let pq = path::normalize(pq, AboveRoot::Stay)?;
        if self.cfg.upstream.prefix.is_empty() {
            if uri.scheme().is_none() && uri.authority().is_none() && matches!(pq, Cow::Borrowed(_))
            {
                // Already origin-form and clean: keep it as it is (no copy).
                return Ok(uri.clone());
            }
            return Ok(Uri::from(PathAndQuery::try_from(&*pq)?));
        }
        let pq = format!("{}{pq}", self.cfg.upstream.prefix);
        Ok(Uri::from(PathAndQuery::try_from(pq)?))
    }
}

/// Why a reversed request's target cannot be sent upstream.
#[derive(Debug, thiserror::Error)]
enum BadTarget {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("invalid request target")]
    Uri(#[from] http::uri::InvalidUri),
}

/// The upstream connection of one reversed connection, shared by its service and its driver.
#[derive(Default)]
struct Slot {
    /// Idle between requests; taken out while a request is being sent.
    sender: Option<SendRequest<UpstreamBody>>,
    /// The current upstream connection, polled by the driver; `None` once it has ended.
    conn: Option<UpstreamConn>,
    /// The driver's task, woken when a new connection is put in.
    waker: Option<Waker>,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the upstream connection of one reversed connection. Never completes.
pub struct UpstreamDriver {
    slot: Arc<Mutex<Slot>>,
}

impl std::fmt::Debug for UpstreamDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamDriver").finish_non_exhaustive()
    }
}

impl Future for UpstreamDriver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = lock(&self.slot);
        if let Some(conn) = slot.conn.as_mut()
            && let Poll::Ready(res) = conn.as_mut().poll(cx)
        {
            if let Err(e) = res {
                debug!(error = %e, "upstream connection ended with an error");
            }
            // The next request dials again.
            slot.conn = None;
            slot.sender = None;
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Dial the upstream and start an HTTP/1.1 connection on it; the only place that knows the
/// transport (TLS for an `https://` upstream).
async fn connect_upstream(
    cfg: &ProxyConfig,
) -> Result<(SendRequest<UpstreamBody>, UpstreamConn), BoxError> {
    let endpoint = &cfg.upstream.endpoint;
    // The system resolver, every address in turn (a `localhost` upstream may listen on `::1`).
    let addrs = (endpoint.host.as_str(), endpoint.port);
    let shown = endpoint.authority_str();
    let io = super::dial::open(
        endpoint,
        addrs,
        &shown,
        cfg.tls.as_ref(),
        cfg.connect_timeout,
    )
    .await?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(UPSTREAM_MAX_BUF)
        .handshake(TokioIo::new(io))
        .await?;
    Ok((sender, Box::pin(conn.with_upgrades())))
}

/// The proxy service of one reversed connection (see [`Proxy::connection`]).
#[derive(Clone)]
pub struct ProxyConn {
    cfg: Arc<ProxyConfig>,
    slot: Arc<Mutex<Slot>>,
}

impl std::fmt::Debug for ProxyConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConn")
            .field("upstream", &self.cfg.upstream.endpoint.url)
            .finish_non_exhaustive()
    }
}

impl ProxyConn {
    /// A sender on a live upstream connection: the current one, or a new one.
    async fn sender(&self, fresh: bool) -> Result<SendRequest<UpstreamBody>, BoxError> {
        if !fresh {
            let current = lock(&self.slot).sender.take();
            if let Some(mut sender) = current {
                // Waits for the previous exchange to finish; fails if the connection closed.
                if sender.ready().await.is_ok() {
                    return Ok(sender);
                }
            }
        }
        let (sender, conn) = connect_upstream(&self.cfg).await?;
        let mut slot = lock(&self.slot);
        slot.conn = Some(conn);
        if let Some(w) = &slot.waker {
            w.wake_by_ref();
        }
        drop(slot);
        Ok(sender)
    }

    /// Send `req` upstream; if the connection turns out to be closed before the request went
    /// out (keep-alive race), dial once more and send it there.
    async fn send(&self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, BoxError> {
        let mut sender = self.sender(false).await?;
        let err = match sender.try_send_request(req).await {
            Ok(res) => {
                lock(&self.slot).sender = Some(sender);
                return Ok(res);
            }
            Err(mut e) => match e.take_message() {
                Some(req) => req,
                None => return Err(e.into_error().into()),
            },
        };
        debug!("upstream connection closed before the request went out: dialing again");
        let mut sender = self.sender(true).await?;
        sender.ready().await?;
        let res = sender.send_request(err).await?;
        lock(&self.slot).sender = Some(sender);
        Ok(res)
    }

    async fn forward(self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let upgrade = wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let proxy = Proxy {
            cfg: self.cfg.clone(),
        };
        let uri = match proxy.upstream_uri(req.uri()) {
            Ok(uri) => uri,
            Err(e) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("bad request target: {e}\n"),
                );
            }
        };
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_11;
        strip_for_upstream(req.headers_mut(), upgrade);
        req.headers_mut()
            .insert(header::HOST, self.cfg.upstream.endpoint.authority.clone());
        let (parts, body) = req.into_parts();
        // An upgrade's body (rare) goes as it comes: its connection becomes a tunnel.
        let (body, continue_gate) = if upgrade {
            (Gated::open(body), None)
        } else {
            gate(&parts.headers, body, CONTINUE_WAIT)
        };
        let mut req = Request::from_parts(parts, body);
        if let Some(g) = &continue_gate {
            g.watch(&mut req);
        }

        let mut res = match self.send(req).await {
            Ok(res) => res,
            Err(e) if request_body_failed(&*e) => {
                // Not the upstream's fault: the request body coming over the reversed
                // connection was cut or malformed (on the relay's side, or by its client).
                debug!(upstream = %self.cfg.upstream.endpoint.authority_str(), error = %error_chain(&*e), "request body cut off before it reached the upstream in full");
                return plain(
                    StatusCode::BAD_REQUEST,
                    "400 Bad Request: the request body ended early or was malformed\n",
                );
            }
            Err(e) => {
                warn!(upstream = %self.cfg.upstream.endpoint.authority_str(), error = %e, "upstream request failed");
                let text = format!(
                    "502 Bad Gateway: the agent could not reach its upstream {}://{}: {}\n",
                    self.cfg.upstream.endpoint.scheme(),
                    self.cfg.upstream.endpoint.authority_str(),
                    error_chain(&*e)
                );
                return plain(StatusCode::BAD_GATEWAY, text);
            }
        };
        if res.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut res);
            // The upstream connection now belongs to the tunnel: it finishes in the tunnel's
            // task (handing over its stream), and the next request dials a new one.
            let conn = {
                let mut slot = lock(&self.slot);
                slot.sender = None;
                slot.conn.take()
            };
            let upstream = async move {
                if let Some(conn) = conn
                    && let Err(e) = conn.await
                {
                    debug!(error = %e, "upstream connection failed during the upgrade");
                }
                upstream_upgrade.await
            };
            tokio::spawn(splice(client_upgrade, upstream).instrument(info_span!("upgraded")));
            // Keep Upgrade and Connection on the 101.
            return res.map(|b| b.map_err(Into::into).boxed());
        }
        let conflicting = drop_length_beside_chunked(res.headers_mut());
        if conflicting {
            // The upstream and this side may disagree about where its next response starts:
            // finish this exchange, then dial a new connection for the next request.
            warn!(upstream = %self.cfg.upstream.endpoint.authority_str(), "response with both Content-Length and Transfer-Encoding; not reusing the connection");
        }
        // The upstream answered before it asked for the body: the body is never sent. That
        // upstream connection was told a body follows, and so was this reversed connection (the
        // relay does not send it either): neither is reused.
        let refused = continue_gate.as_ref().is_some_and(Gate::refuse);
        if conflicting || refused {
            lock(&self.slot).sender = None;
        }
        strip_hop_by_hop(res.headers_mut(), Keep::default());
        if refused {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // The agent speaks its own version to the relay whatever the upstream spoke (RFC 9110
        // §6.2): an HTTP/1.0 answer goes on as HTTP/1.1, framed by hyper (by its length, or
        // chunked when the upstream delimited it by closing), and the reversed connection stays.
        *res.version_mut() = http::Version::HTTP_11;
        res.map(|b| b.map_err(Into::into).boxed())
    }
}

impl hyper::service::Service<Request<Incoming>> for ProxyConn {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: impl Future<Output = hyper::Result<hyper::upgrade::Upgraded>>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => debug!(up, down, "upgraded stream closed"),
        Err(e) => debug!(error = %e, "upgraded stream failed"),
    }
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && crate::proto::tokens::members(headers, &header::CONNECTION)
            .any(|m| m.eq_ignore_ascii_case(b"upgrade"))
}

/// Strip a reversed request for the upstream: every hop-by-hop field (the upgrade pair
/// only for a pass-through upgrade) and `Proxy-Authorization`, which is meant for a proxy on
/// the way and must not reach the origin.
fn strip_for_upstream(headers: &mut HeaderMap, upgrade: bool) {
    headers.remove(header::PROXY_AUTHORIZATION);
    strip_hop_by_hop(
        headers,
        Keep {
            upgrade,
            te_trailers: false,
        },
    );
}

fn plain(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut res = Response::new(Full::new(text.into()).map_err(|e| match e {}).boxed());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// Whether an upstream request failed because its own body (the reversed request's, read
/// from the relay) failed: hyper reports that as a user error whose cause is the body's
/// `hyper::Error`.
fn request_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>().is_some_and(|h| {
        h.is_user() && std::error::Error::source(h).is_some_and(|cause| cause.is::<hyper::Error>())
    })
}

/// An error and its sources, each once: a source whose words its parent already quotes (most
/// errors here end with their source's message) is not repeated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[test]
    fn uris_are_rewritten_onto_the_upstream() {
        let p = Proxy::new("http://127.0.0.1:3000").unwrap();
        let u = p.upstream_uri(&"/a/b?c=d".parse().unwrap()).unwrap();
        assert_eq!(u, "/a/b?c=d");
        let u = p
            .upstream_uri(&"http://elsewhere/a?b".parse().unwrap())
            .unwrap();
        assert_eq!(u, "/a?b");
        let p = Proxy::new("http://127.0.0.1:3000/base/").unwrap();
        let u = p.upstream_uri(&"/x".parse().unwrap()).unwrap();
        assert_eq!(u, "/base/x");
        let u = p.upstream_uri(&"*".parse().unwrap()).unwrap();
        assert_eq!(u, "/base/");
        // Nothing climbs above the prefix (issue 11 item 1).
        for (target, want) in [
            ("/../etc/passwd", "/base/etc/passwd"),
            ("/%2e%2e/%2E%2E/x?q=..", "/base/x?q=.."),
            ("/a/.%2E/../x", "/base/x"),
            ("/./x/.", "/base/x/"),
            ("http://elsewhere/../x", "/base/x"),
        ] {
            let u = p.upstream_uri(&target.parse().unwrap()).unwrap();
            assert_eq!(u, want, "{target}");
        }
        assert!(p.upstream_uri(&"/..%2fx".parse().unwrap()).is_err());
        let p = Proxy::new("http://127.0.0.1:3000").unwrap();
        assert_eq!(
            p.upstream_uri(&"/a/../../b".parse().unwrap()).unwrap(),
            "/b"
        );
        assert_eq!(p.upstream_uri(&"*".parse().unwrap()).unwrap(), "/");
        assert!(Proxy::new("ftp://x").is_err());
        let p = Proxy::with_tls("https://up.example", None).unwrap();
        assert_eq!(p.cfg.upstream.endpoint.port, 443);
        assert!(p.cfg.tls.is_some());
    }

    /// A listener whose accept queue is full: the kernel drops further SYNs, so a connect to it
    /// hangs (as to a black-holed upstream) instead of being refused. Returns it with the
    /// connections that fill it, to keep them open.
    async fn black_hole() -> (std::net::SocketAddr, Vec<impl Sized>) {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket
            .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let mut held = vec![Box::new(socket) as Box<dyn Send>];
        // Fill the queue: each connect that completes at once takes a slot; the first one that
        // does not finish within a moment is hanging, which is what the test needs.
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => held.push(Box::new(tcp)),
                _ => return (addr, held),
            }
        }
        panic!("the accept queue of {addr} never filled");
    }

    #[tokio::test]
    async fn the_upstream_connect_has_a_deadline() {
        let (addr, _held) = black_hole().await;
        let proxy = Proxy::new(&format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), connect_upstream(&proxy.cfg))
            .await
            .expect("the upstream connect must give up at its deadline")
            .err()
            .expect("a black hole never answers");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(
            error_chain(&*err).contains("timed out"),
            "{}",
            error_chain(&*err)
        );
    }

    #[test]
    fn hop_by_hop_fields_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("proxy-authorization", "Basic eA==".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_for_upstream(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
