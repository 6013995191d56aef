//! The long-poll transport (spec-notes/long-poll.md): for agents whose `Upgrade` cannot reach
//! the relay (an nginx in front of it, a serverless front), a reversed connection made of two
//! ordinary requests.
//!
//! ```text
//! agent ── POST /NAME  PTTH-Long-Poll: poll ──▶ claim checks ─▶ a virtual connection, parked
//!            (held until a public request is written to it, or 204 at the deadline)
//!      ◀── 200 PTTH-Exchange: ID, body = the public request as HTTP/1.1 bytes, streamed
//! agent ── POST /NAME  PTTH-Long-Poll: reply  PTTH-Exchange: ID, body = the response bytes ──▶
//!      ◀── 204 once the body is read
//! ```
//!
//! The virtual connection ([`Virtual`]) is a byte stream like any parked agent connection:
//! what the relay's engine writes to it is the body of the held poll's response, what it reads
//! is the body of the reply. So the registry, checkout, the engine's exchange (streaming both
//! ways, `Expect`, trailers, upgrades) and the metrics run unchanged; the one difference is
//! that a virtual connection carries one exchange (`Reservation::one_shot`): it is dropped, not
//! parked again, which ends the poll's response body and tells the agent the exchange is over.
//! Many exchanges in flight at once are many polls outstanding.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ALLOW,
    CACHE_CONTROL, CONTENT_TYPE, ORIGIN, VARY,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf, WriteHalf,
};
use tokio_util::sync::CancellationToken;

use super::registry::AgentConn;
use super::respond::{self, RelayBody};
use super::{ConnInfo, LONG_POLL_PIPE as PIPE_BYTES, Shared, claim};
use crate::proto::long_poll::{
    AGENT_JS_PATH, EXCHANGE_FIELD, FIELD, MEDIA_TYPE, MORE_FIELD, OFFER, POLL, REPLY,
};

/// The browser agent (issue 16 part 3): `ptth.serve(relayUrl, name, handler, { token })`.
const AGENT_JS: &str = include_str!("agent.js");
/// The request fields a browser's long-poll requests carry, for CORS preflights.
const ALLOW_HEADERS: &str = "authorization, content-type, ptth-long-poll, ptth-exchange, ptth-more";
/// The response fields the browser agent reads.
const EXPOSE_HEADERS: &str = "ptth-exchange, www-authenticate, retry-after";
/// How long a browser may cache a preflight's answer (seconds).
const PREFLIGHT_MAX_AGE: &str = "600";

/// Whether a request is a CORS preflight for a long-poll request: `OPTIONS` asking to send
/// `PTTH-Long-Poll`.
pub(crate) fn is_preflight<'a>(method: &str, mut asked: impl Iterator<Item = &'a [u8]>) -> bool {
    method == "OPTIONS"
        && asked.any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(FIELD.as_bytes()))
        })
}

/// Whether hyper's request is the relay's to answer here: a long-poll request, its preflight,
/// or the browser agent's script.
pub(crate) fn is_ours<B>(req: &Request<B>) -> bool {
    let asked = req
        .headers()
        .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .map(|v| v.as_bytes());
    req.headers().contains_key(FIELD)
        || is_preflight(req.method().as_str(), asked)
        || (req.method() == Method::GET && req.uri().path() == AGENT_JS_PATH)
}

/// The exchanges whose poll has been answered and whose reply has not arrived yet.
#[derive(Default)]
pub(crate) struct Exchanges {
    next: AtomicU64,
    pending: Mutex<HashMap<String, Pending>>,
}

/// Where an exchange's reply goes: the other end of its virtual connection.
struct Pending {
    name: String,
    to_engine: WriteHalf<DuplexStream>,
    /// Set (under the map's lock) when the poll's body is gone: the exchange is over, and a
    /// reply part must not put the exchange back.
    over: Arc<AtomicBool>,
}

impl Exchanges {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh exchange id: a counter (unique) and a random part (not guessable from the ids
    /// an agent has seen). The reply needs the name's token as well.
    fn id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{n:x}-{:016x}", fastrand::u64(..))
    }
}

