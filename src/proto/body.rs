//! Body framing (RFC 9112 §6, §7.1), sans-IO, for everything that reads a body itself: the two
//! bodies the handshake must read (the upgrade request's, listener, RFC 9110 §7.8: the switch
//! happens only after the whole request; and a refusal's, dialer, to report it), the dialer's
//! head clock (which follows chunked bodies keeping nothing, to know where each head starts),
//! and the forwarding engine (`crate::h1`), which walks bodies piece by piece and copies the
//! content itself.

use bytes::{Buf, BytesMut};

use crate::error::BodyError;
use crate::limits::{MAX_CHUNK_LINE, MAX_TRAILER_BYTES};

/// How a body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    /// Reading a chunk-size line; the first `scanned` bytes of it hold no line end (so a line
    /// cut over many reads is scanned once, not once per read).
    ChunkSize {
        scanned: usize,
    },
    ChunkData(u64),
    ChunkDataEnd,
    /// Reading the trailer section: `seen` bytes of finished lines, `scanned` bytes of the
    /// current one known to hold no line end.
    Trailers {
        seen: usize,
        scanned: usize,
    },
    UntilClose,
    Done,
}

/// One step of [`BodyDecoder::next_piece`] over the front of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `input[skip..skip + len]` is body content; everything up to `skip + len` is consumed.
    Data {
        /// Framing bytes before the content (a chunk-size line, the CRLF after a chunk).
        skip: usize,
        /// Content bytes (never 0).
        len: usize,
    },
    /// The first `used` bytes were framing; the rest (the start of a line) must be presented
    /// again, with more bytes behind it.
    More {
        /// Bytes consumed.
        used: usize,
    },
    /// `input[skip..skip + len]` is one trailer field line, without its line end; everything
    /// up to `end` is consumed. Only from a decoder told to [`BodyDecoder::pass_trailers`].
    Trailer {
        /// Framing bytes before the line (the last chunk's size line).
        skip: usize,
        /// The field line's length.
        len: usize,
        /// Bytes consumed, the line end included.
        end: usize,
    },
    /// The body ended after `used` bytes; what follows is not the body's.
    Done {
        /// Bytes consumed.
        used: usize,
    },
}

/// An incremental, sans-IO body decoder with a cap on what it keeps.
///
/// Feed it bytes with [`BodyDecoder::decode`]; it consumes body bytes from the front of the
/// buffer and leaves whatever follows the body there. A forwarding hop that copies the body
/// instead of keeping it walks it with [`BodyDecoder::next_piece`], which says where the
/// content lies and copies nothing.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
    limit: usize,
    truncate: bool,
    out: BytesMut,
    truncated: bool,
    /// Trailer fields are handed out as [`Piece::Trailer`] instead of dropped.
    pass_trailers: bool,
}

