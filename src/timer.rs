//! The head-read clock for the dialer's flipped HTTP server.
//!
//! hyper's `header_read_timeout` starts counting as soon as hyper *waits* for a request head,
//! so it is also an idle timeout: with it, a parked reversed connection (which is supposed to
//! wait, possibly for hours) would be closed after 30 s; without it, a peer trickling one byte a
//! second holds the connection forever. PTTH needs the two apart.
//!
//! [`HeadClock`] gives hyper a [`hyper::rt::Timer`] whose "header timeout" only starts at the
//! first byte of a head, which [`Activity`] (a wrapper around the stream) reports. Until that
//! byte comes, only the optional idle timeout runs.
//!
//! hyper reads ahead: the start of the next head often arrives in the same read as the end of
//! the previous request, before hyper starts waiting for that head. So "the first byte read
//! since the wait began" is not enough (a peer could send one request plus half of the next
//! head in one write and then stall forever). [`Activity`] therefore follows the request
//! framing itself (a shadow of what hyper parses: head, then `Content-Length` or chunked body)
//! and records when each head really began. If the shadow cannot follow (a head it cannot
//! parse), it falls back to "first byte since the wait began"; hyper rejects such heads anyway.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::limits::Limits;
use crate::proto::body::{BodyDecoder, Framing};
use crate::proto::request;

/// Shared between the stream wrapper and the timer of one connection.
#[derive(Debug)]
struct Shared {
    origin: Instant,
    /// Nanoseconds after `origin` (plus one, so 0 means "none") of the first byte read since
    /// hyper last started waiting for a head (or, while `tracking`, of the current head).
    first_byte: AtomicU64,
    /// Whether [`Activity`] follows the request framing (then `first_byte` is exact).
    tracking: AtomicBool,
}

impl Shared {
    fn mark_first_byte(&self) {
        if self.first_byte.load(Ordering::Relaxed) == 0 {
            let nanos = self.origin.elapsed().as_nanos() as u64 + 1;
            let _ =
                self.first_byte
                    .compare_exchange(0, nanos, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn set_first_byte(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.origin).as_nanos() as u64 + 1;
        self.first_byte.store(nanos, Ordering::Relaxed);
    }

    fn first_byte(&self) -> Option<Instant> {
        match self.first_byte.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.origin + Duration::from_nanos(n - 1)),
        }
    }
}

/// The timer half: give it to hyper's server builder with `.timer(..)` and set
/// `header_read_timeout` to any value (the clock's own `head_timeout` is what counts).
#[derive(Debug, Clone)]
pub struct HeadClock {
    shared: Arc<Shared>,
    head_timeout: Duration,
    idle_timeout: Option<Duration>,
}

/// The stream half: reports the first byte of each head to its [`HeadClock`].
#[derive(Debug)]
pub struct Activity<IO> {
    inner: IO,
    shared: Arc<Shared>,
    shadow: Shadow,
    limits: Limits,
}

/// Where the request stream is, as far as the shadow framing can tell.
#[derive(Debug)]
enum Shadow {
    /// Reading a head; holds its bytes so far when it spans reads (bounded by
    /// `Limits::max_head_bytes`); empty when none of it has come yet.
    Head(Vec<u8>),
    /// Reading a `Content-Length` body: bytes left (counted, never copied).
    Length(u64),
    /// Reading a chunked body; `pending` holds an incomplete chunk line or trailer.
    Chunked {
        body: BodyDecoder,
        pending: BytesMut,
    },
    /// Not following the framing any more.
    Off,
}

/// Heads with at most this many fields are parsed into a stack array.
const STACK_HEADERS: usize = 128;

