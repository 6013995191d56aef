//! One body copied from one connection to another, as its framing says.
//!
//! The source framing is walked with [`BodyDecoder::next_piece`] (Content-Length, chunked,
//! until close: RFC 9112 §6); content is written from the source's read buffer (no copy, no
//! allocation per piece) behind whatever the destination has composed (a head, chunk framing),
//! in one write where it fits. Chunked content is framed again on the way out (extensions and
//! trailers are dropped, decision D37), and a close-delimited source can be sent on chunked.

use std::io;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::Conn;
use super::tap::Kept;
use crate::error::BodyError;
use crate::proto::body::{BodyDecoder, Framing, Piece};

/// How the copied body is framed on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encode {
    /// As it came: the same length, or until close. The head announced it.
    Raw,
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why a body could not be copied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PumpError {
    /// The source failed.
    #[error("reading the body: {0}")]
    Read(#[source] io::Error),
    /// The source closed before the body ended.
    #[error("the body ended early (connection closed)")]
    Cut,
    /// The source sent bad framing.
    #[error("bad body framing: {0}")]
    Framing(#[from] BodyError),
    /// The destination failed.
    #[error("writing the body: {0}")]
    Write(#[source] io::Error),
}

/// A body on its way (see the module docs).
#[derive(Debug)]
pub(crate) struct Pump {
    dec: BodyDecoder,
    enc: Encode,
    /// Content bytes at the front of the source's read buffer still to be written.
    pending: usize,
    /// A chunk's content is being written: its CRLF follows.
    chunk_open: bool,
    /// The source's body ended (the last framing is composed, maybe not yet written).
    ended: bool,
    /// The destination is gone: read the body to its end and drop it.
    drain: bool,
    /// The last chunk (`0\r\n`) is composed: trailer fields follow it.
    last_chunk: bool,
    /// Content bytes written to the destination so far.
    pub(crate) moved: u64,
    /// The source sent bad framing: what was taken before it goes out first, so the next hop
    /// sees the body cut where it went bad.
    failed: Option<BodyError>,
}

impl Pump {
    pub(crate) fn new(framing: Framing, enc: Encode) -> Self {
        let dec = BodyDecoder::new(framing, 0, true);
        let ended = dec.is_done();
        Pump {
            dec,
            enc,
            pending: 0,
            chunk_open: false,
            ended,
            drain: false,
            last_chunk: false,
            moved: 0,
            failed: None,
        }
    }

    /// Pass a chunked body's trailer fields on (the default drops them, decisions D37).
    pub(crate) fn passing_trailers(mut self) -> Self {
        if self.enc == Encode::Chunked {
            self.dec.pass_trailers();
        }
        self
    }

    /// Stop writing: the rest of the body is read and dropped.
    pub(crate) fn drain(&mut self) {
        self.drain = true;
    }

    /// Copy until the body has ended and been written (and the destination flushed). An error
    /// leaves the connections in an unknown state: neither may be reused.
    #[cfg(test)]
    pub(crate) fn poll<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Conn<S>,
        dst: &mut Conn<D>,
    ) -> Poll<Result<(), PumpError>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        D: AsyncRead + AsyncWrite + Unpin,
    {
        self.poll_tee(cx, src, dst, None)
    }

    /// [`Pump::poll`], with each piece of content also shown to `tee` once it is written on
    /// (an inspector's copy: `super::tap`).
    pub(crate) fn poll_tee<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Conn<S>,
        dst: &mut Conn<D>,
        mut tee: Option<&mut Kept>,
    ) -> Poll<Result<(), PumpError>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        D: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            if self.failed.is_some() {
                if !self.drain {
                    // The flush's own failure does not matter: the framing error is the news.
                    let _ = ready!(dst.poll_flush(cx));
                }
                return Poll::Ready(Err(PumpError::Framing(self.failed.take().expect("set"))));
            }
            if self.drain {
                src.rbuf.advance(self.pending);
                self.pending = 0;
                dst.wbuf.clear();
            }
            // The next piece is taken before anything is written, so that it goes in one write
            // with what was composed before it (a head, the last chunk's CRLF).
            if self.pending == 0 && !self.ended {
                if self.dec.is_done() {
                    self.end(dst);
                } else if !src.rbuf.is_empty() {
                    let piece = match self.dec.next_piece(&src.rbuf) {
                        Ok(p) => p,
                        Err(e) => {
                            self.failed = Some(e);
                            continue;
                        }
                    };
                    match piece {
                        Piece::Data { skip, len } => {
                            src.rbuf.advance(skip);
                            self.pending = len;
                            if self.enc == Encode::Chunked && !self.drain {
                                chunk_size_line(&mut dst.wbuf, len);
                                self.chunk_open = true;
                            }
                        }
                        Piece::Done { used } => {
                            src.rbuf.advance(used);
                            self.end(dst);
                        }
                        Piece::Trailer { skip, len, end } => {
                            if !self.drain {
                                if !self.last_chunk {
                                    dst.wbuf.put_slice(b"0\r\n");
                                    self.last_chunk = true;
                                }
                                dst.wbuf.put_slice(&src.rbuf[skip..skip + len]);
                                dst.wbuf.put_slice(b"\r\n");
                            }
                            src.rbuf.advance(end);
                        }
                        Piece::More { used } => src.rbuf.advance(used),
                    }
                }
            }
            if self.pending > 0 || !dst.wbuf.is_empty() {
                let n = ready!(dst.poll_send(cx, &src.rbuf[..self.pending]))
                    .map_err(PumpError::Write)?;
                if let Some(tee) = tee.as_deref_mut() {
                    tee.see(&src.rbuf[..n]);
                }
                src.rbuf.advance(n);
                self.pending -= n;
                self.moved += n as u64;
                if self.pending == 0 && self.chunk_open {
                    self.chunk_open = false;
                    dst.wbuf.put_slice(b"\r\n");
                }
                continue;
            }
            if self.ended {
                if !self.drain {
                    ready!(dst.poll_flush(cx)).map_err(PumpError::Write)?;
                }
                return Poll::Ready(Ok(()));
            }
            // Nothing to write until more comes: what was given goes out first.
            if !self.drain {
                ready!(dst.poll_flush(cx)).map_err(PumpError::Write)?;
            }
            if ready!(src.poll_fill(cx)).map_err(PumpError::Read)? == 0 {
                if !self.dec.eof() {
                    return Poll::Ready(Err(PumpError::Cut));
                }
                self.end(dst);
            }
        }
    }

    fn end<D>(&mut self, dst: &mut Conn<D>) {
        self.ended = true;
        if self.enc == Encode::Chunked && !self.drain {
            dst.wbuf.put_slice(if self.last_chunk {
                b"\r\n"
            } else {
                b"0\r\n\r\n"
            });
        }
    }
}

