//! One request forwarded from an inbound connection to an outbound one, and its response back.
//!
//! ```text
//! inbound rbuf ── head scan (proto::head) ── rewritten head ─┐
//!              └─ request body (Pump) ───────────────────────┴─> outbound
//! inbound <── rewritten head + response body (Pump) ──────────── outbound rbuf
//!          (1xx passed through; 101 -> byte tunnel)
//! ```
//!
//! Heads are rewritten straight from the borrowed fields into the destination's write buffer:
//! hop-by-hop fields go (RFC 9110 §7.6.1, the one rule in `proto::hop`), the body framing is
//! this hop's own (`Content-Length`, or `chunked`), and the [`Route`] decides the target and
//! the fields it adds or drops; nothing here knows which side is the relay or the agent. The
//! request body and the response run at the same time in one task (an upstream may answer
//! while it reads, or before), with `Expect: 100-continue` held as `crate::expect` does.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::{StatusCode, Version};
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::conn::Conn;
use super::pump::{Encode, Pump, PumpError};
use crate::error::HeadError;
use crate::io::ByteStream;
use crate::limits::Limits;
use crate::proto::body::Framing;
use crate::proto::head::{self, Fields, Slots};
use crate::proto::hop::{connection_names, is_hop_by_hop};

/// A boxed error.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one hop does to the requests it forwards, and where they go.
pub(crate) trait Route: Send + Sync {
    /// The stream to the next hop.
    type Io: ByteStream;

    /// Write the request target for the next hop; `Err` is the text of a `400`.
    fn target(&self, target: &str, out: &mut BytesMut) -> Result<(), String>;

    /// Whether a field the client sent is dropped, besides the hop-by-hop ones and the body
    /// framing (which this hop writes itself).
    fn drops(&self, name: &str) -> bool;

    /// Write the fields this hop adds (`Host`, `Forwarded`, ...), each ending in CRLF.
    fn add_fields(&self, req: &head::Request<'_, '_>, out: &mut BytesMut);

    /// Open a connection to the next hop (its deadline is the route's).
    fn connect(&self) -> impl Future<Output = Result<Self::Io, BoxError>> + Send;

    /// The text of the `502` for a next hop that failed: `why` says how.
    fn failed(&self, why: &dyn std::fmt::Display) -> String;
}

/// What to do with the inbound connection after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Read the next request.
    KeepAlive,
    /// Close it.
    Close,
    /// The next hop switched protocols (`101`): hand both connections to [`tunnel`].
    Switched,
}

/// A request the hop answers itself.
struct Reject {
    status: StatusCode,
    text: String,
    /// The request was read whole (it has no body): the connection may serve the next one.
    keep: bool,
    /// The length of the rejected head, consumed when the connection is kept.
    consumed: usize,
}

impl Reject {
    fn head(e: HeadError) -> Self {
        Reject {
            status: e.status(),
            text: format!("{e}\n"),
            keep: false,
            consumed: 0,
        }
    }
}

/// What the request head said, once it has been rewritten.
#[derive(Debug, Clone, Copy)]
struct Plan {
    framing: Framing,
    head_request: bool,
    /// The client keeps the connection (HTTP/1.1 without `Connection: close`, RFC 9112 §9.3).
    keep_alive: bool,
    /// The client speaks HTTP/1.0: no chunked and no 1xx to it.
    http10: bool,
    upgrade: bool,
    expect_continue: bool,
}

/// How one exchange is run: the caps and deadlines of each side, and what the caller knows.
pub(crate) struct Settings<'a> {
    /// For the inbound side: request heads (size, fields, [`Limits::head_timeout`]).
    pub(crate) limits: &'a Limits,
    /// For the outbound side: response heads, and the buffer of a new outbound connection.
    pub(crate) response_limits: &'a Limits,
    /// How long a body that expects `100 Continue` waits for the next hop's `100`.
    pub(crate) continue_wait: Duration,
    /// Whether the inbound connection is being drained: the response then says
    /// `Connection: close`.
    pub(crate) closing: &'a (dyn Fn() -> bool + Sync),
}

