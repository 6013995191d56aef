//! The service `ptth-connect` serves: forward each reversed request to a local upstream.
//!
//! It runs on the forwarding engine (`src/h1`), not on hyper: each reversed connection is
//! read by the engine, which forwards one request at a time to the connection's own upstream
//! connection (dialed on the first request and again whenever it has closed, in the same task)
//! and the response back. Bodies stream both ways (nothing is buffered), hop-by-hop fields are
//! dropped as RFC 9110 §7.6.1 says, the request target is rewritten onto the upstream (with its
//! path as a prefix) and `Host` is set to the upstream's authority (or, with
//! [`HostHeader::Keep`], the public `Host` passes as it came). A request with `Upgrade`
//! (WebSocket) is forwarded with its upgrade fields; if the upstream answers `101`, the two
//! streams are spliced. An unreachable upstream gets a `502` that says only that (the upstream's
//! address and the OS error are for the agent's log, at WARN, not for the public). A body
//! that expects `100 Continue` is held back until the upstream answers `100` or
//! [`CONTINUE_WAIT`] passes, so the relay's `100` comes from the upstream and a refusal costs
//! no upload; an HTTP/1.0 upstream is answered for in HTTP/1.1.
//!
//! On a reversed HTTP/2 connection (`ptth` with `ALPN: h2`) the same rewriting runs per stream
//! in `super::forward_h2`, over a small pool of upstream connections shared by all streams.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::Uri;
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use super::AgentError;
use super::config::{
    DEFAULT_UPSTREAM_CONNECT_TIMEOUT, DEFAULT_UPSTREAM_CONNECTIONS, REPLAY_PIPE_BYTES,
    UPSTREAM_MAX_BUF, default_tls,
};
use super::conn::{InFlight, Parked, Serve};
use super::dial::BoxedIo;
use super::forward_h2::{Forward, Upstreams};
use super::inspect::{Inspector, QUEUE_WAIT_FIELD};
use super::target::Upstream;
use crate::dialer::Flipped;
use crate::h1::tap::Tap;
use crate::h1::{self, After, BoxError, Conn, Record, Route};
use crate::limits::Limits;
use crate::proto::head;
use crate::proto::path::{self, AboveRoot, PathError};

/// Forwards requests to one upstream `http://` or `https://` URL. Cheap to clone.
///
/// Each reversed connection keeps one keep-alive upstream connection, dialed on its first
/// request and again whenever it has closed, and run in the reversed connection's own task (no
/// pool, no extra task per upstream connection).
#[derive(Clone, Debug)]
pub struct Proxy {
    cfg: Arc<ProxyConfig>,
    /// The upstream pool of the HTTP/2 connections, made on the first of them (with the
    /// settings in force then) and shared by every clone.
    h2: Arc<OnceLock<Upstreams>>,
}

/// The `Host` the upstream sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HostHeader {
    /// The upstream's own authority (`--to`'s host and port): what a local service expects.
    #[default]
    Upstream,
    /// The public client's `Host`, as the relay passed it (`--host-header keep`): for a service
    /// that builds absolute URLs or routes virtual hosts by it.
    Keep,
}

#[derive(Debug, Clone)]
pub(super) struct ProxyConfig {
    pub(super) upstream: Upstream,
    pub(super) host_header: HostHeader,
    /// TLS for an `https://` upstream: SNI and verification use the URL's host.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Deadline of the TCP connect, and again of the TLS handshake.
    connect_timeout: Duration,
    /// Most upstream connections (requests in flight) of the HTTP/2 connections.
    upstream_connections: usize,
    /// The request inspector each exchange is shown to (`ptth-connect --inspect`).
    inspector: Option<Inspector>,
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
                host_header: HostHeader::Upstream,
                tls,
                connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
                upstream_connections: DEFAULT_UPSTREAM_CONNECTIONS,
                inspector: None,
            }),
            h2: Arc::new(OnceLock::new()),
        })
    }

    /// On reversed HTTP/2 connections: the most upstream connections open at once, shared by
    /// all streams (requests past it wait for one). At least 1. Default:
    /// [`DEFAULT_UPSTREAM_CONNECTIONS`]. (The HTTP/1.1 path keeps one upstream connection per
    /// reversed connection instead.)
    pub fn upstream_connections(mut self, n: usize) -> Proxy {
        Arc::make_mut(&mut self.cfg).upstream_connections = n.max(1);
        self
    }

    /// Deadline for the TCP connect to the upstream, and again for its TLS handshake; past it
    /// the request gets `502`. Default: [`DEFAULT_UPSTREAM_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, d: Duration) -> Proxy {
        Arc::make_mut(&mut self.cfg).connect_timeout = d;
        self
    }

    /// Which `Host` the upstream sees. Default: [`HostHeader::Upstream`].
    pub fn host_header(mut self, h: HostHeader) -> Proxy {
        Arc::make_mut(&mut self.cfg).host_header = h;
        self
    }
    /// Show every exchange to `inspector` (serve it with [`super::inspect::serve`]).
    pub fn inspect(mut self, inspector: Inspector) -> Proxy {
        Arc::make_mut(&mut self.cfg).inspector = Some(inspector);
        self
    }

    /// Send one request (a whole HTTP/1.1 message) upstream the way reversed requests go, on
    /// the same route and engine, over an in-memory stream in place of a reversed connection;
    /// `tap` sees it. The response is read and dropped: the tap keeps what it keeps.
    pub(crate) async fn replay(&self, request: &[u8], tap: &dyn Tap, limits: &Limits) {
        let (mut client, server) = tokio::io::duplex(REPLAY_PIPE_BYTES);
        let response_limits = upstream_limits(limits);
        // The replay is the only request on its stream: its response says so.
        let closing = || true;
        let settings = h1::Settings {
            tap: Some(tap),
            ..h1::Settings::new(limits, &response_limits, &closing)
        };
        let mut inbound = Conn::new(server, b"", limits);
        let forward = async move {
            let mut record = Record::default();
            h1::exchange(&mut inbound, &mut None, &*self.cfg, &settings, &mut record).await;
            // Dropping the stream ends the response for the reader below.
        };
        let client = async {
            if client.write_all(request).await.is_ok() {
                let _ = tokio::io::copy(&mut client, &mut tokio::io::sink()).await;
            }
        };
        tokio::join!(forward, client);
    }
}

