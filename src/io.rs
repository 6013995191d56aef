//! Stream helpers shared by both roles: replaying bytes read past a head, and reading a head
//! with a cap.
//!
//! A handshake reads in chunks, so the read that completes a head often also holds the start of
//! what follows (the first reversed request behind a `101`, or a body behind a request head).
//! Those bytes belong to the next layer and must reach it: [`Rewind`] hands them over.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::error::{Error, HeadError};

/// How many bytes one read asks for during the handshake.
const READ_CHUNK: usize = 4096;

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

    /// The inner stream.
    pub fn get_ref(&self) -> &IO {
        &self.inner
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

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

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

/// One read of up to [`READ_CHUNK`] bytes appended to `buf`; returns the count (0 at EOF).
pub(crate) async fn read_some<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    buf.reserve(READ_CHUNK);
    io.read_buf(buf).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

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