/// Forward one request from `inb` to the next hop (`out`, dialled by the route when absent or
/// found closed) and its response back. The head must complete within
/// [`Limits::head_timeout`] of the call (the caller waits for its first byte, with no
/// deadline: an idle connection may wait).
pub(crate) async fn exchange<I: ByteStream, R: Route>(
    inb: &mut Conn<I>,
    out: &mut Option<Conn<R::Io>>,
    route: &R,
    settings: &Settings<'_>,
) -> After {
    let limits = settings.limits;
    let closing = settings.closing;
    let mut deadline = None;
    let plan = loop {
        match plan(&inb.rbuf, &mut inb.scratch, route, limits) {
            Ok(Some((plan, len))) => {
                bytes::Buf::advance(&mut inb.rbuf, len);
                break plan;
            }
            Ok(None) => {}
            Err(r) => {
                bytes::Buf::advance(&mut inb.rbuf, r.consumed);
                return answer(inb, r).await;
            }
        }
        let at = *deadline.get_or_insert_with(|| Instant::now() + limits.head_timeout);
        match tokio::time::timeout_at(at, inb.fill()).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return After::Close,
            Err(_) => {
                debug!(timeout = ?limits.head_timeout, "request head not finished in time");
                return After::Close;
            }
        }
    };
    // A kept connection that closed while idle is found before the request goes into it.
    if let Some(conn) = out
        && !std::future::poll_fn(|cx| Poll::Ready(conn.poll_idle_ok(cx))).await
    {
        *out = None;
    }
    let next = match out {
        Some(next) => next,
        None => match route.connect().await {
            Ok(io) => out.insert(Conn::new(io, b"", settings.response_limits)),
            Err(e) => {
                let r = Reject {
                    status: StatusCode::BAD_GATEWAY,
                    text: route.failed(&ErrorChain(&*e)),
                    consumed: 0,
                    keep: plan.framing == Framing::Empty && plan.keep_alive,
                };
                return answer(inb, r).await;
            }
        },
    };
    std::mem::swap(&mut next.wbuf, &mut inb.scratch);
    let mut flow = Flow::new(plan, settings.continue_wait, settings.response_limits);
    let res = std::future::poll_fn(|cx| flow.poll(cx, inb, next, closing)).await;
    match res {
        Ok(()) => {}
        Err(Failed::Inbound(e)) if !flow.answered => {
            // Not the next hop's fault: the request body was cut or malformed on its way in.
            debug!(error = %e, "request body cut off before it reached the next hop in full");
            *out = None;
            let r = Reject {
                status: StatusCode::BAD_REQUEST,
                text: "400 Bad Request: the request body ended early or was malformed\n".into(),
                keep: false,
                consumed: 0,
            };
            return answer(inb, r).await;
        }
        Err(Failed::Outbound(e)) if !flow.answered => {
            debug!(error = %e, "next hop failed");
            *out = None;
            let r = Reject {
                status: StatusCode::BAD_GATEWAY,
                text: route.failed(&e),
                keep: false,
                consumed: 0,
            };
            return answer(inb, r).await;
        }
        Err(e) => {
            // Part of the response went: all that is left is to cut both connections.
            debug!(error = %e, "exchange failed after the response started");
            *out = None;
            return After::Close;
        }
    }
    if flow.switched {
        return After::Switched;
    }
    if !flow.reuse_out {
        *out = None;
    }
    if flow.keep_in {
        After::KeepAlive
    } else {
        After::Close
    }
}

