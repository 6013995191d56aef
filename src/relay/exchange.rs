//! One request and its response over one parked reversed connection, and the stream's way back
//! to the pool.
//!
//! The exchange runs the listener role's [`ReversedClient`] on the parked stream (one client per
//! exchange: an idle parked connection holds no client state or buffers), driving hyper's
//! connection in the request's own task (no extra task, no cross-task wakeups). The response
//! body keeps driving it; when the body has ended and the client says the connection can be
//! reused, the stream goes back to the pool ([`super::registry::Registry::park`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONNECTION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use super::registry::{AgentConn, AgentStream, ForwardBody, Reservation};
use super::respond::{self, RelayBody};
use super::{HAND_BACK_TIMEOUT, Shared};
use crate::expect::Gate;
use crate::listener::{self, ReversedClient};
use crate::proto::hop::{self, Keep};

/// How one attempt on one connection ended.
pub(super) enum Attempt {
    /// An answer for the public client (the agent's, or a 502/504).
    Done(Response<RelayBody>),
    /// The connection failed before any byte of the request was written.
    Unsent(Request<ForwardBody>),
}

/// The listener role's client on a parked stream, and hyper's connection under it.
pub(super) async fn client(
    shared: &Shared,
    io: Box<dyn AgentStream>,
) -> Result<
    (
        ReversedClient<ForwardBody>,
        listener::Connection<Box<dyn AgentStream>, ForwardBody>,
    ),
    crate::Error,
> {
    listener::reverse_parts(io, &shared.config.listener).await
}

/// One request and response on `conn`. The response body keeps driving the client's
/// connection; when the body has ended the stream goes back to the pool.
///
/// A final response that comes while `continue_gate` still holds the body back is a refusal
/// before the upload: the body is never sent, the public connection closes after the answer,
/// and the agent's connection (told a body would follow) is dropped, not parked.
pub(super) async fn exchange(
    shared: &Arc<Shared>,
    conn: AgentConn,
    out: Request<ForwardBody>,
    sent: oneshot::Receiver<()>,
    request_body: &BodyState,
    continue_gate: Option<&Gate>,
) -> Attempt {
    let AgentConn { io, reservation } = conn;
    let (client, connection) = match client(shared, io).await {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(%e, "starting the reversed client");
            return Attempt::Done(respond::agent_gone());
        }
    };
    // One exchange per client: with the client gone, the connection finishes (and hands the
    // stream back) as soon as this exchange is complete.
    let mut response = std::pin::pin!(client.try_send_last(out));
    let mut driver: ClientFuture = Box::pin(async move {
        connection
            .without_shutdown()
            .await
            .inspect_err(|e| tracing::debug!(%e, "reversed connection failed"))
            .ok()
    });
    let timeout = shared.config.response_timeout;
    let mut head_deadline = std::pin::pin!(async {
        // The deadline counts from the end of the request body: uploads may be long.
        let _ = sent.await;
        tokio::time::sleep(timeout).await;
    });
    let mut client_done: Option<Option<Parts>> = None;
    let result = loop {
        tokio::select! {
            r = &mut response => break r,
            r = &mut driver, if client_done.is_none() => client_done = Some(r),
            () = &mut head_deadline => {
                return Attempt::Done(respond::agent_timeout());
            }
        }
    };
    let (response, reusable) = match result {
        Ok(r) => r,
        Err(mut e) => {
            if request_body.failed() {
                tracing::debug!(error = %e.error(), "the public request body failed");
                return Attempt::Done(respond::client_body_error());
            }
            tracing::debug!(error = %e.error(), "forwarding failed");
            return match e.take_message() {
                Some(again) => Attempt::Unsent(again),
                None => Attempt::Done(respond::agent_gone()),
            };
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Only an upgrade may be answered with 101 (RFC 9110 §15.2.2); the stream is in an
        // unknown state now, so it is dropped with the response.
        tracing::info!("the agent answered 101 to a request that did not ask to upgrade");
        return Attempt::Done(respond::unasked_switch());
    }
    let (mut parts, body) = response.into_parts();
    let refused = continue_gate.is_some_and(Gate::refuse);
    let reusable = !refused && reusable;
    hop::pass_response(&mut parts, Keep::relay(false));
    if refused {
        // The public client announced a body the relay will not read: say the connection
        // closes (RFC 9110 §10.1.1), rather than leave the client guessing.
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    // A finished client future must not be polled again. One still running while the request
    // body is still on its way gets its own task: hyper polls this response body only while
    // the public client reads, and an upload must not stall behind an unread download. A
    // refused body is never sent: nothing to run for.
    let driver = match (client_done.is_some(), refused || request_body.ended()) {
        (true, _) => None,
        (false, true) => Some(driver),
        (false, false) => {
            let task = tokio::spawn(driver);
            let joined: ClientFuture = Box::pin(async move { task.await.ok().flatten() });
            Some(joined)
        }
    };
    let body = ExchangeBody {
        inner: body,
        client: driver,
        client_done,
        reservation: Some(reservation),
        reusable,
    };
    Attempt::Done(Response::from_parts(parts, body.boxed_unsync()))
}

type Parts = hyper::client::conn::http1::Parts<TokioIo<Box<dyn AgentStream>>>;
/// The reversed connection's client for one exchange; it yields the stream back (or `None`
/// when the connection failed).
type ClientFuture = Pin<Box<dyn Future<Output = Option<Parts>> + Send>>;

pin_project_lite::pin_project! {
    /// The agent's response body on its way to the public client. Polling it also drives the
    /// reversed connection's client (which may still be sending the request body). When the
    /// body is complete the stream goes back to the pool, also when hyper stops polling at a
    /// known end (`is_end_stream`) or sends no body at all (HEAD, 204, 304) and just drops it.
    /// Dropped before the end (public client gone), it drops the stream: that connection is
    /// mid-exchange and cannot be reused.
    struct ExchangeBody {
        #[pin]
        inner: Incoming,
        client: Option<ClientFuture>,
        client_done: Option<Option<Parts>>,
        reservation: Option<Reservation>,
        reusable: bool,
    }

    impl PinnedDrop for ExchangeBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.reusable && this.inner.is_end_stream() {
                finish(this.client.take(), this.client_done.take(), this.reservation.take());
            }
        }
    }
}