impl BodyDecoder {
    /// A decoder for `framing` that keeps at most `limit` bytes. Past the limit it fails with
    /// [`BodyError::TooLarge`], unless `truncate` is set, in which case it drops the excess and
    /// remembers that it did.
    pub fn new(framing: Framing, limit: usize, truncate: bool) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize { scanned: 0 },
            Framing::UntilClose => State::UntilClose,
        };
        BodyDecoder {
            state,
            limit,
            truncate,
            out: BytesMut::new(),
            truncated: false,
            pass_trailers: false,
        }
    }

    /// Hand trailer fields out as [`Piece::Trailer`] (each checked to be a field line), for a
    /// hop that passes them on; the default drops them.
    pub fn pass_trailers(&mut self) {
        self.pass_trailers = true;
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The body read so far and whether any of it was dropped.
    pub fn finish(self) -> (bytes::Bytes, bool) {
        (self.out.freeze(), self.truncated)
    }

    /// Tell the decoder the peer closed the stream. Only an until-close body ends that way.
    pub fn eof(&mut self) -> bool {
        if self.state == State::UntilClose {
            self.state = State::Done;
        }
        self.is_done()
    }

    /// Consume as much of `buf` as belongs to the body. Returns whether the body is complete.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<bool, BodyError> {
        let (used, done) = self.decode_slice(buf)?;
        buf.advance(used);
        Ok(done)
    }

    /// Consume as much of `input` as belongs to the body, copying only what is kept. Returns
    /// how many bytes belong to it and whether the body is complete. The bytes after those are
    /// the caller's: what follows the body, or the start of a chunk line or trailer that the
    /// next call must see again, with more bytes behind it.
    pub fn decode_slice(&mut self, input: &[u8]) -> Result<(usize, bool), BodyError> {
        let mut used = 0;
        loop {
            match self.next_piece(&input[used..])? {
                Piece::Data { skip, len } => {
                    let start = used + skip;
                    self.keep(&input[start..start + len])?;
                    used = start + len;
                }
                Piece::Trailer { end, .. } => used += end,
                Piece::More { used: n } => return Ok((used + n, false)),
                Piece::Done { used: n } => return Ok((used + n, true)),
            }
        }
    }

    /// The next piece of the body at the front of `input`: content to take, framing that needs
    /// more bytes, or the end. The decoder counts the content of a [`Piece::Data`] as consumed.
    /// Chunk extensions and trailer fields are checked for length and line endings and
    /// dropped. An empty `input` is [`Piece::More`] (or [`Piece::Done`]).
    pub fn next_piece(&mut self, input: &[u8]) -> Result<Piece, BodyError> {
        let mut used = 0;
        loop {
            let buf = &input[used..];
            match self.state {
                State::Done => return Ok(Piece::Done { used }),
                State::Length(left) | State::ChunkData(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    if n == 0 {
                        return Ok(Piece::More { used });
                    }
                    let left = left - n as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkDataEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Piece::Data { skip: used, len: n });
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Piece::More { used });
                    }
                    return Ok(Piece::Data {
                        skip: used,
                        len: buf.len(),
                    });
                }
                State::ChunkSize { scanned } => {
                    if line_end_from(buf, scanned).is_none() {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(BodyError::BadChunk("chunk-size line too long"));
                        }
                        // A bad size shows at once on the first look; later looks only search
                        // for the line end.
                        if scanned == 0 && httparse::parse_chunk_size(buf).is_err() {
                            return Err(BodyError::BadChunk("invalid chunk size"));
                        }
                        self.state = State::ChunkSize { scanned: buf.len() };
                        return Ok(Piece::More { used });
                    }
                    match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((n, size))) => {
                            if n > MAX_CHUNK_LINE + 2 {
                                return Err(BodyError::BadChunk("chunk-size line too long"));
                            }
                            used += n;
                            self.state = if size == 0 {
                                State::Trailers {
                                    seen: 0,
                                    scanned: 0,
                                }
                            } else {
                                State::ChunkData(size)
                            };
                        }
                        // A line end is there, so httparse has all it needs: anything but a
                        // complete size line is a bad one.
                        Ok(httparse::Status::Partial) | Err(_) => {
                            return Err(BodyError::BadChunk("invalid chunk size"));
                        }
                    }
                }
                State::ChunkDataEnd => {
                    match line_end(buf) {
                        None if buf.len() < 2 => return Ok(Piece::More { used }),
                        Some(0) => {}
                        _ => return Err(BodyError::BadChunk("chunk data not followed by CRLF")),
                    }
                    used += if buf[0] == b'\r' { 2 } else { 1 };
                    self.state = State::ChunkSize { scanned: 0 };
                }
                State::Trailers { seen, scanned } => {
                    // Trailer fields are read and dropped: nothing here uses them.
                    let Some(line) = line_end_from(buf, scanned) else {
                        if seen + buf.len() > MAX_TRAILER_BYTES {
                            return Err(BodyError::BadChunk("trailer section too long"));
                        }
                        self.state = State::Trailers {
                            seen,
                            scanned: buf.len(),
                        };
                        return Ok(Piece::More { used });
                    };
                    let eol = if buf.get(line) == Some(&b'\r') { 2 } else { 1 };
                    used += line + eol;
                    let seen = seen + line + eol;
                    if seen > MAX_TRAILER_BYTES {
                        return Err(BodyError::BadChunk("trailer section too long"));
                    }
                    self.state = if line == 0 {
                        State::Done
                    } else {
                        State::Trailers { seen, scanned: 0 }
                    };
                    if line > 0 && self.pass_trailers {
                        if !is_field_line(&buf[..line]) {
                            return Err(BodyError::BadChunk("invalid trailer field"));
                        }
                        return Ok(Piece::Trailer {
                            skip: used - line - eol,
                            len: line,
                            end: used,
                        });
                    }
                }
            }
        }
    }

    /// Keep `data` as body, up to the limit.
    fn keep(&mut self, data: &[u8]) -> Result<(), BodyError> {
        let room = self.limit.saturating_sub(self.out.len());
        if data.len() > room {
            if !self.truncate {
                return Err(BodyError::TooLarge { limit: self.limit });
            }
            self.truncated = true;
        }
        self.out.extend_from_slice(&data[..data.len().min(room)]);
        Ok(())
    }
}

