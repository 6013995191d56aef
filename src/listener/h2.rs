//! The listener's HTTP/2 client on a transposed `ptth` connection (draft-kazuho-ptth-ptth,
//! `ALPN: h2`).
//!
//! After the `101`, the listener is the HTTP/2 *client*: [`reverse_h2`] writes the connection
//! preface (the draft: "started by the reverse proxy sending a connection preface"), reads the
//! dialer's SETTINGS, and hands back a [`ReversedH2Client`] that can be cloned: every clone
//! opens streams on the one connection, up to the dialer's `SETTINGS_MAX_CONCURRENT_STREAMS`,
//! and a stream reset fails only its own request. The connection future sends PINGs
//! ([`crate::H2Limits`]) so that a dead dialer is noticed; dropping every clone ends it with
//! GOAWAY.

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{ListenerConfig, ReversedConnection};
use crate::error::Error;
use crate::io::WriteDeadline;
use crate::service::SendBody;

/// Sends requests to the dialer over a transposed HTTP/2 connection, many at once. Clone it to
/// share the connection between tasks.
#[derive(Debug)]
pub struct ReversedH2Client<B> {
    sender: http2::SendRequest<B>,
}

impl<B> Clone for ReversedH2Client<B> {
    fn clone(&self) -> Self {
        ReversedH2Client {
            sender: self.sender.clone(),
        }
    }
}

impl<B> ReversedH2Client<B>
where
    B: SendBody + Unpin,
{
    /// Send one request on a new stream and wait for the response head; the body streams
    /// afterwards.
    ///
    /// HTTP/2 carries the target as `:scheme`, `:authority` and `:path` (RFC 9113 §8.3.1): a
    /// target in origin form gets the scheme `http` and the authority of its `Host` field (which
    /// is then dropped, as §8.3.1 asks of a client that has `:authority`). Without either the
    /// request has no `:authority`, which §8.3.1 allows for a target without one.
    pub async fn send(&mut self, mut req: Request<B>) -> Result<Response<Incoming>, Error> {
        prepare(&mut req);
        self.sender
            .send_request(req)
            .await
            .map_err(Error::hyper("reversed h2 request failed"))
    }

    /// Wait until the connection can take a request, or fail if it closed.
    pub async fn ready(&mut self) -> Result<(), Error> {
        self.sender
            .ready()
            .await
            .map_err(Error::hyper("reversed h2 connection closed"))
    }

    /// Whether the connection is gone for good (GOAWAY, a closed stream, a failed PING).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// The underlying hyper sender, for callers that need its full API.
    pub fn into_sender(self) -> http2::SendRequest<B> {
        self.sender
    }
}

fn prepare<B>(req: &mut Request<B>) {
    if req.uri().scheme().is_some() && req.uri().authority().is_some() {
        return;
    }
    let authority = req
        .uri()
        .authority()
        .cloned()
        .or_else(|| {
            let host = req.headers().get(HOST)?.to_str().ok()?;
            host.parse::<Authority>().ok()
        })
        .filter(|a| !a.as_str().is_empty());
    let Some(authority) = authority else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.scheme.get_or_insert(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
        req.headers_mut().remove(HOST);
    }
}

/// Start HTTP/2 as the *client* on a stream that has just been switched with `ALPN: h2`.
///
/// `io` must already replay any bytes read past the upgrade request. Waits for nothing: the
/// preface and SETTINGS go out when the returned connection future is first polled, and a
/// dialer that answers with something other than HTTP/2 fails that future (and every request).
pub async fn reverse_h2<IO, B>(
    io: IO,
    config: &ListenerConfig,
) -> Result<(ReversedH2Client<B>, ReversedConnection), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: SendBody + Unpin,
{
    let limits = &config.limits;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(limits.h2_header_list_size())
        .max_frame_size(limits.h2.max_frame_size)
        .keep_alive_interval(limits.h2.keep_alive_interval)
        .keep_alive_timeout(limits.h2.keep_alive_timeout)
        // A parked transposed connection is idle most of the time: that is when a dead dialer
        // must be found.
        .keep_alive_while_idle(true);
    let (sender, conn) = builder
        .handshake(TokioIo::new(WriteDeadline::new(
            io,
            limits.h2.write_timeout,
        )))
        .await
        .map_err(Error::hyper("starting the reversed h2 client"))?;
    Ok((
        ReversedH2Client { sender },
        Box::pin(async move { conn.await.map_err(Error::hyper("reversed h2 connection")) }),
    ))
}