fn drive(
    client: &mut Option<ClientFuture>,
    done: &mut Option<Option<Parts>>,
    cx: &mut Context<'_>,
) {
    if let Some(c) = client
        && let Poll::Ready(r) = c.as_mut().poll(cx)
    {
        *done = Some(r);
        *client = None;
    }
}

/// The response is complete: park the stream once the client has handed it back (it may still
/// be finishing the request body, so that part runs as a short task).
fn finish(
    client: Option<ClientFuture>,
    done: Option<Option<Parts>>,
    reservation: Option<Reservation>,
) {
    let Some(reservation) = reservation else {
        return;
    };
    match (done, client) {
        (Some(done), _) => hand_back(done, reservation),
        (None, Some(client)) => {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Ok(done) = tokio::time::timeout(HAND_BACK_TIMEOUT, client).await {
                        hand_back(done, reservation);
                    }
                });
            }
        }
        (None, None) => {}
    }
}

impl Body for ExchangeBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        drive(this.client, this.client_done, cx);
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(None) => {
                drive(this.client, this.client_done, cx);
                if *this.reusable {
                    finish(
                        this.client.take(),
                        this.client_done.take(),
                        this.reservation.take(),
                    );
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.reservation.take();
            }
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Park the stream of a completed exchange again, unless the agent left bytes nobody asked for.
fn hand_back(done: Option<Parts>, reservation: Reservation) {
    match done {
        Some(parts) if parts.read_buf.is_empty() => {
            let registry = reservation.registry().clone();
            registry.park(AgentConn {
                io: parts.io.into_inner(),
                reservation,
            });
        }
        Some(_) => tracing::debug!("agent sent bytes after its response; dropping the connection"),
        None => {}
    }
}

/// What became of a body on its way through the relay, for the exchange that sent it.
#[derive(Debug, Default)]
pub(super) struct BodyState {
    ended: AtomicBool,
    failed: AtomicBool,
}

impl BodyState {
    /// The body has ended, completely or with an error.
    pub(super) fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The body ended with an error: for the public request body, a malformed chunk or a
    /// connection that closed early, which is the public client's fault, not the agent's.
    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

pin_project_lite::pin_project! {
    /// A body that counts its bytes and, for a request body, says when it ended (`done`
    /// fires, `state` is set).
    pub(super) struct Tracked<B> {
        #[pin]
        inner: B,
        counter: Arc<AtomicU64>,
        done: Option<oneshot::Sender<()>>,
        state: Option<Arc<BodyState>>,
    }
}

impl<B> Tracked<B> {
    /// A request body: counted, and its end reported to the exchange that sends it.
    pub(super) fn request(
        inner: B,
        counter: Arc<AtomicU64>,
        done: oneshot::Sender<()>,
        state: Arc<BodyState>,
    ) -> Self {
        Tracked {
            inner,
            counter,
            done: Some(done),
            state: Some(state),
        }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        let failed = match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.counter.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                return r;
            }
            Poll::Pending => return r,
            Poll::Ready(None) => false,
            Poll::Ready(Some(Err(_))) => true,
        };
        if let Some(state) = this.state {
            state.failed.fetch_or(failed, Ordering::Release);
            state.ended.store(true, Ordering::Release);
        }
        this.done.take();
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
