//! `Expect: 100-continue` passed through a proxy hop (RFC 9110 §10.1.1).
//!
//! The relay and the agent both forward requests with hyper: a server on the side the request
//! comes from, a client on the side it goes to. hyper's server sends `100 Continue` by itself
//! the moment the request body is first polled, and hyper's client polls the body it sends as
//! soon as the head is written. Left alone, every hop would therefore answer `100` at once and
//! pull the whole body in, even when the origin refuses it.
//!
//! [`gate`] wraps the body of a request that expects `100` so that it is not polled until the
//! next hop has answered `100` (seen with [`hyper::ext::on_informational`], [`Gate::watch`]) or
//! a bounded wait has passed (a client "MAY proceed to send the content" without the `100` and
//! "SHOULD NOT wait for an indefinite period"). Not polling the incoming body is what keeps this
//! hop's own server from sending its `100`: the `100` travels back hop by hop from whoever
//! decided. If the final response comes first ([`Gate::refuse`]), the body is never sent: it is
//! dropped (so this hop's server does not send `100` either and closes after its response), and
//! the caller marks both connections as not reusable, since the next hop was told a body would
//! follow.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{HeaderMap, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::proto::request::expects_continue;

/// The body is held back: no `100` and no final answer yet.
const WAITING: u8 = 0;
/// The body may go: the next hop sent `100`, or the wait passed.
const OPEN: u8 = 1;
/// A final answer came first: the body is never sent.
const REFUSED: u8 = 2;

#[derive(Debug)]
struct Shared {
    state: AtomicU8,
    /// The task polling the body, woken when the state changes.
    waker: Mutex<Option<Waker>>,
}

impl Shared {
    /// Move from `WAITING` to `to`; `false` if the state had already left `WAITING`.
    fn settle(&self, to: u8) -> bool {
        let moved = self
            .state
            .compare_exchange(WAITING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved
            && let Some(w) = self
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        {
            w.wake();
        }
        moved
    }
}

/// The sender's handle on a held-back body.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    shared: Arc<Shared>,
}

impl Gate {
    /// Open the gate when `req`, sent with hyper's client, gets a `100 Continue`.
    pub(crate) fn watch<B>(&self, req: &mut Request<B>) {
        let shared = self.shared.clone();
        hyper::ext::on_informational(req, move |res| {
            if res.status() == StatusCode::CONTINUE {
                shared.settle(OPEN);
            }
        });
    }

    /// The final response has come. Returns `true` if it came before the body was let go: the
    /// body is then never sent (and dropped), and the connection it was announced on cannot
    /// be reused.
    pub(crate) fn refuse(&self) -> bool {
        self.shared.settle(REFUSED)
    }
}

/// Hold `body` back if `headers` expect `100 Continue` and there is a body to hold; `wait` is
/// how long to wait for the `100` before letting it go anyway. Without an expectation the body
/// is passed through untouched (and no gate is returned).
pub(crate) fn gate<B: Body>(
    headers: &HeaderMap,
    body: B,
    wait: Duration,
) -> (Gated<B>, Option<Gate>) {
    if !expects_continue(headers) || body.is_end_stream() {
        return (Gated::open(body), None);
    }
    let shared = Arc::new(Shared {
        state: AtomicU8::new(WAITING),
        waker: Mutex::new(None),
    });
    let gated = Gated {
        inner: Some(body),
        shared: Some(shared.clone()),
        wait,
        sleep: None,
    };
    (gated, Some(Gate { shared }))
}

/// A request body that is not polled until its [`Gate`] opens (see the module docs).
#[derive(Debug)]
pub(crate) struct Gated<B> {
    /// `None` once refused: dropped, never sent.
    inner: Option<B>,
    /// `None`: no expectation, always open.
    shared: Option<Arc<Shared>>,
    wait: Duration,
    /// The bounded wait, started when the body is first asked for (the head has been written).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Gated<B> {
    /// A body with no expectation: passed through.
    pub(crate) fn open(inner: B) -> Self {
        Gated {
            inner: Some(inner),
            shared: None,
            wait: Duration::ZERO,
            sleep: None,
        }
    }

    /// Whether the body may be polled now; registers the waker (and runs the wait) if not.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Some(shared) = &self.shared else {
            return Poll::Ready(true);
        };
        loop {
            match shared.state.load(Ordering::Acquire) {
                OPEN => {
                    // Settled for good: the state is not looked at again.
                    self.shared = None;
                    self.sleep = None;
                    return Poll::Ready(true);
                }
                REFUSED => return Poll::Ready(false),
                _ => {}
            }
            *shared.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            if shared.state.load(Ordering::Acquire) != WAITING {
                continue;
            }
            let wait = self.wait;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // No answer in time: send the body anyway (unless the answer just came).
            if !shared.settle(OPEN) && shared.state.load(Ordering::Acquire) == REFUSED {
                return Poll::Ready(false);
            }
        }
    }
}

impl<B: Body + Unpin> Body for Gated<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        match this.poll_open(cx) {
            Poll::Ready(true) => match &mut this.inner {
                Some(inner) => Pin::new(inner).poll_frame(cx),
                None => Poll::Pending,
            },
            Poll::Ready(false) => {
                // Dropping the incoming body tells this hop's server not to send `100` and to
                // close after its response. The caller drops this body with its connection.
                this.inner = None;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        // The announced length frames the request; it is read before the body is polled.
        self.inner
            .as_ref()
            .map_or_else(SizeHint::default, Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    fn expecting() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::EXPECT, "100-Continue".parse().unwrap());
        h
    }

    #[tokio::test(start_paused = true)]
    async fn held_back_until_the_wait_passes() {
        let wait = Duration::from_secs(1);
        let (body, gate) = gate(&expecting(), Full::new(Bytes::from("abc")), wait);
        assert!(gate.is_some());
        assert_eq!(body.size_hint().exact(), Some(3));
        let started = tokio::time::Instant::now();
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got, "abc");
        let took = started.elapsed();
        assert!(
            took >= wait && took < wait + Duration::from_millis(5),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_drops_the_body_and_a_late_refusal_changes_nothing() {
        let (mut body, gate) = gate(
            &expecting(),
            Full::new(Bytes::from("abc")),
            Duration::from_secs(1),
        );
        let gate = gate.unwrap();
        assert!(gate.refuse());
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx).is_pending()))
                .await;
        assert!(polled);
        assert!(body.inner.is_none(), "refused: the body is dropped");
        // Once open, a final answer is an ordinary one.
        let (body, gate) = gate_open_now();
        assert!(!gate.refuse());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
    }

    fn gate_open_now() -> (Gated<Full<Bytes>>, Gate) {
        let (body, gate) = gate(
            &expecting(),
            Full::new(Bytes::from("abc")),
            Duration::from_secs(1),
        );
        let gate = gate.unwrap();
        assert!(gate.shared.settle(OPEN));
        (body, gate)
    }

    #[test]
    fn no_expectation_or_no_body_is_not_held() {
        let (_, g) = gate(
            &HeaderMap::new(),
            Full::new(Bytes::from("abc")),
            Duration::ZERO,
        );
        assert!(g.is_none());
        let (_, g) = gate(
            &expecting(),
            http_body_util::Empty::<Bytes>::new(),
            Duration::ZERO,
        );
        assert!(g.is_none());
    }
}
