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
use crate::proto::body::BodyDecoder;
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
    /// Reading a head; holds its bytes so far (bounded by `Limits::max_head_bytes`).
    Head(BytesMut),
    /// Reading a request body.
    Body(BodyDecoder),
    /// Not following the framing any more.
    Off,
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
            shadow: Shadow::Head(BytesMut::new()),
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
        let mut input = BytesMut::from(data);
        loop {
            match &mut self.shadow {
                Shadow::Off => {
                    self.shared.mark_first_byte();
                    return;
                }
                Shadow::Head(head) => {
                    if input.is_empty() {
                        return;
                    }
                    if head.is_empty() {
                        self.shared.set_first_byte(now);
                    }
                    head.extend_from_slice(&input);
                    input.clear();
                    let framing = match request::parse(head, &self.limits) {
                        Ok(None) => return,
                        Ok(Some((parts, len))) => {
                            input = head.split_off(len);
                            request::framing(&parts.headers)
                        }
                        Err(e) => Err(e),
                    };
                    match framing {
                        Ok(framing) => {
                            self.shared.first_byte.store(0, Ordering::Relaxed);
                            // Keeps nothing: only the boundaries matter.
                            self.shadow = Shadow::Body(BodyDecoder::new(framing, 0, true));
                        }
                        Err(_) => self.stop_following(),
                    }
                }
                Shadow::Body(body) => match body.decode(&mut input) {
                    Ok(true) => self.shadow = Shadow::Head(BytesMut::new()),
                    Ok(false) => return,
                    Err(_) => self.stop_following(),
                },
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