/// `name: value` with a token name and no control bytes but tab in the value (RFC 9110 §5.1,
/// §5.5): what a trailer line must be to be passed on as it came.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name.iter().all(|&b| crate::proto::tokens::is_tchar(b))
        && value
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// [`line_end`], when the first `scanned` bytes are known to hold no `\n`. A `\r` at the
/// edge is looked at again: it may be the first half of a CRLF.
fn line_end_from(buf: &[u8], scanned: usize) -> Option<usize> {
    let from = scanned.min(buf.len());
    let lf = from + buf[from..].iter().position(|&b| b == b'\n')?;
    if lf > 0 && buf[lf - 1] == b'\r' {
        Some(lf - 1)
    } else {
        Some(lf)
    }
}

/// Offset of the line ending (`\r\n`, or a bare `\n`) in `buf`. A `\r` not followed by `\n` is
/// not a line end; if it is the last byte we cannot tell yet.
fn line_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.iter().position(|&b| b == b'\n')?;
    if lf > 0 && buf[lf - 1] == b'\r' {
        Some(lf - 1)
    } else {
        Some(lf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(framing: Framing, input: &[u8], limit: usize) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
        let mut d = BodyDecoder::new(framing, limit, false);
        let mut buf = BytesMut::from(input);
        assert!(d.decode(&mut buf)?, "body incomplete");
        Ok((d.finish().0.to_vec(), buf.to_vec()))
    }

    #[test]
    fn length_bodies_leave_what_follows() {
        assert_eq!(
            run(Framing::Length(5), b"hellojunk", 10).unwrap(),
            (b"hello".to_vec(), b"junk".to_vec())
        );
        assert_eq!(
            run(Framing::Length(5), b"hello", 4),
            Err(BodyError::TooLarge { limit: 4 })
        );
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let raw = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nnext";
        assert_eq!(
            run(Framing::Chunked, raw, 100).unwrap(),
            (b"hello world".to_vec(), b"next".to_vec())
        );
    }

    #[test]
    fn chunked_byte_by_byte() {
        let raw = b"3\r\nabc\r\n0\r\n\r\n";
        let mut d = BodyDecoder::new(Framing::Chunked, 100, false);
        let mut buf = BytesMut::new();
        let mut done = false;
        for &b in raw {
            buf.extend_from_slice(&[b]);
            done = d.decode(&mut buf).unwrap();
        }
        assert!(done);
        assert_eq!(&d.finish().0[..], b"abc");
    }

    #[test]
    fn bad_chunks_are_errors() {
        let bad = |raw: &[u8]| {
            let mut d = BodyDecoder::new(Framing::Chunked, 100, false);
            d.decode(&mut BytesMut::from(raw))
        };
        assert!(bad(b"zz\r\n").is_err());
        assert!(bad(b"3\r\nabcX\r\n").is_err());
        assert!(bad(&[b'1'; 40]).is_err());
        assert!(bad(&[b';'; MAX_CHUNK_LINE + 2]).is_err());
    }

    #[test]
    fn truncating_decoder_keeps_the_prefix() {
        let mut d = BodyDecoder::new(Framing::UntilClose, 3, true);
        assert!(!d.decode(&mut BytesMut::from(&b"abcdef"[..])).unwrap());
        assert!(d.eof());
        assert_eq!(d.finish(), (bytes::Bytes::from_static(b"abc"), true));
    }
}