/// Find the end of the request head at the front of `buf` and how its body is framed, as
/// [`request::parse`] and [`request::framing`] would, without building a request.
///
/// Only the framing fields are looked at; a head with `Transfer-Encoding`, or with a
/// `Content-Length` that is not a plain number, takes the full path. `Err` means the shadow
/// cannot follow (hyper rejects such a head too).
fn head_framing(buf: &[u8], limits: &Limits) -> Result<Option<(Framing, usize)>, ()> {
    if limits.max_headers > STACK_HEADERS {
        return full_head_framing(buf, limits);
    }
    let mut slots = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut req = httparse::Request::new(&mut slots[..limits.max_headers]);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= limits.max_head_bytes => return Ok(None),
        _ => return Err(()),
    };
    if len > limits.max_head_bytes {
        return Err(());
    }
    let mut length: Option<u64> = None;
    for h in req.headers.iter() {
        let simple = if h.name.eq_ignore_ascii_case("content-length") {
            plain_number(h.value).filter(|n| length.is_none_or(|l| l == *n))
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            None
        } else {
            continue;
        };
        match simple {
            Some(n) => length = Some(n),
            None => return full_head_framing(buf, limits),
        }
    }
    Ok(Some((
        match length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        },
        len,
    )))
}

/// A `Content-Length` value that is one plain decimal number.
fn plain_number(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The full parse, for the heads [`head_framing`] leaves to it.
fn full_head_framing(buf: &[u8], limits: &Limits) -> Result<Option<(Framing, usize)>, ()> {
    match request::parse(buf, limits) {
        Ok(None) => Ok(None),
        Ok(Some((parts, len))) => request::framing(&parts.headers)
            .map(|f| Some((f, len)))
            .map_err(|_| ()),
        Err(_) => Err(()),
    }
}

/// A clock and the stream wrapper that feeds it.
pub(crate) fn head_clock<IO>(io: IO, limits: &Limits) -> (Activity<IO>, HeadClock) {
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        first_byte: AtomicU64::new(0),
        tracking: AtomicBool::new(true),
    });
    (
        Activity {
            inner: io,
            shared: shared.clone(),
            shadow: Shadow::Head(Vec::new()),
            limits: limits.clone(),
        },
        HeadClock {
            shared,
            head_timeout: limits.head_timeout,
            idle_timeout: limits.idle_timeout,
        },
    )
}

impl<IO> Activity<IO> {
    /// Follow the request framing over `data`, just read, and record when each head begins.
    fn follow(&mut self, data: &[u8]) {
        let now = Instant::now();
        let mut carry = self.follow_slice(data, now);
        while let Some(rest) = carry {
            carry = self.follow_slice(&rest, now);
        }
    }

    /// Follow over `input`. Returns the bytes left over after a chunked body ended (they were
    /// copied for the chunk decoder; the caller goes on with them).
    fn follow_slice(&mut self, mut input: &[u8], now: Instant) -> Option<BytesMut> {
        loop {
            match &mut self.shadow {
                Shadow::Off => {
                    self.shared.mark_first_byte();
                    return None;
                }
                Shadow::Head(head) => {
                    if input.is_empty() {
                        return None;
                    }
                    let found = if head.is_empty() {
                        self.shared.set_first_byte(now);
                        match head_framing(input, &self.limits) {
                            Ok(Some((framing, len))) => {
                                input = &input[len..];
                                Ok(Some(framing))
                            }
                            Ok(None) => {
                                head.extend_from_slice(input);
                                Ok(None)
                            }
                            Err(()) => Err(()),
                        }
                    } else {
                        let before = head.len();
                        head.extend_from_slice(input);
                        match head_framing(head, &self.limits) {
                            Ok(Some((framing, len))) => {
                                input = &input[len - before..];
                                Ok(Some(framing))
                            }
                            Ok(None) => Ok(None),
                            Err(()) => Err(()),
                        }
                    };
                    match found {
                        Ok(None) => return None,
                        Ok(Some(framing)) => {
                            self.shared.first_byte.store(0, Ordering::Relaxed);
                            self.shadow = match framing {
                                Framing::Empty => Shadow::Head(Vec::new()),
                                Framing::Length(n) => Shadow::Length(n),
                                // Keeps nothing: only the boundaries matter.
                                f => Shadow::Chunked {
                                    body: BodyDecoder::new(f, 0, true),
                                    pending: BytesMut::new(),
                                },
                            };
                        }
                        Err(()) => self.stop_following(),
                    }
                }
                Shadow::Length(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    *left -= n as u64;
                    input = &input[n..];
                    if *left > 0 {
                        return None;
                    }
                    self.shadow = Shadow::Head(Vec::new());
                }
                Shadow::Chunked { body, pending } => {
                    pending.extend_from_slice(input);
                    match body.decode(pending) {
                        Ok(true) => {
                            let rest = std::mem::take(pending);
                            self.shadow = Shadow::Head(Vec::new());
                            return (!rest.is_empty()).then_some(rest);
                        }
                        Ok(false) => return None,
                        Err(_) => {
                            self.stop_following();
                            return None;
                        }
                    }
                }
            }
        }
    }