/// Answer a long-poll request (`PTTH-Long-Poll: poll` or `reply`), a preflight for one, or a
/// request for the browser agent; a browser's origin gets CORS fields when it is allowed.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    info: &ConnInfo,
    soft: CancellationToken,
    req: Request<Incoming>,
) -> Response<RelayBody> {
    let origin = req.headers().get(ORIGIN).cloned();
    let allowed = origin
        .as_ref()
        .filter(|o| shared.config.long_poll_origin_allowed(o.as_bytes()));
    let mut res = answer(shared.clone(), info, soft, req).await;
    if let Some(origin) = allowed {
        let h = res.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
        h.append(VARY, HeaderValue::from_static("origin"));
    }
    res
}

async fn answer(
    shared: Arc<Shared>,
    info: &ConnInfo,
    soft: CancellationToken,
    req: Request<Incoming>,
) -> Response<RelayBody> {
    let kind = req.headers().get(FIELD).map(|v| v.as_bytes().to_vec());
    if kind.is_none() {
        if req.method() == Method::OPTIONS {
            let mut res = no_content();
            let h = res.headers_mut();
            h.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST"),
            );
            h.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert(
                ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(PREFLIGHT_MAX_AGE),
            );
            return res;
        }
        let mut res = respond::text(StatusCode::OK, AGENT_JS.trim_end());
        let h = res.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
        return res;
    }
    if kind.as_deref() == Some(OFFER) {
        // The offer's `Upgrade` was removed on the way: tell the agent to long-poll.
        let mut res = respond::text(
            StatusCode::UPGRADE_REQUIRED,
            "the upgrade did not reach the relay (an intermediary removed Upgrade); use long polling",
        );
        res.headers_mut()
            .insert(http::header::UPGRADE, HeaderValue::from_static("PTTH/0.9"));
        return res;
    }
    if req.method() != Method::POST {
        let mut res = respond::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "long-poll requests are POST",
        );
        res.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return res;
    }
    match kind.as_deref() {
        Some(POLL) => poll(shared, info, soft, req).await,
        Some(REPLY) => reply(shared, req).await,
        _ => respond::text(
            StatusCode::BAD_REQUEST,
            "PTTH-Long-Poll must be \"poll\" or \"reply\"",
        ),
    }
}

/// A poll: the claim's checks and counts, then a virtual connection parked for the name. The
/// poll is answered when the engine starts writing a request to it (`200`, the request as the
/// body), or `204` when the deadline passes first.
async fn poll(
    shared: Arc<Shared>,
    info: &ConnInfo,
    soft: CancellationToken,
    req: Request<Incoming>,
) -> Response<RelayBody> {
    let (name, mut reservation) = match claim::admit_counted(&shared, info, &req, &[], false).await
    {
        // Without origins, one name.
        Ok((name, reservation, _)) => (name, reservation),
        Err(e) => return e.into_response(),
    };
    reservation.one_shot = true;
    let (engine_end, our_end) = tokio::io::duplex(PIPE_BYTES);
    let (mut from_engine, to_engine) = tokio::io::split(our_end);
    let gate = Arc::new(Mutex::new(Gate::Open));
    let io = Virtual {
        io: engine_end,
        gate: gate.clone(),
    };
    if reservation.first() {
        tracing::info!(%name, peer = %info.peer, "agent claimed the name (long poll)");
    }
    shared.metrics.claimed();
    shared
        .registry
        .park(AgentConn::new(Box::new(io), reservation));
    let mut first = BytesMut::with_capacity(PIPE_BYTES);
    let give_up = async {
        tokio::select! {
            () = tokio::time::sleep(shared.config.long_poll_timeout) => {}
            () = soft.cancelled() => {}
        }
    };
    let read = tokio::select! {
        r = from_engine.read_buf(&mut first) => r,
        // The deadline, or the drain (no new exchange starts; the agent polls again
        // elsewhere).
        () = give_up => {
            // Closed unless the engine has begun: then its bytes are in the pipe already.
            {
                let mut g = gate.lock().unwrap_or_else(|e| e.into_inner());
                if *g == Gate::Open {
                    *g = Gate::Closed;
                    return no_content();
                }
            }
            from_engine.read_buf(&mut first).await
        }
    };
    match read {
        Ok(n) if n > 0 => {}
        // The relay dropped the connection unused (it is stopping).
        _ => return no_content(),
    }
    let id = shared.long_poll.id();
    let over = Arc::new(AtomicBool::new(false));
    shared.long_poll.lock().insert(
        id.clone(),
        Pending {
            name: name.clone(),
            to_engine,
            over: over.clone(),
        },
    );
    let body = PollBody {
        first: Some(first.freeze()),
        from_engine,
        buf: BytesMut::new(),
        id: id.clone(),
        over,
        shared: shared.clone(),
    };
    let mut res = Response::new(body.boxed_unsync());
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx: pass the body on as it comes (a public request body is streamed).
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(EXCHANGE_FIELD, v);
    }
    res
}

