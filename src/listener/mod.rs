//! The listener role ("B" in the draft): the public side.
//!
//! It accepts the dialer's upgrade request, answers `101 Switching Protocols`, and then **sends**
//! HTTP requests to the dialer over the same stream:
//!
//! ```text
//! accept -> offer (validate request, read its body) -> 101 -> reverse() -> ReversedClient
//! ```
//!
//! Two ways in, one [`Offer`] type:
//! - [`raw`]: on any byte stream, without a hyper server ([`raw::read_offer`]); the listener
//!   writes the `101` or the refusal itself.
//! - [`hyper_upgrade`]: from inside a hyper or axum handler ([`hyper_upgrade::offer`]); the
//!   handler returns the `101` or the refusal as its response.
//!
//! Both judge the request with `proto::request::check_offer`, answer with the fields of
//! `proto::response`, and end in [`reverse`], which runs hyper's HTTP/1.1 *client* on the
//! flipped stream, or for a `ptth` offer that chose `ALPN: h2` in [`h2::reverse_h2`], which
//! runs hyper's HTTP/2 client and hands back a cloneable, multiplexing sender.
//! [`ReversedClient`] is the one HTTP/1.1 client of the crate for reversed connections: the
//! relay uses it too, one exchange at a time over its parked streams.

mod h2;
pub mod hyper_upgrade;
pub mod raw;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
pub use h2::{ReversedH2Client, reverse_h2};
use http::header::HOST;
use http::{HeaderValue, Request, Response, Uri, request};
use hyper::body::Incoming;
pub use hyper::client::conn::TrySendError;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::Error;
use crate::limits::Limits;
use crate::proto::Protocol;
use crate::proto::alpn::AlpnId;
use crate::proto::origin::Origin;
use crate::proto::request::{OfferRules, OfferTerms};
use crate::service::SendBody;

/// What a listener accepts and how it talks after the flip.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Which upgrade requests are offers (protocols, methods, `Host` policy).
    pub rules: OfferRules,
    /// Caps and deadlines.
    pub limits: Limits,
    /// `Host` sent on reversed requests that have none. Default: empty, as draft §3.1 says
    /// (the dialer has no name the listener could use).
    pub reversed_host: HeaderValue,
    /// How the reversed client reads responses. `None` (the default): hyper's adaptive buffer,
    /// 8 KiB growing up to the head cap ([`Limits::max_head_bytes`]), which suits a client
    /// that lives as long as its connection. `Some(n)`: every read asks for exactly `n` bytes
    /// (at least the head cap), which is then also the largest response head accepted; for a
    /// client made per exchange, whose adaptive buffer would restart small every time.
    pub read_buf: Option<usize>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            rules: OfferRules::default(),
            limits: Limits::default(),
            reversed_host: HeaderValue::from_static(""),
            read_buf: None,
        }
    }
}

/// An upgrade request judged to be a PTTH offer, its whole body read, waiting for the caller's
/// decision (target, `Authorization`, body): the same type at both ways in.
///
/// `S` holds the stream until the switch. At the raw listener ([`raw::read_offer`]) it is the
/// stream itself: `accept` writes the `101`, `refuse` a final response. Inside a hyper server
/// ([`hyper_upgrade::offer`]) it is hyper's pending upgrade: the handler returns
/// `switching_response` and `reverse` waits for the switched stream.
#[derive(Debug)]
pub struct Offer<S> {
    head: request::Parts,
    body: Bytes,
    terms: OfferTerms,
    stream: S,
}

impl<S> Offer<S> {
    /// The request head (method, target, fields).
    pub fn head(&self) -> &request::Parts {
        &self.head
    }

    /// The request body (credentials may travel here, draft §2.1).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The protocol that will be switched to.
    pub fn protocol(&self) -> Protocol {
        self.terms.protocol
    }

    /// For `ptth`: the protocol chosen to run inside (`h2` or `http/1.1`), named in the `101`.
    pub fn alpn(&self) -> Option<&AlpnId> {
        self.terms.alpn.as_ref()
    }

