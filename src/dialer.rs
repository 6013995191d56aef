//! The dialer role ("A" in the draft): the host behind NAT.
//!
//! It opens the connection, sends the upgrade request, waits for a `101`, and then **serves**
//! HTTP on the same stream:
//!
//! ```text
//! dial (caller) -> handshake() -> Flipped -> Flipped::serve(service)
//! ```
//!
//! [`handshake`] works on any `AsyncRead + AsyncWrite` stream (TCP, TLS, in-memory), skips
//! interim `1xx` answers, accepts only a valid `101` for a protocol it offered, and keeps every
//! byte that arrived after the `101` head. Any other final answer is [`Error::Refused`].

use std::convert::Infallible;
use std::future::Future;

use bytes::BytesMut;
use http::StatusCode;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Refusal};
use crate::io::{Rewind, read_head, read_some};
use crate::limits::Limits;
use crate::proto::body::BodyDecoder;
use crate::proto::request::UpgradeRequest;
use crate::proto::{Protocol, response};
use crate::timer::{Activity, head_clock};

/// How many `204 No Content` answers in a row the dialer re-sends its request for, before it
/// reports the refusal (Yaler sends `204` when no public client came within its renewal period).
pub const MAX_NO_CONTENT_ROUNDS: usize = 100;

/// A stream that has switched to reversed HTTP: the dialer now serves requests on it.
#[derive(Debug)]
pub struct Flipped<IO> {
    io: Rewind<IO>,
    protocol: Protocol,
}

impl<IO> Flipped<IO> {
    /// The protocol the listener switched to.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The stream, which replays the bytes that came after the `101` head before reading more.
    pub fn into_io(self) -> Rewind<IO> {
        self.io
    }
}

/// A reversed connection being served: a hyper connection future. Poll it to completion;
/// call [`hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown`] to finish the
/// request in flight and close.
pub type Serving<IO, S> = http1::UpgradeableConnection<TokioIo<Activity<Rewind<IO>>>, S>;

impl<IO> Flipped<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Serve HTTP/1.1 on the reversed connection with a hyper service.
    ///
    /// Reversed requests are accepted with an empty, missing or any `Host` (draft §3.1; AirPlay
    /// sends none). A request head must complete within [`Limits::head_timeout`] of its first
    /// byte; between requests the connection may idle for [`Limits::idle_timeout`] (forever by
    /// default). Upgrades requested by the listener (WebSocket through a relay) are supported.
    pub fn serve<S, B>(self, service: S, limits: &Limits) -> Serving<IO, S>
    where
        S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (io, clock) = head_clock(self.io, limits);
        server_builder(limits, clock)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    }

    /// Serve with a `tower::Service` (an axum `Router`, for example).
    pub fn serve_tower<S, B>(
        self,
        service: S,
        limits: &Limits,
    ) -> Serving<IO, hyper_util::service::TowerToHyperService<S>>
    where
        S: tower_service::Service<http::Request<Incoming>, Response = http::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.serve(
            hyper_util::service::TowerToHyperService::new(service),
            limits,
        )
    }
}

fn server_builder(limits: &Limits, clock: crate::timer::HeadClock) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(clock)
        // The clock decides the real deadline; hyper only needs the timeout switched on.
        .header_read_timeout(limits.head_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.hyper_buf_size())
        .keep_alive(true);
    b
}

/// Send the upgrade request on `io` and wait for the switch.
///
/// The request is written in one piece and nothing else is written until the `101` has been
/// read (RFC 9931). `1xx` answers other than `101` are skipped (RFC 9110 §15.2). A `204` with
/// nothing after it is answered by sending the request again on the same stream, up to
/// [`MAX_NO_CONTENT_ROUNDS`] times. Each round (request to final answer) must finish within
/// [`Limits::handshake_timeout`].
pub async fn handshake<IO>(
    mut io: IO,
    request: &UpgradeRequest,
    limits: &Limits,
) -> Result<Flipped<IO>, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let encoded = request.encode();
    let mut buf = BytesMut::new();
    for _round in 0..MAX_NO_CONTENT_ROUNDS {
        let answer = with_deadline(
            limits,
            round(&mut io, &encoded, &mut buf, &request.protocols, limits),
        )
        .await?;
        match answer {
            Answer::Switched(protocol) => {
                return Ok(Flipped {
                    io: Rewind::new(buf.freeze(), io),
                    protocol,
                });
            }
            Answer::Refused(refusal)
                if refusal.status == StatusCode::NO_CONTENT && buf.is_empty() =>
            {
                tracing::debug!("listener answered 204: sending the upgrade request again");
            }
            Answer::Refused(refusal) => return Err(Error::Refused(refusal)),
        }
    }
    Err(Error::Refused(Box::new(Refusal {
        status: StatusCode::NO_CONTENT,
        headers: Default::default(),
        body: Default::default(),
        body_truncated: false,
    })))
}

enum Answer {
    Switched(Protocol),
    Refused(Box<Refusal>),
}

async fn with_deadline<T>(
    limits: &Limits,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limits.handshake_timeout, fut)
        .await
        .map_err(|_| Error::Timeout {
            phase: "upgrade handshake",
            after: limits.handshake_timeout,
        })?
}

/// One request and its final answer. On a switch, `buf` is left holding the bytes after the
/// `101` head; on a refusal, the bytes after the refusal's body.
async fn round<IO>(
    io: &mut IO,
    encoded: &[u8],
    buf: &mut BytesMut,
    offered: &[Protocol],
    limits: &Limits,
) -> Result<Answer, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(encoded)
        .await
        .map_err(Error::io("writing the upgrade request"))?;
    io.flush()
        .await
        .map_err(Error::io("writing the upgrade request"))?;
    loop {
        let (head, len) = read_head(io, buf, "reading the answer to the upgrade request", |b| {
            response::parse(b, limits)
        })
        .await?;
        let _ = buf.split_to(len);
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            // A 1xx has no body (RFC 9112 §6.3): any Content-Length on it is ignored, and every
            // byte after the head is reversed traffic.
            return Ok(Answer::Switched(response::check_switch(&head, offered)?));
        }
        if head.status.is_informational() {
            tracing::debug!(status = %head.status, "skipping interim response");
            continue;
        }
        let mut body = BodyDecoder::new(response::framing(&head)?, limits.max_refusal_body, true);
        while !body.decode(buf)? {
            if read_some(io, buf)
                .await
                .map_err(Error::io("reading a refusal body"))?
                == 0
            {
                if body.eof() {
                    break;
                }
                return Err(Error::Closed {
                    phase: "reading a refusal body",
                });
            }
        }
        let (body, body_truncated) = body.finish();
        return Ok(Answer::Refused(Box::new(Refusal {
            status: head.status,
            headers: head.headers,
            body,
            body_truncated,
        })));
    }
}

/// A service that answers every reversed request with `404`: handy for tests and examples.
pub async fn not_found(
    _req: http::Request<Incoming>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, Infallible> {
    let mut res = http::Response::new(http_body_util::Full::from("not found\n"));
    *res.status_mut() = StatusCode::NOT_FOUND;
    Ok(res)
}
