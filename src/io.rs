//! The streams PTTH runs on, and the handshake's I/O, shared by both roles.
//!
//! [`ByteStream`] is the one bound for "a byte stream we can run PTTH on". The handshake helpers
//! (`read_head`, `read_body`, `write_flush`) are the one read loop and write of the dialer's
//! and the raw listener's handshakes: read a head with its cap, read a bounded body, write an
//! answer in one piece.
//!
//! A handshake reads in chunks, so the read that completes a head often also holds the start of
//! what follows (the first reversed request behind a `101`, or a body behind a request head).
//! Those bytes belong to the next layer and must reach it: [`Rewind`] hands them over.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::{Error, HeadError};
use crate::limits::HANDSHAKE_READ_CHUNK;
use crate::proto::body::BodyDecoder;

/// A byte stream PTTH can run on: TCP, TLS, an in-memory pipe, hyper's `Upgraded`. The dialer
/// serves reversed HTTP on one, the relay parks them (`relay::registry::AgentStream` is this
/// trait).
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// `impl AsyncWrite` for a wrapper `$ty<IO>` that only watches or replays reads: every write
/// call goes straight to its field `$inner` ([`Rewind`], the dialer's head clock).
macro_rules! write_through {
    ($ty:ident, $inner:ident) => {
        impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<IO> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$inner).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use write_through;

/// `impl AsyncRead` for a wrapper `$ty<IO>` that only watches writes: every read goes straight
/// to its field `$inner` ([`WriteDeadline`], the fuzz harness's recorder).
macro_rules! read_through {
    ($ty:ident, $inner:ident) => {
        impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for $ty<IO> {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$inner).poll_read(cx, buf)
            }
        }
    };
}
#[cfg_attr(not(feature = "fuzzing"), allow(unused_imports))]
pub(crate) use read_through;

/// A stream whose writes fail with `TimedOut` once the peer has taken no byte for `timeout`.
///
/// HTTP/2 has a PING deadline for a peer that stops answering, but a peer that stops
/// *reading* defeats it: hyper sends GOAWAY on the missed PING and then waits forever to
/// flush it, and TCP retries a zero window for as long as the peer acknowledges the probes.
/// Every transposed HTTP/2 connection, in either role, runs on this wrapper, so that such a
/// connection ends with an error instead of holding a slot forever. A write that makes any
/// progress starts the clock again; reads are not timed (an idle connection is normal).
pub struct WriteDeadline<IO> {
    inner: IO,
    timeout: std::time::Duration,
    /// Armed while a write is pending.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> WriteDeadline<IO> {
    /// Time the writes on `inner` out after `timeout` without progress.
    pub fn new(inner: IO, timeout: std::time::Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// What a write reported: progress disarms the clock; `Pending` arms it (once) and fails
    /// with `TimedOut` when it has run out.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: fmt::Debug> fmt::Debug for WriteDeadline<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteDeadline")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .finish()
    }
}

read_through!(WriteDeadline, inner);

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

/// A stream that first yields `prefix`, then reads from `inner`. Writes go straight through.
#[derive(Debug)]
pub struct Rewind<IO> {
    prefix: Bytes,
    inner: IO,
}

impl<IO> Rewind<IO> {
    /// Replay `prefix` before reading from `inner`.
    pub fn new(prefix: Bytes, inner: IO) -> Self {
        Rewind { prefix, inner }
    }

    /// The bytes not yet replayed, and the inner stream.
    pub fn into_parts(self) -> (Bytes, IO) {
        (self.prefix, self.inner)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

write_through!(Rewind, inner);

/// Read into `buf` until `parse` finds a complete head, and return it with the head's length.
///
/// `parse` sees the whole buffer each time; its own cap (`Limits::max_head_bytes`) decides when
/// the buffer is too large, so this loop is bounded by it. EOF before a complete head is
/// [`Error::Closed`].
pub(crate) async fn read_head<IO, T>(
    io: &mut IO,
    buf: &mut BytesMut,
    phase: &'static str,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, HeadError>,
) -> Result<(T, usize), Error>
where
    IO: AsyncRead + Unpin,
{
    loop {
        if !buf.is_empty()
            && let Some(done) = parse(buf)?
        {
            return Ok(done);
        }
        if read_some(io, buf).await.map_err(Error::io(phase))? == 0 {
            return Err(Error::Closed { phase });
        }
    }
}

/// Read the body `body` frames: from `buf` first, then from `io`, until it is complete. The
/// bytes after it stay in `buf`. EOF ends an until-close body and is [`Error::Closed`] for any
/// other. Returns the body kept and whether any of it was dropped (see [`BodyDecoder::new`]).
pub(crate) async fn read_body<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    mut body: BodyDecoder,
    phase: &'static str,
) -> Result<(Bytes, bool), Error>
where
    IO: AsyncRead + Unpin,
{
    while !body.decode(buf)? {
        if read_some(io, buf).await.map_err(Error::io(phase))? == 0 {
            if body.eof() {
                break;
            }
            return Err(Error::Closed { phase });
        }
    }
    Ok(body.finish())
}

/// Write `bytes` (a whole head, or head and body) and flush: each handshake message goes in one
/// piece.
pub(crate) async fn write_flush<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    bytes: &[u8],
    context: &'static str,
) -> Result<(), Error> {
    io.write_all(bytes).await.map_err(Error::io(context))?;
    io.flush().await.map_err(Error::io(context))
}

/// One read of up to [`HANDSHAKE_READ_CHUNK`] bytes appended to `buf`; returns the count (0 at
/// EOF).
pub(crate) async fn read_some<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    buf.reserve(HANDSHAKE_READ_CHUNK);
    io.read_buf(buf).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A write the peer does not take times out after the deadline; a write it takes (even
    /// late) starts the clock again (paused time).
    #[tokio::test(start_paused = true)]
    async fn writes_time_out_when_the_peer_reads_nothing() {
        let timeout = std::time::Duration::from_secs(5);
        let (ours, mut peer) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(ours, timeout);
        w.write_all(&[1; 16]).await.unwrap();
        // The pipe is full: the next write waits, the peer reads just before the deadline.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(timeout - std::time::Duration::from_secs(1)).await;
            let mut buf = [0; 16];
            peer.read_exact(&mut buf).await.unwrap();
            peer
        });
        w.write_all(&[2; 16])
            .await
            .expect("progress before the deadline");
        let _peer = reader.await.unwrap();
        // Now nobody reads: the write fails at the deadline, with TimedOut.
        let started = tokio::time::Instant::now();
        let err = w.write_all(&[3; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), timeout);
    }

    #[tokio::test]
    async fn rewind_replays_prefix_then_reads_inner() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut r = Rewind::new(Bytes::from_static(b"hello"), a);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