/// Scan the request head at the front of `buf` and write its rewrite into `out`: the plan and
/// the head's length, `None` if the head is not complete yet.
fn plan<R: Route>(
    buf: &[u8],
    out: &mut BytesMut,
    route: &R,
    limits: &Limits,
) -> Result<Option<(Plan, usize)>, Reject> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = Slots::new();
    let Some(req) = head::Request::parse(buf, &mut slots, limits).map_err(Reject::head)? else {
        return Ok(None);
    };
    let framing = req.framing().map_err(Reject::head)?;
    let fields = req.fields;
    let options = |name: &str| connection_names(fields.get_all("connection"), name);
    let has_connection = fields.get_all("connection").next().is_some();
    let upgrade = fields.get_all("upgrade").next().is_some() && options("upgrade");
    let http10 = req.version == Version::HTTP_10;
    let plan = Plan {
        framing,
        head_request: req.method == "HEAD",
        keep_alive: !http10 && !options("close"),
        http10,
        upgrade,
        expect_continue: !upgrade
            && framing != Framing::Empty
            && fields
                .get_all("expect")
                .any(|v| v.eq_ignore_ascii_case(b"100-continue")),
    };
    out.clear();
    out.put_slice(req.method.as_bytes());
    out.put_u8(b' ');
    route.target(req.target, out).map_err(|text| Reject {
        status: StatusCode::BAD_REQUEST,
        text,
        keep: plan.framing == Framing::Empty && plan.keep_alive,
        consumed: req.len,
    })?;
    out.put_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in fields.iter() {
        if name.eq_ignore_ascii_case("content-length") {
            had_length = true;
            continue;
        }
        if is_hop_by_hop(name) || route.drops(name) || (has_connection && options(name)) {
            continue;
        }
        put_field(out, name, value);
    }
    route.add_fields(&req, out);
    if upgrade {
        for v in fields.get_all("upgrade") {
            put_field(out, "upgrade", v);
        }
        out.put_slice(b"connection: upgrade\r\n");
    }
    match framing {
        Framing::Length(n) => put_length(out, n),
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty if had_length => put_length(out, 0),
        Framing::Empty | Framing::UntilClose => {}
    }
    out.put_slice(b"\r\n");
    Ok(Some((plan, req.len)))
}

/// Where the request body is.
enum Up {
    /// The head waits for the next hop's answer to `Expect: 100-continue`; the body stays
    /// unread until a `100` or the wait passes.
    Held(Pin<Box<Sleep>>),
    Body(Pump),
    /// Sent, or never to be sent.
    Done,
}

/// Where the response is.
enum Down {
    Head,
    Body(Pump),
    /// The `101` is being written; then the connections become a tunnel.
    Switch,
    Done,
}

/// How an exchange failed, by side.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error("inbound: {0}")]
    Inbound(PumpError),
    #[error("{0}")]
    Outbound(OutboundError),
}

#[derive(Debug, thiserror::Error)]
enum OutboundError {
    #[error(transparent)]
    Pump(PumpError),
    #[error("bad response head: {0}")]
    Head(#[from] HeadError),
    #[error("connection closed before a response")]
    Closed,
    #[error("reading the response: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing: {0}")]
    Write(#[source] std::io::Error),
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedSwitch,
}

/// Both directions of one exchange, polled together.
struct Flow<'l> {
    plan: Plan,
    limits: &'l Limits,
    /// One direction moved the other on (a `100` let the body go): poll again.
    nudged: bool,
    up: Up,
    down: Down,
    /// A `100 Continue` has been sent inbound (only one is).
    continued: bool,
    /// The final response head has been composed for the inbound side.
    answered: bool,
    keep_in: bool,
    reuse_out: bool,
    switched: bool,
}

impl<'l> Flow<'l> {
    fn new(plan: Plan, continue_wait: Duration, limits: &'l Limits) -> Self {
        let up = if plan.expect_continue {
            Up::Held(Box::pin(tokio::time::sleep(continue_wait)))
        } else {
            Up::Body(Pump::new(plan.framing, encode_as(plan.framing)))
        };
        Flow {
            plan,
            limits,
            nudged: false,
            up,
            down: Down::Head,
            continued: false,
            answered: false,
            keep_in: plan.keep_alive,
            reuse_out: true,
            switched: false,
        }
    }

