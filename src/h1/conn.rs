//! One framed HTTP/1.1 connection: a byte stream, one read buffer and one write buffer.
//!
//! Reads go into the read buffer (allocated at the first read, [`FIRST_READ_BYTES`], and grown
//! to [`Limits::buffer_bytes`] once a read fills it), where
//! heads are scanned in place and body content is written out from without a copy. Writes
//! gather what the engine composes (heads, chunk framing) in the write buffer and send it with
//! the body bytes that follow in one vectored write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::limits::{FIRST_READ_BYTES, Limits};

/// Content up to this size is copied behind composed bytes in the write buffer, so that it
/// goes in one write even on a stream that does not do vectored writes (TLS).
const COPY_BEHIND: usize = 4096;

/// A byte stream with its buffers (see the module docs).
#[derive(Debug)]
pub(crate) struct Conn<IO> {
    pub(crate) io: IO,
    /// Bytes read and not yet consumed: the front is the next head or body piece.
    pub(crate) rbuf: BytesMut,
    /// Bytes composed and not yet written.
    pub(crate) wbuf: BytesMut,
    /// The next hop's request head, composed before that hop is connected; it then trades
    /// places with the next hop's (empty) write buffer, so no head is allocated per request.
    pub(crate) scratch: BytesMut,
    /// Full size of the read buffer (a head must fit).
    capacity: usize,
    /// Whether the read buffer has its full size yet (it starts at [`FIRST_READ_BYTES`]).
    grown: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    /// A connection on `io`, with `already` read (bytes a handshake read past its head).
    pub(crate) fn new(io: IO, already: &[u8], limits: &Limits) -> Self {
        Conn {
            io,
            rbuf: BytesMut::from(already),
            wbuf: BytesMut::new(),
            scratch: BytesMut::new(),
            capacity: limits.buffer_bytes.max(limits.max_head_bytes),
            grown: false,
        }
    }

    /// A connection on `io` with buffers a caller keeps between connections (they come back
    /// with [`Conn::into_parts`]), so that a stream waiting for its next use holds none.
    pub(crate) fn with_buffers(io: IO, rbuf: BytesMut, wbuf: BytesMut, limits: &Limits) -> Self {
        Conn {
            io,
            grown: rbuf.capacity() > FIRST_READ_BYTES,
            rbuf,
            wbuf,
            scratch: BytesMut::new(),
            capacity: limits.buffer_bytes.max(limits.max_head_bytes),
        }
    }

    /// The stream, the read buffer and the write buffer.
    pub(crate) fn into_parts(self) -> (IO, BytesMut, BytesMut) {
        (self.io, self.rbuf, self.wbuf)
    }

    /// One read appended to the read buffer: the count, 0 at EOF.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let size = if self.grown {
            self.capacity
        } else {
            FIRST_READ_BYTES.min(self.capacity)
        };
        if self.rbuf.capacity() - self.rbuf.len() < size / 4 {
            // Reclaims the consumed front when the buffer has been read through.
            self.rbuf.reserve(size - self.rbuf.len().min(size / 2));
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        if n == spare && !self.grown {
            // The read filled the buffer: more was waiting than the first size holds.
            self.grown = true;
            // `reserve` may have reclaimed a larger allocation than asked for (a lent buffer
            // that was grown before), so the buffer can already hold more than `capacity`.
            self.rbuf
                .reserve(self.capacity.saturating_sub(self.rbuf.len()));
        }
        Poll::Ready(Ok(n))
    }

    /// [`Conn::poll_fill`] as a future.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Write the write buffer, then as much of `data` as the stream takes with it. Returns how
    /// many bytes of `data` were taken (0 only when `data` is empty and the buffer is
    /// written). A small `data` behind composed bytes is copied into the write buffer instead;
    /// call again (with no data) until the buffer is empty.
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.wbuf.is_empty() && !data.is_empty() && data.len() <= COPY_BEHIND {
            // Taken now; it goes out with the composed bytes on the next write.
            self.wbuf.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        loop {
            let io = Pin::new(&mut self.io);
            let n = match (self.wbuf.is_empty(), data.is_empty()) {
                (true, true) => return Poll::Ready(Ok(0)),
                (true, false) => ready!(io.poll_write(cx, data))?,
                (false, true) => ready!(io.poll_write(cx, &self.wbuf))?,
                (false, false) => {
                    let bufs = [io::IoSlice::new(&self.wbuf), io::IoSlice::new(data)];
                    ready!(io.poll_write_vectored(cx, &bufs))?
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let composed = n.min(self.wbuf.len());
            self.wbuf.advance(composed);
            if n > composed {
                return Poll::Ready(Ok(n - composed));
            }
        }
    }

    /// Write the whole write buffer.
    pub(crate) fn poll_write_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            ready!(self.poll_send(cx, &[]))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Write the whole write buffer and flush the stream (a TLS stream holds what it was given
    /// until flushed).
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_buf(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// [`Conn::poll_flush`] as a future.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Whether an idle connection is still usable: no EOF, no error and no unexpected bytes
    /// are waiting on it (one read attempt, never waits). A keep-alive peer that closed while
    /// idle is found here, before a request is sent into the closed connection.
    pub(crate) fn poll_idle_ok(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        matches!(self.poll_fill(cx), Poll::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn composed_bytes_and_content_go_together_and_in_order() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Conn::new(a, b"", &Limits::default());
        c.wbuf.extend_from_slice(b"head;");
        let big = vec![b'x'; 10_000];
        let n = std::future::poll_fn(|cx| c.poll_send(cx, &big))
            .await
            .unwrap();
        assert_eq!(n, big.len());
        c.wbuf.extend_from_slice(b";small:");
        let n = std::future::poll_fn(|cx| c.poll_send(cx, b"abc"))
            .await
            .unwrap();
        assert_eq!(n, 3);
        c.flush().await.unwrap();
        drop(c);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let mut want = b"head;".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b";small:abc");
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn the_read_buffer_starts_small_and_grows_when_filled() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Conn::new(a, b"", &Limits::default());
        b.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        c.fill().await.unwrap();
        assert!(
            c.rbuf.capacity() <= FIRST_READ_BYTES,
            "a small head, a small buffer"
        );
        b.write_all(&vec![b'x'; 3 * FIRST_READ_BYTES])
            .await
            .unwrap();
        let mut got = c.rbuf.len();
        while got < 3 * FIRST_READ_BYTES + 18 {
            got += c.fill().await.unwrap();
        }
        assert!(c.rbuf.capacity() >= Limits::default().buffer_bytes / 2);
        assert_eq!(c.rbuf.len(), got, "nothing read was lost in the growth");
    }

    #[tokio::test]
    async fn an_idle_peer_that_closed_is_seen() {
        let (a, b) = tokio::io::duplex(64);
        let mut c = Conn::new(a, b"", &Limits::default());
        assert!(std::future::poll_fn(|cx| Poll::Ready(c.poll_idle_ok(cx))).await);
        drop(b);
        assert!(!std::future::poll_fn(|cx| Poll::Ready(c.poll_idle_ok(cx))).await);
    }
}