    /// Whether the switched stream runs HTTP/2 ([`h2::reverse_h2`]) rather than HTTP/1.1
    /// ([`reverse`]).
    pub fn is_h2(&self) -> bool {
        self.alpn().is_some_and(|a| a.as_bytes() == AlpnId::H2)
    }

    /// For `ptth` with a well-known target: the origins the dialer registers. The caller must
    /// check that the dialer may register every one (draft-kazuho-ptth-ptth-01 §5.1).
    pub fn origins(&self) -> &[Origin] {
        &self.terms.origins
    }

    /// An error unless the chosen inner protocol is the one the entry point runs.
    fn expect_inner(&self, h2: bool) -> Result<(), Error> {
        if self.is_h2() == h2 {
            return Ok(());
        }
        Err(Error::InnerProtocol {
            chosen: self
                .alpn()
                .map_or("http/1.1".into(), |a| a.to_string().into()),
        })
    }
}

/// The connection half of a reversed HTTP client: a future that drives the stream. Spawn it (or
/// poll it) for requests sent through the matching [`ReversedClient`] to make progress; it ends
/// when the dialer closes or the client is dropped.
pub type ReversedConnection = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// Sends requests to the dialer over a flipped stream, one at a time (HTTP/1.1 has no
/// multiplexing; open more PTTH connections for concurrency).
///
/// It prepares each request (origin-form target, a `Host`), checks each response's framing,
/// and says whether the connection may carry another request ([`ReversedClient::reusable`]).
#[derive(Debug)]
pub struct ReversedClient<B> {
    sender: http1::SendRequest<B>,
    host: HeaderValue,
    /// Set when a response came with conflicting framing: no further request may use this
    /// connection (see [`ReversedClient::send`]).
    retired: bool,
    /// Whether the last response left the connection open (HTTP/1.1 persistence).
    keep_alive: bool,
}

impl<B> ReversedClient<B>
where
    B: SendBody,
{
    /// Send one request and wait for the response head; the body streams afterwards.
    ///
    /// The target is sent in origin form (path and query) and a missing `Host` is filled with
    /// [`ListenerConfig::reversed_host`]. Waits until the previous exchange is complete.
    ///
    /// A response with both `Transfer-Encoding` and `Content-Length` is framed by the former,
    /// handed over without the latter, and retires the connection: every later request fails
    /// (RFC 9112 §6.3; the dialer may disagree about where the next response starts).
    pub async fn send(&mut self, mut req: Request<B>) -> Result<Response<Incoming>, Error> {
        self.prepare(&mut req);
        self.ready().await?;
        let res = self
            .sender
            .send_request(req)
            .await
            .map_err(Error::hyper("reversed request failed"))?;
        Ok(self.check(res))
    }

    /// Like [`ReversedClient::send`], but when the request could not be sent at all (the
    /// connection was already closed or busy) the error hands the request back
    /// ([`TrySendError::take_message`]), so a caller can retry it on another connection without
    /// ever sending it twice. Call [`ReversedClient::ready`] first: it is what refuses a
    /// retired connection.
    pub async fn try_send(
        &mut self,
        mut req: Request<B>,
    ) -> Result<Response<Incoming>, TrySendError<Request<B>>> {
        self.prepare(&mut req);
        let res = self.sender.try_send_request(req).await?;
        Ok(self.check(res))
    }

    fn check(&mut self, mut res: Response<Incoming>) -> Response<Incoming> {
        let (retired, keep_alive) = check_framing(&mut res);
        self.retired |= retired;
        self.keep_alive = keep_alive;
        res
    }

    /// Whether the connection may carry another request once the last response has been read
    /// whole: its framing was clean and the dialer kept the connection open (HTTP/1.1 without
    /// `Connection: close`, RFC 9112 §9.3).
    pub fn reusable(&self) -> bool {
        !self.retired && self.keep_alive
    }

    /// Origin-form target and a `Host` for a reversed request.
    fn prepare(&self, req: &mut Request<B>) {
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let origin = req
                .uri()
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/");
            *req.uri_mut() = origin
                .parse::<Uri>()
                .unwrap_or_else(|_| Uri::from_static("/"));
        }
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, self.host.clone());
        }
    }

    /// Whether a request can be sent now (the previous exchange is complete).
    pub fn is_ready(&self) -> bool {
        !self.retired && self.sender.is_ready()
    }

    /// Whether the connection is gone for good.
    pub fn is_closed(&self) -> bool {
        self.retired || self.sender.is_closed()
    }

    /// Wait until a request can be sent, or fail if the connection closed.
    pub async fn ready(&mut self) -> Result<(), Error> {
        if self.retired {
            return Err(Error::Closed {
                phase: "reuse after a response with conflicting framing",
            });
        }
        self.sender
            .ready()
            .await
            .map_err(Error::hyper("reversed connection closed"))
    }

    /// The underlying hyper sender, for callers that need its full API (it knows nothing of
    /// retirement: check [`ReversedClient::is_closed`] first).
    pub fn into_sender(self) -> http1::SendRequest<B> {
        self.sender
    }
}