    fn poll<I: ByteStream, O: ByteStream>(
        &mut self,
        cx: &mut Context<'_>,
        inb: &mut Conn<I>,
        out: &mut Conn<O>,
        closing: &(dyn Fn() -> bool + Sync),
    ) -> Poll<Result<(), Failed>> {
        loop {
            self.nudged = false;
            let up = self.poll_up(cx, inb, out)?;
            let down = self.poll_down(cx, inb, out, closing)?;
            if up.is_ready() && down.is_ready() {
                return Poll::Ready(Ok(()));
            }
            if !self.nudged {
                return Poll::Pending;
            }
        }
    }

    fn poll_up<I: ByteStream, O: ByteStream>(
        &mut self,
        cx: &mut Context<'_>,
        inb: &mut Conn<I>,
        out: &mut Conn<O>,
    ) -> Poll<Result<(), Failed>> {
        loop {
            match &mut self.up {
                Up::Held(sleep) => {
                    let wrote = out
                        .poll_flush(cx)
                        .map_err(|e| Failed::Outbound(OutboundError::Write(e)))?;
                    if wrote.is_ready() && sleep.as_mut().poll(cx).is_ready() {
                        // No answer in time: the body goes anyway, and the client is told to
                        // send it.
                        self.open(inb);
                        continue;
                    }
                    return Poll::Pending;
                }
                Up::Body(pump) => match ready!(pump.poll(cx, inb, out)) {
                    Ok(()) => self.up = Up::Done,
                    Err(PumpError::Write(e)) => {
                        // The next hop stopped reading: it may still answer. The body is
                        // read to its end and dropped, and the next hop is not reused.
                        debug!(error = %e, "next hop stopped reading the request body");
                        self.reuse_out = false;
                        pump.drain();
                    }
                    Err(e) => return Poll::Ready(Err(Failed::Inbound(e))),
                },
                Up::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Let a held body go.
    fn open<I>(&mut self, inb: &mut Conn<I>) {
        if let Up::Held(_) = self.up {
            if !self.continued && !self.plan.http10 {
                inb.wbuf.put_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            self.continued = true;
            self.up = Up::Body(Pump::new(self.plan.framing, encode_as(self.plan.framing)));
        }
    }

    fn poll_down<I: ByteStream, O: ByteStream>(
        &mut self,
        cx: &mut Context<'_>,
        inb: &mut Conn<I>,
        out: &mut Conn<O>,
        closing: &(dyn Fn() -> bool + Sync),
    ) -> Poll<Result<(), Failed>> {
        let outbound = |e| Failed::Outbound(e);
        loop {
            match &mut self.down {
                Down::Head => {
                    // Interim answers (and this hop's own `100`) go out as they come.
                    ready!(inb.poll_flush(cx)).map_err(|e| Failed::Inbound(PumpError::Write(e)))?;
                    if self.head(inb, out, closing).map_err(outbound)? {
                        continue;
                    }
                    let n =
                        ready!(out.poll_fill(cx)).map_err(|e| outbound(OutboundError::Read(e)))?;
                    if n == 0 {
                        return Poll::Ready(Err(outbound(OutboundError::Closed)));
                    }
                }
                Down::Body(pump) => match ready!(pump.poll(cx, out, inb)) {
                    Ok(()) => {
                        self.down = Down::Done;
                        if !matches!(self.up, Up::Done) {
                            // Answered before the request body was all read: what is left of
                            // it is on the inbound connection, which cannot be read on.
                            self.up = Up::Done;
                            self.nudged = true;
                            self.keep_in = false;
                            self.reuse_out = false;
                        }
                    }
                    Err(PumpError::Write(e)) => {
                        return Poll::Ready(Err(Failed::Inbound(PumpError::Write(e))));
                    }
                    Err(e) => return Poll::Ready(Err(outbound(OutboundError::Pump(e)))),
                },
                Down::Switch => {
                    ready!(inb.poll_flush(cx)).map_err(|e| Failed::Inbound(PumpError::Write(e)))?;
                    self.switched = true;
                    self.down = Down::Done;
                }
                Down::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Take one response head from the front of `out.rbuf`, if a whole one is there, and
    /// compose what goes inbound. `true` if one was taken.
    fn head<I, O>(
        &mut self,
        inb: &mut Conn<I>,
        out: &mut Conn<O>,
        closing: &(dyn Fn() -> bool + Sync),
    ) -> Result<bool, OutboundError> {
        if out.rbuf.is_empty() {
            return Ok(false);
        }
        let mut slots = Slots::new();
        let Some(res) = head::Response::parse(&out.rbuf, &mut slots, self.limits)? else {
            return Ok(false);
        };
        let len = res.len;
        let status = res.status;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            if status == StatusCode::CONTINUE {
                if !self.continued && !self.plan.http10 {
                    put_status(&mut inb.wbuf, &res);
                    put_fields(&mut inb.wbuf, res.fields, false);
                    inb.wbuf.put_slice(b"\r\n");
                }
                self.continued = true;
                if let Up::Held(_) = self.up {
                    self.up = Up::Body(Pump::new(self.plan.framing, encode_as(self.plan.framing)));
                    self.nudged = true;
                }
            } else if !self.plan.http10 {
                put_status(&mut inb.wbuf, &res);
                put_fields(&mut inb.wbuf, res.fields, false);
                inb.wbuf.put_slice(b"\r\n");
            }
            bytes::Buf::advance(&mut out.rbuf, len);
            return Ok(true);
        }
        if let Up::Held(_) = self.up {
            // A final answer before the body was asked for: it is never sent. Both sides were
            // told a body follows, so neither connection is reused (`crate::expect`).
            self.up = Up::Done;
            self.nudged = true;
            self.keep_in = false;
            self.reuse_out = false;
        }
        self.answered = true;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if !self.plan.upgrade {
                return Err(OutboundError::UnaskedSwitch);
            }
            put_status(&mut inb.wbuf, &res);
            put_fields(&mut inb.wbuf, res.fields, false);
            for v in res.fields.get_all("upgrade") {
                put_field(&mut inb.wbuf, "upgrade", v);
            }
            inb.wbuf.put_slice(b"connection: upgrade\r\n\r\n");
            bytes::Buf::advance(&mut out.rbuf, len);
            self.down = Down::Switch;
            return Ok(true);
        }
        let (framing, conflict) = res.forward_framing(self.plan.head_request)?;
        let upstream_close = res.version == Version::HTTP_10
            || connection_names(res.fields.get_all("connection"), "close");
        if conflict || upstream_close || framing == Framing::UntilClose {
            self.reuse_out = false;
        }
        if conflict {
            debug!(
                "response with both Content-Length and Transfer-Encoding; not reusing the connection"
            );
        }
        let enc = match framing {
            Framing::UntilClose if self.plan.http10 => {
                // No chunked for an HTTP/1.0 client: the close ends the body.
                self.keep_in = false;
                Encode::Raw
            }
            Framing::UntilClose | Framing::Chunked => Encode::Chunked,
            Framing::Empty | Framing::Length(_) => Encode::Raw,
        };
        if closing() {
            self.keep_in = false;
        }
        // The length of a HEAD or 304 response describes the representation, not this body.
        let keeps_length = self.plan.head_request || status == StatusCode::NOT_MODIFIED;
        put_status(&mut inb.wbuf, &res);
        put_fields(&mut inb.wbuf, res.fields, keeps_length && !conflict);
        match (framing, enc) {
            (Framing::Length(n), _) => put_length(&mut inb.wbuf, n),
            (_, Encode::Chunked) => inb.wbuf.put_slice(b"transfer-encoding: chunked\r\n"),
            (Framing::Empty, _) if !keeps_length && status != StatusCode::NO_CONTENT => {
                put_length(&mut inb.wbuf, 0)
            }
            _ => {}
        }
        if !self.keep_in {
            inb.wbuf.put_slice(b"connection: close\r\n");
        }
        inb.wbuf.put_slice(b"\r\n");
        bytes::Buf::advance(&mut out.rbuf, len);
        self.down = Down::Body(Pump::new(framing, enc));
        Ok(true)
    }
}

/// A request body goes on as it came: chunked stays chunked (framed again), a length stays.
fn encode_as(framing: Framing) -> Encode {
    match framing {
        Framing::Chunked => Encode::Chunked,
        _ => Encode::Raw,
    }
}

/// `HTTP/1.1 <code> <reason>\r\n`: this hop speaks HTTP/1.1 whatever the next hop spoke (RFC
/// 9110 §6.2). An empty reason is replaced by the canonical one.
fn put_status(out: &mut BytesMut, res: &head::Response<'_, '_>) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(res.status.as_str().as_bytes());
    out.put_u8(b' ');
    let reason = match res.reason {
        "" => res.status.canonical_reason().unwrap_or(""),
        r => r,
    };
    out.put_slice(reason.as_bytes());
    out.put_slice(b"\r\n");
}

/// The end-to-end fields of a response; `Content-Length` only if `keep_length`.
fn put_fields(out: &mut BytesMut, fields: Fields<'_, '_>, keep_length: bool) {
    let has_connection = fields.get_all("connection").next().is_some();
    for (name, value) in fields.iter() {
        if (!keep_length && name.eq_ignore_ascii_case("content-length"))
            || is_hop_by_hop(name)
            || (has_connection && connection_names(fields.get_all("connection"), name))
        {
            continue;
        }
        put_field(out, name, value);
    }
}

fn put_field(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn put_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    put_decimal(out, n);
    out.put_slice(b"\r\n");
}

/// `n` in decimal, with no formatting machinery.
pub(crate) fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// Answer the request at hand with `r` (plain text) and say what becomes of the connection:
/// kept only if the rejection allows it and the write went.
async fn answer<I: ByteStream>(inb: &mut Conn<I>, r: Reject) -> After {
    let keep = r.keep;
    let w = &mut inb.wbuf;
    w.put_slice(b"HTTP/1.1 ");
    w.put_slice(r.status.as_str().as_bytes());
    w.put_u8(b' ');
    w.put_slice(r.status.canonical_reason().unwrap_or("").as_bytes());
    w.put_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\n");
    put_length(w, r.text.len() as u64);
    if !keep {
        w.put_slice(b"connection: close\r\n");
    }
    w.put_slice(b"\r\n");
    w.put_slice(r.text.as_bytes());
    match inb.flush().await {
        Ok(()) if keep => After::KeepAlive,
        _ => After::Close,
    }
}

/// After a `101` ([`After::Switched`]): the bytes each side already sent past its head, then
/// bytes both ways until either side closes.
pub(crate) async fn tunnel<I: ByteStream, O: ByteStream>(mut inb: Conn<I>, mut out: Conn<O>) {
    let res = async {
        inb.io.write_all(&out.rbuf).await?;
        inb.io.flush().await?;
        out.io.write_all(&inb.rbuf).await?;
        out.io.flush().await?;
        tokio::io::copy_bidirectional(&mut inb.io, &mut out.io).await
    }
    .await;
    match res {
        Ok((up, down)) => debug!(up, down, "upgraded stream closed"),
        Err(e) => debug!(error = %e, "upgraded stream failed"),
    }
}

/// An error and its sources, each once: a source whose words its parent already ends with is
/// not repeated.
pub(crate) struct ErrorChain<'e>(pub(crate) &'e (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = self.0.to_string();
        let mut src = self.0.source();
        while let Some(inner) = src {
            let text = inner.to_string();
            if !s.ends_with(&text) {
                s.push_str(": ");
                s.push_str(&text);
            }
            src = inner.source();
        }
        f.write_str(&s)
    }
}
