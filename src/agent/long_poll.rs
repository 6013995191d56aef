//! The agent's side of the long-poll transport (spec-notes/long-poll.md): a reversed
//! connection made of ordinary requests, for relays the upgrade cannot reach.
//!
//! ```text
//! park: dial -> POST <relay path>  PTTH-Long-Poll: poll -> 204: poll again
//!                                                        -> 200 PTTH-Exchange: ID
//!   -> a virtual stream: reads are the poll's response body (the request),
//!      writes go to a reply, POST <relay path>  PTTH-Long-Poll: reply  PTTH-Exchange: ID,
//!      streamed as they are written (the response)
//!   -> Flipped: served as any parked connection (hyper service or the proxy engine)
//! ```
//!
//! The relay ends the poll's body after the exchange; the agent's server then sees the end of
//! its input, closes, and the reply's body ends with it. Each poll and each reply is a
//! connection of its own, dialled as every relay connection is (TLS, a forward proxy).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, DuplexStream, ReadBuf};
use tracing::debug;

use super::config::{LONG_POLL_HELD, LONG_POLL_PIPE as PIPE_BYTES};
use super::conn::Outcome;
use super::dial::{self, BoxedIo};
use super::target::Target;
use super::{AgentError, Config};
use crate::dialer::Flipped;
use crate::error::Refusal;
use crate::proto::Protocol;
use crate::proto::long_poll::{EXCHANGE_FIELD, FIELD, MEDIA_TYPE};

/// Poll until the relay sends a request: the exchange as a connection to serve, or why there
/// is none (a refusal, or a failure to reach the relay). `held` is called once a poll has
/// gone unanswered for [`LONG_POLL_HELD`]: the relay has accepted it and holds it, which is
/// what a parked connection is.
pub(super) async fn park(
    target: &Target,
    config: &Arc<Config>,
    held: impl FnOnce(),
) -> Result<Flipped<BoxedIo>, Outcome> {
    let mut held = Some(held);
    loop {
        let sent = send(target, config, "poll", None, empty());
        tokio::pin!(sent);
        let res = match held.take() {
            None => sent.await?,
            Some(held_now) => tokio::select! {
                r = &mut sent => {
                    held = Some(held_now);
                    r?
                }
                () = tokio::time::sleep(LONG_POLL_HELD) => {
                    held_now();
                    sent.await?
                }
            },
        };
        match res.status() {
            StatusCode::NO_CONTENT => continue,
            StatusCode::OK => {}
            _ => return Err(refused(res, config).await),
        }
        let Some(id) = res.headers().get(EXCHANGE_FIELD).cloned() else {
            return Err(failed(
                "the relay answered a poll 200 without PTTH-Exchange",
                None,
            ));
        };
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        let reply = ReplyBody {
            from_server: theirs,
            buf: BytesMut::new(),
        };
        let (target, config) = (target.clone(), config.clone());
        tokio::spawn(async move {
            match send(&target, &config, "reply", Some(id), reply.boxed_unsync()).await {
                Ok(res) if res.status() == StatusCode::NO_CONTENT => {}
                Ok(res) => debug!(status = %res.status(), "the relay refused a long-poll reply"),
                Err(e) => debug!(?e, "a long-poll reply failed"),
            }
        });
        let reader = PollReader {
            body: res.into_body(),
            rest: Bytes::new(),
        };
        let io: BoxedIo = Box::new(tokio::io::join(reader, ours));
        return Ok(Flipped::virtual_connection(io, Protocol::Ptth09));
    }
}

type LpBody = http_body_util::combinators::UnsyncBoxBody<Bytes, io::Error>;

fn empty() -> LpBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// One long-poll request (`kind` is `poll` or `reply`) on a connection of its own.
async fn send(
    target: &Target,
    config: &Config,
    kind: &'static str,
    exchange: Option<HeaderValue>,
    body: LpBody,
) -> Result<Response<Incoming>, Outcome> {
    let io = dial::relay(target, config).await.map_err(Outcome::Failed)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| failed("starting a long-poll request", Some(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(%e, "long-poll connection ended with an error");
        }
    });
    let mut req = Request::new(body);
    *req.method_mut() = Method::POST;
    *req.uri_mut() = target
        .path
        .parse()
        .map_err(|_| failed("the relay URL's path is no request target", None))?;
    let h = req.headers_mut();
    for (name, value) in &config.headers {
        h.append(name, value.clone());
    }
    h.insert(HOST, target.endpoint.authority.clone());
    h.insert(FIELD, HeaderValue::from_static(kind));
    if let Some(token) = &config.token {
        h.insert(AUTHORIZATION, token.clone());
    }
    match exchange {
        Some(id) => {
            h.insert(EXCHANGE_FIELD, id);
            h.insert(CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
        }
        None => {
            h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
    }
    sender
        .send_request(req)
        .await
        .map_err(|e| failed("a long-poll request failed", Some(e)))
}

fn failed(what: &'static str, source: Option<hyper::Error>) -> Outcome {
    Outcome::Failed(AgentError::LongPoll { what, source })
}

/// A poll answered with anything but `200` or `204`: a refusal, with its body up to the cap,
/// handled as a refused upgrade is (401/403 stop the agent, the rest back off).
async fn refused(res: Response<Incoming>, config: &Config) -> Outcome {
    let (parts, mut body) = res.into_parts();
    let cap = config.limits.max_refusal_body;
    let mut buf = BytesMut::new();
    let mut truncated = false;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            let room = cap.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
            if data.len() > room {
                truncated = true;
                break;
            }
        }
    }
    Outcome::Refused(Box::new(Refusal {
        status: parts.status,
        headers: parts.headers,
        body: buf.freeze(),
        body_truncated: truncated,
    }))
}

/// The read half of the virtual stream: the poll's response body.
struct PollReader {
    body: Incoming,
    rest: Bytes,
}

impl AsyncRead for PollReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.rest.is_empty() {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.rest = data;
                    }
                }
            }
        }
        let n = self.rest.len().min(buf.remaining());
        buf.put_slice(&self.rest.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// The reply's body: what the agent's server writes, until it closes its end.
struct ReplyBody {
    from_server: DuplexStream,
    buf: BytesMut,
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        this.buf.reserve(PIPE_BYTES);
        match tokio_util::io::poll_read_buf(Pin::new(&mut this.from_server), cx, &mut this.buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) => Poll::Ready(None),
            Poll::Ready(Ok(_)) => Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze())))),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }
}
