//! The dialer's HTTP/2 server on a transposed `ptth` connection (draft-kazuho-ptth-ptth,
//! `ALPN: h2`).
//!
//! After the `101`, the dialer (the draft's "backend server") is the HTTP/2 *server*: it reads
//! the listener's connection preface (which may have arrived in the same segment as the `101`:
//! [`Flipped`] replays those bytes first) and sends its own SETTINGS, with
//! `SETTINGS_MAX_CONCURRENT_STREAMS` and `SETTINGS_MAX_HEADER_LIST_SIZE` from [`Limits`]. It
//! PINGs an idle listener ([`crate::H2Limits`]) and closes a connection whose PINGs go
//! unanswered, or that reads nothing of what it is sent ([`crate::io::WriteDeadline`]). `graceful_shutdown` on the returned connection sends GOAWAY and lets the open
//! streams finish, the shutdown signal the draft names.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::Flipped;
use crate::io::{ByteStream, Rewind, WriteDeadline};
use crate::limits::Limits;
use crate::service::{HttpService, TowerService};

pin_project_lite::pin_project! {
    /// A transposed HTTP/2 connection being served: a future that ends with the connection.
    /// [`ServingH2::graceful_shutdown`] sends GOAWAY and closes once the open streams are done.
    pub struct ServingH2<IO, S>
    where
        S: HttpService,
    {
        #[pin]
        conn: http2::Connection<TokioIo<WriteDeadline<Rewind<IO>>>, S, TokioExecutor>,
    }
}

impl<IO: ByteStream, S: HttpService> ServingH2<IO, S> {
    /// Send GOAWAY, let the open streams finish, then close.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        self.project().conn.graceful_shutdown()
    }
}

impl<IO: ByteStream, S: HttpService> Future for ServingH2<IO, S> {
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().conn.poll(cx)
    }
}

impl<IO: ByteStream> Flipped<IO> {
    /// Serve HTTP/2 on a `ptth` connection whose `101` chose `ALPN: h2` ([`Flipped::is_h2`]),
    /// with any hyper service. Requests run concurrently, each on the tokio runtime.
    ///
    /// Transposed requests are accepted whatever their `:authority` (as on HTTP/1.1, the
    /// listener is the authority). Extended CONNECT (RFC 8441) is enabled, so a listener can
    /// carry WebSocket over a stream.
    pub fn serve_h2<S>(self, service: S, limits: &Limits) -> ServingH2<IO, S>
    where
        S: HttpService,
    {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2.max_concurrent_streams)
            .max_header_list_size(limits.h2_header_list_size())
            .max_frame_size(limits.h2.max_frame_size)
            .keep_alive_interval(limits.h2.keep_alive_interval)
            .keep_alive_timeout(limits.h2.keep_alive_timeout)
            .enable_connect_protocol();
        let io = WriteDeadline::new(self.io, limits.h2.write_timeout);
        ServingH2 {
            conn: builder.serve_connection(TokioIo::new(io), service),
        }
    }

    /// [`Flipped::serve_h2`] with a `tower::Service` (an axum `Router`, for example).
    pub fn serve_h2_tower<S>(
        self,
        service: S,
        limits: &Limits,
    ) -> ServingH2<IO, hyper_util::service::TowerToHyperService<S>>
    where
        S: TowerService,
    {
        self.serve_h2(
            hyper_util::service::TowerToHyperService::new(service),
            limits,
        )
    }
}