/// The engine's limits for the upstream side of an exchange: heads and buffers of
/// [`UPSTREAM_MAX_BUF`].
fn upstream_limits(limits: &Limits) -> Limits {
    Limits {
        max_head_bytes: UPSTREAM_MAX_BUF,
        buffer_bytes: UPSTREAM_MAX_BUF,
        ..limits.clone()
    }
}

impl Serve for Proxy {
    type H2 = Forward;

    /// The HTTP/2 forwarder: its upstream connections are shared by every reversed HTTP/2
    /// connection of this proxy, opened on the first.
    fn h2(&self) -> Forward {
        let upstreams = self
            .h2
            .get_or_init(|| Upstreams::new(self.cfg.clone(), self.cfg.upstream_connections));
        Forward {
            cfg: self.cfg.clone(),
            upstreams: upstreams.clone(),
        }
    }

    /// Forward the reversed connection's requests one by one until the relay closes it, it
    /// idles past [`Limits::idle_timeout`], or the pool stops it (between requests, or after
    /// the one in flight).
    async fn serve_h1(&self, flipped: Flipped<BoxedIo>, on: Parked<'_>) {
        let Parked {
            config,
            track,
            graceful,
        } = on;
        let limits = &config.limits;
        let (already, io) = flipped.into_parts();
        let mut inbound = Conn::new(io, &already, limits);
        let mut upstream = None;
        let response_limits = upstream_limits(limits);
        let closing = || graceful.is_cancelled();
        let settings = h1::Settings {
            tap: self.cfg.inspector.as_ref().map(|i| i as &dyn Tap),
            ..h1::Settings::new(limits, &response_limits, &closing)
        };
        let route = &*self.cfg;
        // One wait for the stop for the connection's whole life, not one per request.
        let cancelled = graceful.cancelled();
        tokio::pin!(cancelled);
        // And one idle timer, moved later before each wait (as the relay's public side does):
        // a timer made per request costs the timer wheel an insert and a removal each time,
        // moving a registered one later costs nothing there.
        let idle = tokio::time::sleep(limits.idle_timeout.unwrap_or_default());
        tokio::pin!(idle);
        loop {
            if inbound.rbuf.is_empty() {
                // Parked or between requests: this may last for hours (decisions D12).
                if let Some(d) = limits.idle_timeout {
                    idle.as_mut().reset(tokio::time::Instant::now() + d);
                }
                // The read first: a wake with the next request skips polling the stop (a lock
                // in tokio-util each time); a request the relay already sent is served, and the
                // stop is seen at the next wait.
                tokio::select! {
                    biased;
                    read = inbound.fill() => match read {
                        Ok(n) if n > 0 => {}
                        _ => return,
                    },
                    () = &mut cancelled => return,
                    () = &mut idle, if limits.idle_timeout.is_some() => return,
                }
            }
            // Busy from the first byte of a request until its response is done.
            let _busy = InFlight::start(&track);
            // The status and the time to the response head, for the metrics.
            let mut record = Record::default();
            let after =
                h1::exchange(&mut inbound, &mut upstream, route, &settings, &mut record).await;
            if let Some(status) = record.status() {
                track.gauge.metrics.request(status, record.head());
            }
            match after {
                // A stop between requests is seen by the wait above; a pipelined request
                // behind this one is served only if no stop came.
                After::KeepAlive if inbound.rbuf.is_empty() || !graceful.is_cancelled() => {}
                After::Switched => {
                    // The tunnel is no longer a reversed connection: it lives in its own task
                    // (outside the drain), and the pool parks a replacement.
                    if let Some(up) = upstream.take() {
                        tokio::spawn(
                            h1::tunnel(inbound, up).instrument(tracing::info_span!("upgraded")),
                        );
                    }
                    return;
                }
                _ => return,
            }
        }
    }
}

impl Route for ProxyConfig {
    type Io = BoxedIo;