/// `{len:x}\r\n`, with no formatting machinery.
fn chunk_size_line(out: &mut bytes::BytesMut, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::limits::Limits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Copy `input` (written in pieces of `split` bytes) framed as `framing`, encoded `enc`;
    /// give what came out and what stayed behind in the source.
    async fn copy(
        input: &[u8],
        split: usize,
        framing: Framing,
        enc: Encode,
    ) -> (Result<(), String>, Vec<u8>, Vec<u8>) {
        copy_with(input, split, Pump::new(framing, enc)).await
    }

    async fn copy_with(
        input: &[u8],
        split: usize,
        mut pump: Pump,
    ) -> (Result<(), String>, Vec<u8>, Vec<u8>) {
        let (src_io, mut feed) = tokio::io::duplex(1 << 20);
        let (dst_io, mut sink) = tokio::io::duplex(1 << 20);
        let mut src = Conn::new(src_io, b"", &Limits::default());
        let mut dst = Conn::new(dst_io, b"", &Limits::default());
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            for piece in input.chunks(split) {
                feed.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let res = std::future::poll_fn(|cx| pump.poll(cx, &mut src, &mut dst)).await;
        writer.await.unwrap();
        let rest = src.rbuf.to_vec();
        drop(dst);
        let mut out = Vec::new();
        sink.read_to_end(&mut out).await.unwrap();
        (res.map_err(|e| e.to_string()), out, rest)
    }

    #[test]
    fn size_lines_are_hex() {
        for (n, want) in [
            (0, "0\r\n"),
            (1, "1\r\n"),
            (255, "ff\r\n"),
            (65536, "10000\r\n"),
        ] {
            let mut b = bytes::BytesMut::new();
            chunk_size_line(&mut b, n);
            assert_eq!(&b[..], want.as_bytes());
        }
    }

    #[tokio::test]
    async fn framings_are_copied_over_any_split() {
        let chunked: &[u8] = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in [1, 2, 3, 7, 1000] {
            let (r, out, rest) = copy(b"helloNEXT", split, Framing::Length(5), Encode::Raw).await;
            assert_eq!((r, &out[..]), (Ok(()), &b"hello"[..]), "split {split}");
            // The source keeps what follows the body (the next request) unread or buffered.
            assert!(b"NEXT".starts_with(&rest), "split {split}: {rest:?}");

            let (r, out, rest) = copy(chunked, split, Framing::Chunked, Encode::Chunked).await;
            assert_eq!(r, Ok(()), "split {split}");
            let decoded = decode_chunked(&out);
            assert_eq!(decoded, b"hello world", "split {split}");
            assert!(out.ends_with(b"0\r\n\r\n") && !out.windows(3).any(|w| w == b"ext"));
            assert!(b"NEXT".starts_with(&rest), "split {split}: {rest:?}");

            let (r, out, _) =
                copy(b"until close", split, Framing::UntilClose, Encode::Chunked).await;
            assert_eq!(r, Ok(()));
            assert_eq!(decode_chunked(&out), b"until close");
            let (r, out, _) = copy(b"until close", split, Framing::UntilClose, Encode::Raw).await;
            assert_eq!((r, &out[..]), (Ok(()), &b"until close"[..]));
        }
    }

    #[tokio::test]
    async fn cut_and_bad_bodies_are_errors() {
        let (r, _, _) = copy(b"hel", 1, Framing::Length(5), Encode::Raw).await;
        assert!(r.unwrap_err().contains("ended early"));
        let (r, _, _) = copy(b"zz\r\nhello", 4, Framing::Chunked, Encode::Chunked).await;
        assert!(r.unwrap_err().contains("chunk"));
        let (r, _, _) = copy(b"3\r\nabcX\r\n", 4, Framing::Chunked, Encode::Chunked).await;
        assert!(r.unwrap_err().contains("chunk"));
        let (r, _, _) = copy(b"5\r\nab", 4, Framing::Chunked, Encode::Chunked).await;
        assert!(r.unwrap_err().contains("ended early"));
    }

    #[tokio::test]
    async fn trailers_pass_when_asked_and_bad_ones_are_errors() {
        let body: &[u8] = b"3\r\nabc\r\n0\r\nX-Sum: 7\r\nX-B:\tv w\n\r\nNEXT";
        for split in [1, 2, 5, 1000] {
            let pump = Pump::new(Framing::Chunked, Encode::Chunked).passing_trailers();
            let (r, out, rest) = copy_with(body, split, pump).await;
            assert_eq!(r, Ok(()), "split {split}");
            let tail = b"0\r\nX-Sum: 7\r\nX-B:\tv w\r\n\r\n";
            assert!(out.ends_with(tail), "split {split}: {out:?}");
            let mut chunks = out[..out.len() - tail.len()].to_vec();
            chunks.extend_from_slice(b"0\r\n\r\n");
            assert_eq!(decode_chunked(&chunks), b"abc", "split {split}");
            assert!(b"NEXT".starts_with(&rest), "split {split}: {rest:?}");
            // Dropped by default (D37).
            let (r, out, _) = copy(body, split, Framing::Chunked, Encode::Chunked).await;
            assert_eq!((r, decode_chunked(&out)), (Ok(()), b"abc".to_vec()));
        }
        // No trailers: the last chunk as always.
        let pump = Pump::new(Framing::Chunked, Encode::Chunked).passing_trailers();
        let (r, out, _) = copy_with(b"0\r\n\r\n", 1, pump).await;
        assert_eq!((r, &out[..]), (Ok(()), &b"0\r\n\r\n"[..]));
        for bad in [
            &b"0\r\nno colon\r\n\r\n"[..],
            b"0\r\n: v\r\n\r\n",
            b"0\r\nA b: v\r\n\r\n",
            b"0\r\nA: \x01\r\n\r\n",
        ] {
            let pump = Pump::new(Framing::Chunked, Encode::Chunked).passing_trailers();
            let (r, _, _) = copy_with(bad, 3, pump).await;
            assert!(r.unwrap_err().contains("trailer"), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn what_was_taken_before_bad_framing_goes_out() {
        let (r, out, _) = copy(
            b"3\r\nabc\r\nzz\r\n",
            1000,
            Framing::Chunked,
            Encode::Chunked,
        )
        .await;
        assert!(r.unwrap_err().contains("chunk"));
        assert_eq!(out, b"3\r\nabc\r\n");
    }

    /// A strict decoder of what the pump sends: only `hex CRLF data CRLF`, `0 CRLF CRLF`.
    pub(crate) fn decode_chunked(mut raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let eol = raw
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("size line");
            let size =
                usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap(), 16).unwrap();
            raw = &raw[eol + 2..];
            if size == 0 {
                assert_eq!(raw, b"\r\n", "nothing after the last chunk");
                return out;
            }
            out.extend_from_slice(&raw[..size]);
            assert_eq!(&raw[size..size + 2], b"\r\n");
            raw = &raw[size + 2..];
        }
    }
}