/// A response's framing as a reversed client sees it: whether it retires the connection
/// (`Content-Length` beside `Transfer-Encoding`, the former dropped) and whether it leaves the
/// connection open.
fn check_framing(res: &mut Response<Incoming>) -> (bool, bool) {
    let retired = crate::proto::response::drop_length_beside_chunked(res.headers_mut());
    if retired {
        tracing::info!(
            "the dialer sent Content-Length with Transfer-Encoding; its connection is retired after this response"
        );
    }
    let keep_alive = crate::proto::response::keeps_alive(res.version(), res.headers());
    (retired, keep_alive)
}

/// The one builder of the reversed client: the header-count and head caps of
/// [`ListenerConfig::limits`], and its read buffer ([`ListenerConfig::read_buf`]).
fn client_builder(config: &ListenerConfig) -> http1::Builder {
    let mut b = http1::Builder::new();
    if let Some(n) = config.limits.hyper_max_headers() {
        b.max_headers(n);
    }
    let head_cap = config.limits.hyper_buf_size();
    match config.read_buf {
        Some(n) => b.read_buf_exact_size(Some(n.max(head_cap))),
        None => b.max_buf_size(head_cap),
    };
    b
}

/// Start HTTP/1.1 as the *client* on a stream that has just been switched.
///
/// `io` must already replay any bytes read past the upgrade request (the raw path wraps it in
/// `Rewind`; hyper's `Upgraded` does so itself). Responses that arrive before any
/// request was sent are unsolicited and end the connection with an error (draft §2.1: after the
/// `101`, the listener speaks first).
pub async fn reverse<IO, B>(
    io: IO,
    config: &ListenerConfig,
) -> Result<(ReversedClient<B>, ReversedConnection), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: SendBody,
{
    let (client, conn) = reverse_parts(io, config).await?;
    Ok((
        client,
        Box::pin(async move {
            conn.with_upgrades()
                .await
                .map_err(Error::hyper("reversed connection"))
        }),
    ))
}

/// hyper's connection for a [`ReversedClient`], unboxed.
pub(crate) type Connection<IO, B> = http1::Connection<TokioIo<IO>, B>;

/// [`reverse`] with hyper's connection as it is, for a caller that drives it itself and takes
/// the stream back after an exchange (`without_shutdown`), or lets it upgrade
/// (`with_upgrades`): the relay, which parks the stream again between exchanges.
pub(crate) async fn reverse_parts<IO, B>(
    io: IO,
    config: &ListenerConfig,
) -> Result<(ReversedClient<B>, Connection<IO, B>), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: SendBody,
{
    let (sender, conn) = client_builder(config)
        .handshake(TokioIo::new(io))
        .await
        .map_err(Error::hyper("starting the reversed HTTP client"))?;
    let client = ReversedClient {
        sender,
        host: config.reversed_host.clone(),
        retired: false,
        keep_alive: true,
    };
    Ok((client, conn))
}
