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
//! and records when each head really began. The head is read with [`crate::proto::head`], the
//! one head reader (scan and framing, nothing built), and bodies are followed without copying
//! them. If the shadow cannot follow (a head it cannot parse), it falls back to "first byte
//! since the wait began"; hyper rejects such heads anyway.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

use crate::error::HeadError;
use crate::limits::Limits;
use crate::proto::body::{BodyDecoder, Framing};
use crate::proto::head::{self, Slots};

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
    /// The start of a head or chunk line that the last read cut off: the next read continues
    /// it. Bounded by the caps on heads, chunk lines and trailers, plus one read.
    partial: Vec<u8>,
    limits: Limits,
}

/// Where the request stream is, as far as the shadow framing can tell.
#[derive(Debug)]
enum Shadow {
    /// Reading a head (its start, if a read cut it, is in `Activity::partial`).
    Head,
    /// Reading a `Content-Length` body: bytes left (counted, never copied).
    Length(u64),
    /// Reading a chunked body: only its boundaries are followed, nothing is kept.
    Chunked(BodyDecoder),
    /// Not following the framing any more.
    Off,
}

/// Find the end of the request head at the front of `buf` and how its body is framed: one
/// [`head::Request`] scan, no request built. `Err` means the shadow cannot follow (hyper
/// rejects such a head too).
fn head_framing(buf: &[u8], limits: &Limits) -> Result<Option<(Framing, usize)>, HeadError> {
    let mut slots = Slots::new();
    match head::Request::parse(buf, &mut slots, limits)? {
        Some(head) => Ok(Some((head.framing()?, head.len))),
        None => Ok(None),
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
            shadow: Shadow::Head,
            partial: Vec::new(),
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
    /// Follow the request framing over `input`, just read, and record when each head begins.
    fn follow(&mut self, mut input: &[u8]) {
        let now = Instant::now();
        loop {
            match &mut self.shadow {
                Shadow::Off => {
                    self.shared.mark_first_byte();
                    return;
                }
                Shadow::Head => {
                    if input.is_empty() {
                        return;
                    }
                    let before = self.partial.len();
                    let scanned = if before == 0 {
                        self.shared.set_first_byte(now);
                        head_framing(input, &self.limits)
                    } else {
                        self.partial.extend_from_slice(input);
                        head_framing(&self.partial, &self.limits)
                    };
                    match scanned {
                        Ok(None) => {
                            if before == 0 {
                                self.partial.extend_from_slice(input);
                            }
                            return;
                        }
                        Ok(Some((framing, len))) => {
                            input = &input[len - before..];
                            self.partial = Vec::new();
                            self.shared.first_byte.store(0, Ordering::Relaxed);
                            self.shadow = match framing {
                                Framing::Empty => Shadow::Head,
                                Framing::Length(n) => Shadow::Length(n),
                                // Keeps nothing: only the boundaries matter.
                                f => Shadow::Chunked(BodyDecoder::new(f, 0, true)),
                            };
                        }
                        Err(_) => self.stop_following(),
                    }
                }
                Shadow::Length(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    *left -= n as u64;
                    input = &input[n..];
                    if *left > 0 {
                        return;
                    }
                    self.shadow = Shadow::Head;
                }
                Shadow::Chunked(body) => {
                    // A chunk line cut by the last read is decoded again with this read behind
                    // it; otherwise the read is decoded where it lies.
                    let before = self.partial.len();
                    let decoded = if before == 0 {
                        body.decode_slice(input)
                    } else {
                        self.partial.extend_from_slice(input);
                        body.decode_slice(&self.partial)
                    };
                    match decoded {
                        Ok((used, true)) => {
                            // The decoder needs more than the cut line to finish it, so the
                            // body ends inside this read: the rest of it is the next head.
                            let Some(in_input) = used.checked_sub(before) else {
                                self.stop_following();
                                return;
                            };
                            input = &input[in_input..];
                            self.partial = Vec::new();
                            self.shadow = Shadow::Head;
                        }
                        Ok((used, false)) => {
                            if before == 0 {
                                self.partial.extend_from_slice(&input[used..]);
                            } else {
                                self.partial.drain(..used);
                            }
                            return;
                        }
                        Err(_) => {
                            self.stop_following();
                            return;
                        }
                    }
                }
            }
        }
    }

    fn stop_following(&mut self) {
        self.shadow = Shadow::Off;
        self.partial = Vec::new();
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

crate::io::write_through!(Activity, inner);

#[cfg(test)]
mod tests {
    use super::*;

    fn activity() -> Activity<()> {
        head_clock((), &Limits::default()).0
    }

    fn waiting_for_head(a: &Activity<()>) -> bool {
        matches!(&a.shadow, Shadow::Head) && a.partial.is_empty()
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
                matches!(&a.shadow, Shadow::Head)
                    && (a.partial.len() == 17 || split >= stream.len() - 17),
                "split {split}: {:?} {:?}",
                a.shadow,
                a.partial
            );
            assert!(a.shared.first_byte().is_some(), "split {split}");
        }
        let mut a = activity();
        a.follow(&stream[..stream.len() - 17]);
        assert!(waiting_for_head(&a));
        assert!(a.shared.first_byte().is_none());
    }

    #[tokio::test]
    async fn chunk_lines_and_trailers_cut_anywhere_are_followed() {
        let stream: &[u8] = b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;name=\"v\"\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n\
            POST /v HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
        for split in 1..stream.len() {
            let mut a = activity();
            for piece in stream.chunks(split) {
                a.follow(piece);
            }
            assert!(a.shared.tracking.load(Ordering::Relaxed), "split {split}");
            assert!(waiting_for_head(&a), "split {split}: {:?}", a.shadow);
            assert!(a.shared.first_byte().is_none(), "split {split}");
        }
    }

    /// Not a check: what `follow` costs per request stream, printed. Run it with
    /// `cargo test --profile profiling --lib head_clock::tests::follow_cost -- --ignored
    /// --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn follow_cost() {
        const ROUNDS: u32 = 20_000;
        let get: &[u8] = b"GET /api/items?id=17 HTTP/1.1\r\nHost: \r\nUser-Agent: curl/8.5.0\r\n\
            Accept: */*\r\nX-Forwarded-For: 127.0.0.1\r\nForwarded: for=127.0.0.1;proto=http\r\n\
            X-Forwarded-Host: demo.localhost:8080\r\nX-Forwarded-Proto: http\r\n\r\n";
        let mut post = b"POST /upload HTTP/1.1\r\nHost: \r\nContent-Length: 65536\r\n\r\n".to_vec();
        post.resize(post.len() + 65536, b'x');
        let mut chunked =
            b"POST /upload HTTP/1.1\r\nHost: \r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..16 {
            chunked.extend_from_slice(b"1000\r\n");
            chunked.resize(chunked.len() + 4096, b'x');
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let cases: [(&str, &[u8], usize); 4] = [
            ("GET head, one read", get, usize::MAX),
            ("GET head, cut in two reads", get, get.len() / 2 + 1),
            (
                "POST 64 KiB Content-Length body, 16 KiB reads",
                &post,
                16 * 1024,
            ),
            (
                "POST 64 KiB chunked body (4 KiB chunks), 16 KiB reads",
                &chunked,
                16 * 1024,
            ),
        ];
        for (name, stream, read) in cases {
            let mut a = activity();
            let start = std::time::Instant::now();
            for _ in 0..ROUNDS {
                for piece in stream.chunks(read) {
                    a.follow(std::hint::black_box(piece));
                }
            }
            let per = start.elapsed().as_nanos() / u128::from(ROUNDS);
            assert!(a.shared.tracking.load(Ordering::Relaxed), "{name}");
            println!("{name}: {per} ns/request");
        }
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