/// A reply: its body is the response to the exchange's request, copied to the engine as it
/// arrives; `204` once it is all read (or the exchange has ended and nothing more is wanted).
/// With `PTTH-More: ?1` the exchange stays open for the next part.
async fn reply(shared: Arc<Shared>, req: Request<Incoming>) -> Response<RelayBody> {
    let name = match claim::authorize(&shared, &req) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let Some(id) = req
        .headers()
        .get(EXCHANGE_FIELD)
        .and_then(|v| v.to_str().ok())
    else {
        return respond::text(StatusCode::BAD_REQUEST, "a reply needs PTTH-Exchange");
    };
    let pending = {
        let mut map = shared.long_poll.lock();
        match map.get(id) {
            Some(p) if p.name == name => map.remove(id),
            _ => None,
        }
    };
    let more = req
        .headers()
        .get(MORE_FIELD)
        .is_some_and(|v| v.as_bytes() == b"?1");
    let id = id.to_string();
    let Some(Pending {
        name,
        mut to_engine,
        over,
    }) = pending
    else {
        return respond::text(
            StatusCode::NOT_FOUND,
            "no such exchange (unknown, already answered, or over)",
        );
    };
    let mut body = req.into_body();
    let mut whole = true;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The agent's reply was cut: the engine sees the response end early.
            tracing::debug!("long-poll reply body failed");
            whole = false;
            break;
        };
        if let Ok(data) = frame.into_data()
            && to_engine.write_all(&data).await.is_err()
        {
            // The exchange is over (answered, or the public client left).
            whole = false;
            break;
        }
    }
    if more && whole {
        let mut map = shared.long_poll.lock();
        if !over.load(Ordering::Acquire) {
            map.insert(
                id,
                Pending {
                    name,
                    to_engine,
                    over,
                },
            );
        }
        return no_content();
    }
    let _ = to_engine.shutdown().await;
    no_content()
}

fn no_content() -> Response<RelayBody> {
    let mut res = respond::text(StatusCode::NO_CONTENT, "");
    *res.body_mut() = http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    res.headers_mut().remove(CONTENT_TYPE);
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Whether the engine has written to a virtual connection, and whether the poll gave up on it.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    /// Parked, nothing written.
    Open,
    /// The engine wrote: the poll answers `200`.
    Started,
    /// The poll answered `204`: the connection reads as closed and refuses writes (the engine
    /// then takes another connection).
    Closed,
}

/// The relay's side of a virtual connection: writes go to the poll's response body, reads
/// come from the reply's body. The gate makes "the engine wrote" and "the poll's deadline
/// passed" exclusive.
struct Virtual {
    io: DuplexStream,
    gate: Arc<Mutex<Gate>>,
}

impl Virtual {
    fn closed(&self) -> bool {
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) == Gate::Closed
    }
}

impl AsyncRead for Virtual {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.closed() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Virtual {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let gate = self.gate.clone();
        let mut g = gate.lock().unwrap_or_else(|e| e.into_inner());
        if *g == Gate::Closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        *g = Gate::Started;
        // Under the lock: the poll cannot give up between the check and the write.
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The body of an answered poll: the bytes the engine writes, until it drops the virtual
/// connection. Dropping the body forgets the exchange if its reply never came.
struct PollBody {
    first: Option<Bytes>,
    from_engine: ReadHalf<DuplexStream>,
    buf: BytesMut,
    id: String,
    over: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl Body for PollBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let this = &mut *self;
        this.buf.reserve(PIPE_BYTES);
        match tokio_util::io::poll_read_buf(Pin::new(&mut this.from_engine), cx, &mut this.buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(n)) if n > 0 => {
                Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))))
            }
            // The end (the engine dropped the connection), or a pipe error, which cannot
            // happen on an in-memory pipe: either way the request is over.
            Poll::Ready(_) => Poll::Ready(None),
        }
    }
}

impl Drop for PollBody {
    fn drop(&mut self) {
        let mut map = self.shared.long_poll.lock();
        self.over.store(true, Ordering::Release);
        map.remove(&self.id);
    }
}