    fn stop_following(&mut self) {
        self.shadow = Shadow::Off;
        self.shared.tracking.store(false, Ordering::Relaxed);
    }
}

impl hyper::rt::Timer for HeadClock {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        hyper_util::rt::TokioTimer::new().sleep(duration)
    }

    /// hyper calls this when it starts waiting for a head: a new wait begins.
    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        if !self.shared.tracking.load(Ordering::Relaxed) {
            self.shared.first_byte.store(0, Ordering::Relaxed);
        }
        Box::pin(HeadSleep {
            clock: self.clone(),
            idle_deadline: self.idle_timeout.map(|d| Instant::now() + d),
            sleep: None,
        })
    }
}

/// Fires `head_timeout` after the first byte of a head, or at the idle deadline if no byte has
/// come. With neither, it stays pending: hyper polls it again whenever the stream wakes, which
/// is exactly when a first byte may have arrived.
struct HeadSleep {
    clock: HeadClock,
    idle_deadline: Option<Instant>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for HeadSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = match self.clock.shared.first_byte() {
            Some(t) => Some(t + self.clock.head_timeout),
            None => self.idle_deadline,
        };
        let Some(deadline) = deadline else {
            return Poll::Pending;
        };
        match &mut self.sleep {
            Some(s) if s.deadline() == deadline => {}
            Some(s) => s.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.sleep.as_mut().expect("set above").as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

impl<IO: AsyncRead + Unpin> AsyncRead for Activity<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let this = &mut *self;
            this.follow(&buf.filled()[before..]);
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Activity<IO> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn activity() -> Activity<()> {
        head_clock((), &Limits::default()).0
    }

    fn waiting_for_head(a: &Activity<()>) -> bool {
        matches!(&a.shadow, Shadow::Head(h) if h.is_empty())
    }

    #[tokio::test]
    async fn follows_length_and_chunked_bodies_over_any_split() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            GET /c HTTP/1.1\r\nContent-Length: 0\r\n\r\n\
            GET /d HTTP/1.1\r\n";
        for split in 1..stream.len() {
            let mut a = activity();
            for piece in stream.chunks(split) {
                a.follow(piece);
            }
            assert!(a.shared.tracking.load(Ordering::Relaxed), "split {split}");
            // The last head is half read: it is being timed.
            assert!(
                matches!(&a.shadow, Shadow::Head(h) if h.len() == 17 || split >= stream.len() - 17),
                "split {split}: {:?}",
                a.shadow
            );
            assert!(a.shared.first_byte().is_some(), "split {split}");
        }
        let mut a = activity();
        a.follow(&stream[..stream.len() - 17]);
        assert!(waiting_for_head(&a));
        assert!(a.shared.first_byte().is_none());
    }

    #[tokio::test]
    async fn unframeable_heads_stop_the_shadow() {
        let mut a = activity();
        a.follow(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert!(!a.shared.tracking.load(Ordering::Relaxed));
        let mut a = activity();
        a.follow(b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabcGET");
        assert!(a.shared.tracking.load(Ordering::Relaxed));
        assert!(!waiting_for_head(&a));
    }
}
