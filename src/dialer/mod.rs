//! The dialer role ("A" in the draft): the host behind NAT.
//!
//! It opens the connection, sends the upgrade request, waits for a `101`, and then **serves**
//! HTTP on the same stream. One file a step:
//!
//! ```text
//! dial (the caller's stream) -> handshake() -> Flipped -> Flipped::serve(service)
//!                               handshake.rs   mod.rs     mod.rs, timed by head_clock.rs
//! ```
//!
//! With `ptth` and `ALPN: h2` (draft-kazuho-ptth-ptth), [`Flipped::serve_h2`] runs hyper's
//! HTTP/2 server instead (`h2.rs`): many requests at once on the one connection.
//!
//! [`handshake()`] works on any `AsyncRead + AsyncWrite` stream (TCP, TLS, in-memory), skips
//! interim `1xx` answers, accepts only a valid `101` for a protocol it offered, and keeps every
//! byte that arrived after the `101` head. Any other final answer is [`Error::Refused`].
//! [`Flipped::serve`] runs hyper's HTTP/1.1 server on the flipped stream, with the
//! head-clock deadline (`head_clock.rs`): a request head must complete soon after its first byte, while a
//! parked connection may idle.
//!
//! [`Error::Refused`]: crate::Error::Refused

mod h2;
mod handshake;
mod head_clock;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::StatusCode;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

use crate::io::{ByteStream, Rewind};
use crate::limits::Limits;
use crate::proto::Protocol;
use crate::proto::alpn::AlpnId;
use crate::service::{HttpService, TowerService};
pub use h2::ServingH2;
pub use handshake::handshake;
use head_clock::{Activity, HeadClock};

/// A stream that has switched to reversed HTTP: the dialer now serves requests on it.
#[derive(Debug)]
pub struct Flipped<IO> {
    io: Rewind<IO>,
    protocol: Protocol,
    alpn: Option<AlpnId>,
}

impl<IO> Flipped<IO> {
    /// A connection that is reversed without a handshake of its own (the agent's long-poll
    /// transport): served as if `protocol` had been switched to.
    pub(crate) fn virtual_connection(io: IO, protocol: Protocol) -> Flipped<IO> {
        Flipped {
            io: Rewind::new(bytes::Bytes::new(), io),
            protocol,
            alpn: None,
        }
    }

    /// The protocol the listener switched to.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// For `ptth`: the protocol the listener chose to run inside (its `101`'s `ALPN`).
    pub fn alpn(&self) -> Option<&AlpnId> {
        self.alpn.as_ref()
    }

    /// Whether the listener chose `h2`: serve with [`Flipped::serve_h2`], not
    /// [`Flipped::serve`].
    pub fn is_h2(&self) -> bool {
        self.alpn().is_some_and(|a| a.as_bytes() == AlpnId::H2)
    }

    /// The stream, and the bytes that came after the `101` head (already read from it: they
    /// come before anything read next).
    pub fn into_parts(self) -> (bytes::Bytes, IO) {
        self.io.into_parts()
    }
}

pin_project_lite::pin_project! {
    /// A reversed connection being served (HTTP/1.1): a future that ends with the connection.
    /// [`Serving::graceful_shutdown`] finishes the request in flight and closes. Its stream
    /// types (the replayed bytes, the head clock) stay inside the crate, as hyper keeps its
    /// `Rewind`.
    pub struct Serving<IO, S>
    where
        S: HttpService,
    {
        #[pin]
        conn: http1::UpgradeableConnection<TokioIo<Activity<Rewind<IO>>>, S>,
    }
}

impl<IO: ByteStream, S: HttpService> Serving<IO, S> {
    /// Finish the request in flight (if any), then close the connection.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        self.project().conn.graceful_shutdown()
    }
}

impl<IO: ByteStream, S: HttpService> Future for Serving<IO, S> {
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().conn.poll(cx)
    }
}

impl<IO: ByteStream> Flipped<IO> {
    /// Serve HTTP/1.1 on the reversed connection with a hyper service.
    ///
    /// Reversed requests are accepted with an empty, missing or any `Host` (draft §3.1; AirPlay
    /// sends none). A request head must complete within [`Limits::head_timeout`] of its first
    /// byte; between requests the connection may idle for [`Limits::idle_timeout`] (forever by
    /// default). Upgrades requested by the listener (WebSocket through a relay) are supported.
    pub fn serve<S>(self, service: S, limits: &Limits) -> Serving<IO, S>
    where
        S: HttpService,
    {
        let (io, clock) = head_clock::head_clock(self.io, limits);
        Serving {
            conn: server_builder(limits, clock)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        }
    }

    /// Serve with a `tower::Service` (an axum `Router`, for example).
    pub fn serve_tower<S>(
        self,
        service: S,
        limits: &Limits,
    ) -> Serving<IO, hyper_util::service::TowerToHyperService<S>>
    where
        S: TowerService,
    {
        self.serve(
            hyper_util::service::TowerToHyperService::new(service),
            limits,
        )
    }
}

fn server_builder(limits: &Limits, clock: HeadClock) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(clock)
        // The clock decides the real deadline; hyper only needs the timeout switched on.
        .header_read_timeout(limits.head_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.hyper_buf_size())
        .keep_alive(true);
    b
}

/// A service that answers every reversed request with `404`: handy for tests and examples.
pub async fn not_found(
    _req: http::Request<Incoming>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, Infallible> {
    let mut res = http::Response::new(http_body_util::Full::from("not found\n"));
    *res.status_mut() = StatusCode::NOT_FOUND;
    Ok(res)
}