    fn target(&self, target: &str, out: &mut BytesMut) -> Result<(), String> {
        upstream_target(&self.upstream.prefix, target, out)
            .map_err(|e| format!("bad request target: {e}\n"))
    }

    /// The relay's `Host` is replaced by the upstream's (unless it is kept);
    /// `Proxy-Authorization` is meant for a proxy on the way and must not reach the origin, and
    /// the relay's queue wait is for the agent alone.
    fn drops(&self, name: &str) -> bool {
        (self.host_header == HostHeader::Upstream && name.eq_ignore_ascii_case("host"))
            || name.eq_ignore_ascii_case("proxy-authorization")
            || name.eq_ignore_ascii_case(QUEUE_WAIT_FIELD)
    }

    fn add_fields(&self, _req: &head::Request<'_, '_>, out: &mut BytesMut) {
        if self.host_header == HostHeader::Upstream {
            out.put_slice(b"host: ");
            out.put_slice(self.upstream.endpoint.authority.as_bytes());
            out.put_slice(b"\r\n");
        }
    }

    async fn connect(&self) -> Result<BoxedIo, BoxError> {
        connect_upstream(self).await
    }

    fn failed(&self, why: &dyn std::fmt::Display) -> String {
        tracing::warn!(upstream = %self.upstream.endpoint.authority_str(), error = %why, "upstream request failed");
        // The upstream's address and the OS error are internal: the log has them.
        "502 Bad Gateway: the agent could not reach its upstream (its log says why)\n".into()
    }
}

/// Dial the upstream: the only place that knows the transport (TLS for an `https://`
/// upstream). The system resolver, every address in turn (a `localhost` upstream may listen
/// on `::1`).
pub(super) async fn connect_upstream(cfg: &ProxyConfig) -> Result<BoxedIo, BoxError> {
    let endpoint = &cfg.upstream.endpoint;
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
    Ok(io)
}

/// Write the request target sent upstream: origin-form, with the upstream's path as a prefix.
///
/// The path is normalised first, whatever the relay sent (it may not be ours): dot segments
/// are removed, a `..` at the root stays at the root, so nothing climbs above the prefix, and a
/// dot segment hidden behind `%2F`, `\` or `;` is refused (decisions D22). `*` and the
/// authority form become the prefix's root; the absolute form keeps its path and query.
pub(super) fn upstream_target(
    prefix: &str,
    target: &str,
    out: &mut BytesMut,
) -> Result<(), BadTarget> {
    let pq: Cow<'_, str> = if target.starts_with('/') {
        Cow::Borrowed(target)
    } else {
        let uri: Uri = target.parse()?;
        match uri.path_and_query().map(|pq| pq.as_str()) {
            Some(pq) if pq.starts_with('/') => Cow::Owned(pq.to_string()),
            _ => Cow::Borrowed("/"),
        }
    };
    let pq = path::normalize(&pq, AboveRoot::Stay)?;
    out.put_slice(prefix.as_bytes());
    out.put_slice(pq.as_bytes());
    Ok(())
}

/// Why a reversed request's target cannot be sent upstream.
#[derive(Debug, thiserror::Error)]
pub(super) enum BadTarget {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("invalid request target")]
    Uri(#[from] http::uri::InvalidUri),
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    fn target_of(p: &Proxy, target: &str) -> Result<String, BadTarget> {
        let mut out = BytesMut::new();
        upstream_target(&p.cfg.upstream.prefix, target, &mut out)?;
        Ok(String::from_utf8(out.to_vec()).unwrap())
    }

    #[test]
    fn uris_are_rewritten_onto_the_upstream() {
        let p = Proxy::new("http://127.0.0.1:3000").unwrap();
        let u = target_of(&p, "/a/b?c=d").unwrap();
        assert_eq!(u, "/a/b?c=d");
        let u = target_of(&p, "http://elsewhere/a?b").unwrap();
        assert_eq!(u, "/a?b");
        let p = Proxy::new("http://127.0.0.1:3000/base/").unwrap();
        let u = target_of(&p, "/x").unwrap();
        assert_eq!(u, "/base/x");
        let u = target_of(&p, "*").unwrap();
        assert_eq!(u, "/base/");
        // Nothing climbs above the prefix (issue 11 item 1).
        for (target, want) in [
            ("/../etc/passwd", "/base/etc/passwd"),
            ("/%2e%2e/%2E%2E/x?q=..", "/base/x?q=.."),
            ("/a/.%2E/../x", "/base/x"),
            ("/./x/.", "/base/x/"),
            ("http://elsewhere/../x", "/base/x"),
        ] {
            let u = target_of(&p, target).unwrap();
            assert_eq!(u, want, "{target}");
        }
        assert!(target_of(&p, "/..%2fx").is_err());
        let p = Proxy::new("http://127.0.0.1:3000").unwrap();
        assert_eq!(target_of(&p, "/a/../../b").unwrap(), "/b");
        assert_eq!(target_of(&p, "*").unwrap(), "/");
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
            h1::ErrorChain(&*err).to_string().contains("timed out"),
            "{}",
            h1::ErrorChain(&*err).to_string()
        );
    }
}
