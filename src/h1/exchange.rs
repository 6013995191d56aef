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
//! while it reads, or before), with `Expect: 100-continue` held back until the next hop answers `100` or the wait passes
//! (decisions D34).

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
use super::tap::{Capture, Tap};
use crate::error::HeadError;
use crate::io::ByteStream;
use crate::limits::{CONTINUE_WAIT, Limits};
use crate::proto::body::Framing;
use crate::proto::head::{self, Fields, Slots};
use crate::proto::hop::{connection_names, is_hop_by_hop};
use crate::proto::put_decimal;

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
    /// An observer of each exchange (the agent's inspector), or `None`: see `super::tap`.
    pub(crate) tap: Option<&'a dyn Tap>,
    /// How long the next hop may take to start its response once the request body has gone
    /// (then `504`); `None`: as long as it likes.
    pub(crate) response_timeout: Option<Duration>,
    /// Pass chunked bodies' trailer fields on both ways, and `TE: trailers` when the client
    /// sent it (so the next hop may send trailers); otherwise both are dropped (D37).
    pub(crate) trailers: bool,
    /// A request with both `Content-Length` and `Transfer-Encoding` is framed by the coding
    /// and the connection closes after it (RFC 9112 §6.1, decisions D16); otherwise it is a
    /// `400`.
    pub(crate) length_beside_chunked: bool,
}

impl<'a> Settings<'a> {
    /// The plain settings of a forwarding hop: [`CONTINUE_WAIT`], no tap, no response
    /// deadline, trailers dropped, and `Content-Length` beside chunked refused. A
    /// caller changes what it needs with struct update syntax.
    pub(crate) fn new(
        limits: &'a Limits,
        response_limits: &'a Limits,
        closing: &'a (dyn Fn() -> bool + Sync),
    ) -> Self {
        Settings {
            limits,
            response_limits,
            continue_wait: CONTINUE_WAIT,
            closing,
            tap: None,
            response_timeout: None,
            trailers: false,
            length_beside_chunked: false,
        }
    }
}

/// What one exchange did, the one record of it: the status the client got (the next hop's or
/// this hop's own), the body bytes that went each way, when the response head went; and, when a
/// tap watches ([`Settings::tap`]), the copy of the heads and of the start of each body it is
/// shown ([`Record::copy`]). The caller makes one per exchange and reads it after [`exchange`]
/// (the relay's metrics and access log, the agent's metrics); the tap is handed the copy.
#[derive(Debug)]
pub(crate) struct Record {
    /// When the record was made (the request's start, for the caller).
    started: Instant,
    status: Option<StatusCode>,
    up: u64,
    down: u64,
    /// From `started` to the final response head, once it went.
    head: Option<Duration>,
    /// What the tap is shown: made once the request head is read, when there is a tap.
    pub(crate) copy: Option<Capture>,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            started: Instant::now(),
            status: None,
            up: 0,
            down: 0,
            head: None,
            copy: None,
        }
    }
}

impl Record {
    /// When the record was made.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// From [`Record::started`] to the response head (or to now, if none was written).
    pub(crate) fn head(&self) -> Duration {
        self.head.unwrap_or_else(|| self.started.elapsed())
    }

    /// When the final response head went, if it did.
    pub(crate) fn answered_at(&self) -> Option<Instant> {
        self.head.map(|d| self.started + d)
    }

    fn mark_head(&mut self) {
        self.head = Some(self.started.elapsed());
    }

    /// The final status sent to the client; `None` if none was (the connection was cut).
    pub(crate) fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// Request body bytes sent to the next hop.
    pub(crate) fn up(&self) -> u64 {
        self.up
    }

    /// Response body bytes sent to the client.
    pub(crate) fn down(&self) -> u64 {
        self.down
    }

    /// The client got `status`, with no body bytes forwarded (an answer of the caller's own).
    pub(crate) fn answered(&mut self, status: StatusCode) {
        self.mark_head();
        self.set(Some(status), 0, 0);
    }

    fn set(&mut self, status: Option<StatusCode>, up: u64, down: u64) {
        self.status = status;
        self.up = up;
        self.down = down;
    }
}

/// Forward one request from `inb` to the next hop (`out`, dialled by the route when absent or
/// found closed) and its response back, writing what happened into `record`. The head must
/// complete within [`Limits::head_timeout`] of the call (the caller waits for its first byte,
/// with no deadline: an idle connection may wait).
pub(crate) async fn exchange<I: ByteStream, R: Route>(
    inb: &mut Conn<I>,
    out: &mut Option<Conn<R::Io>>,
    route: &R,
    settings: &Settings<'_>,
    record: &mut Record,
) -> After {
    let after = run(inb, out, route, settings, record).await;
    if let (Some(tap), Some(copy)) = (settings.tap, record.copy.take()) {
        tap.record(copy, record);
    }
    after
}

/// [`exchange`], with what the tap is shown gathered in `record.copy` (made once the head is
/// read, when there is a tap).
async fn run<I: ByteStream, R: Route>(
    inb: &mut Conn<I>,
    out: &mut Option<Conn<R::Io>>,
    route: &R,
    settings: &Settings<'_>,
    record: &mut Record,
) -> After {
    let limits = settings.limits;
    let closing = settings.closing;
    let mut deadline = None;
    let plan = loop {
        match plan(
            &inb.rbuf,
            &mut inb.scratch,
            route,
            limits,
            settings.trailers,
            settings.length_beside_chunked,
        ) {
            Ok(Some((plan, len))) => {
                if let Some(tap) = settings.tap {
                    record.copy = Some(Capture::new(&inb.rbuf[..len], tap.body_limit()));
                }
                bytes::Buf::advance(&mut inb.rbuf, len);
                break plan;
            }
            Ok(None) => {}
            Err(r) => {
                // A whole head this hop refuses (a bad target) is shown too; a head that never
                // parsed has nothing to show.
                if let (Some(tap), true) = (settings.tap, r.consumed > 0) {
                    record.copy = Some(Capture::new(&inb.rbuf[..r.consumed], tap.body_limit()));
                }
                bytes::Buf::advance(&mut inb.rbuf, r.consumed);
                return answer(inb, r, record).await;
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
                return answer(inb, r, record).await;
            }
        },
    };
    std::mem::swap(&mut next.wbuf, &mut inb.scratch);
    if let Some(copy) = record.copy.as_mut() {
        copy.sent = Some(Instant::now());
    }
    let mut flow = Flow::new(plan, settings, record);
    let res = std::future::poll_fn(|cx| flow.poll(cx, inb, next, closing)).await;
    let (up, down) = flow.bytes();
    let (status, answered, keep_in, up_done) = (
        flow.status,
        flow.answered,
        flow.keep_in,
        matches!(flow.up, Up::Done),
    );
    let (switched, reuse_out) = (flow.switched, flow.reuse_out);
    drop(flow);
    record.set(status, up, down);
    if let (Err(e), Some(copy)) = (&res, record.copy.as_mut()) {
        copy.failed = Some(e.to_string());
    }
    match res {
        Ok(()) => {}
        Err(Failed::Inbound(e)) if !answered => {
            // Not the next hop's fault: the request body was cut or malformed on its way in.
            debug!(error = %e, "request body cut off before it reached the next hop in full");
            *out = None;
            let r = Reject {
                status: StatusCode::BAD_REQUEST,
                text: "400 Bad Request: the request body ended early or was malformed\n".into(),
                keep: false,
                consumed: 0,
            };
            return answer(inb, r, record).await;
        }
        Err(Failed::Outbound(e)) if !answered => {
            debug!(error = %e, "next hop failed");
            *out = None;
            let r = Reject {
                status: match e {
                    OutboundError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                },
                text: route.failed(&e),
                // The inbound side is intact if its request was read whole.
                keep: keep_in && up_done,
                consumed: 0,
            };
            return answer(inb, r, record).await;
        }
        Err(e) => {
            // Part of the response went: all that is left is to cut both connections.
            debug!(error = %e, "exchange failed after the response started");
            *out = None;
            return After::Close;
        }
    }
    if switched {
        return After::Switched;
    }
    if !reuse_out {
        *out = None;
    }
    if keep_in {
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
    trailers: bool,
    length_beside_chunked: bool,
) -> Result<Option<(Plan, usize)>, Reject> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = Slots::new();
    let Some(req) = head::Request::parse(buf, &mut slots, limits).map_err(Reject::head)? else {
        return Ok(None);
    };
    let (framing, conflict) = if length_beside_chunked {
        req.forward_framing().map_err(Reject::head)?
    } else {
        (req.framing().map_err(Reject::head)?, false)
    };
    let fields = req.fields;
    let options = |name: &str| connection_names(fields.get_all("connection"), name);
    let has_connection = fields.get_all("connection").next().is_some();
    let upgrade = fields.get_all("upgrade").next().is_some() && options("upgrade");
    let http10 = req.version == Version::HTTP_10;
    let plan = Plan {
        framing,
        head_request: req.method == "HEAD",
        keep_alive: !http10 && !options("close") && !conflict,
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
    if trailers && connection_names(fields.get_all("te"), "trailers") {
        out.put_slice(b"te: trailers\r\n");
    }
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
    #[error("the next hop switched protocols with no Upgrade, or on a request that asked for none")]
    UnaskedSwitch,
    #[error("no response within {0:?} of the end of the request")]
    Timeout(Duration),
}

/// Both directions of one exchange, polled together.
struct Flow<'l> {
    plan: Plan,
    limits: &'l Limits,
    /// Told when the response head goes; its copy (when there is a tap) gets the body pieces.
    rec: &'l mut Record,
    /// Shown the exchange in progress when a response body follows its head.
    tap: Option<&'l dyn Tap>,
    /// Pass trailer fields on ([`Settings::trailers`]).
    trailers: bool,
    response_timeout: Option<Duration>,
    /// Runs from the end of the request body until the response head.
    head_timer: Option<Pin<Box<Sleep>>>,
    /// The final status composed for the inbound side.
    status: Option<StatusCode>,
    /// Body bytes of finished pumps: request, response.
    moved: (u64, u64),
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
    fn new(plan: Plan, settings: &Settings<'l>, rec: &'l mut Record) -> Self {
        let up = if plan.expect_continue {
            Up::Held(Box::pin(tokio::time::sleep(settings.continue_wait)))
        } else {
            Up::Body(pump(
                plan.framing,
                encode_as(plan.framing),
                settings.trailers,
            ))
        };
        Flow {
            plan,
            limits: settings.response_limits,
            trailers: settings.trailers,
            response_timeout: settings.response_timeout,
            head_timer: None,
            status: None,
            moved: (0, 0),
            rec,
            tap: settings.tap,
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

    /// Body bytes moved so far: request, response.
    fn bytes(&self) -> (u64, u64) {
        let (mut up, mut down) = self.moved;
        if let Up::Body(p) = &self.up {
            up += p.moved;
        }
        if let Down::Body(p) = &self.down {
            down += p.moved;
        }
        (up, down)
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
                Up::Body(pump) => {
                    let tee = self.rec.copy.as_mut().map(|c| &mut c.request_body);
                    match ready!(pump.poll_tee(cx, inb, out, tee)) {
                        Ok(()) => {
                            self.moved.0 += pump.moved;
                            self.up = Up::Done;
                        }
                        Err(PumpError::Write(e)) => {
                            // The next hop stopped reading: it may still answer. The body is
                            // read to its end and dropped, and the next hop is not reused.
                            debug!(error = %e, "next hop stopped reading the request body");
                            self.reuse_out = false;
                            pump.drain();
                        }
                        Err(e) => return Poll::Ready(Err(Failed::Inbound(e))),
                    }
                }
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
            self.up = Up::Body(pump(
                self.plan.framing,
                encode_as(self.plan.framing),
                self.trailers,
            ));
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
                    let n = match out.poll_fill(cx) {
                        Poll::Ready(r) => r.map_err(|e| outbound(OutboundError::Read(e)))?,
                        Poll::Pending => {
                            if let (Up::Done, Some(d)) = (&self.up, self.response_timeout) {
                                let t = self
                                    .head_timer
                                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
                                if t.as_mut().poll(cx).is_ready() {
                                    return Poll::Ready(Err(outbound(OutboundError::Timeout(d))));
                                }
                            }
                            return Poll::Pending;
                        }
                    };
                    if n == 0 {
                        return Poll::Ready(Err(outbound(OutboundError::Closed)));
                    }
                }
                Down::Body(pump) => {
                    let tee = self.rec.copy.as_mut().map(|c| &mut c.response_body);
                    match ready!(pump.poll_tee(cx, out, inb, tee)) {
                        Ok(()) => {
                            self.moved.1 += pump.moved;
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
                    }
                }
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
                    self.up = Up::Body(pump(
                        self.plan.framing,
                        encode_as(self.plan.framing),
                        self.trailers,
                    ));
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
        if let Some(copy) = self.rec.copy.as_mut() {
            copy.response_head = out.rbuf[..len].to_vec();
        }
        if let Up::Held(_) = self.up {
            // A final answer before the body was asked for: it is never sent. Both sides were
            // told a body follows, so neither connection is reused (D34).
            self.up = Up::Done;
            self.nudged = true;
            self.keep_in = false;
            self.reuse_out = false;
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // RFC 9110 §15.2.2: a `101` names the protocol it switches to.
            if !self.plan.upgrade || res.fields.get_all("upgrade").next().is_none() {
                return Err(OutboundError::UnaskedSwitch);
            }
            self.answered = true;
            self.status = Some(status);
            self.rec.mark_head();
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
        self.answered = true;
        self.status = Some(status);
        self.rec.mark_head();
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
        if framing != Framing::Empty
            && let (Some(tap), Some(mut copy)) = (self.tap, self.rec.copy.take())
        {
            // The body may take forever (SSE): the exchange is shown now, and again at its end.
            tap.progress(&mut copy, self.rec);
            self.rec.copy = Some(copy);
        }
        self.down = Down::Body(pump(framing, enc, self.trailers));
        Ok(true)
    }
}

/// A pump that passes trailer fields on if `trailers`.
fn pump(framing: Framing, enc: Encode, trailers: bool) -> Pump {
    let p = Pump::new(framing, enc);
    if trailers { p.passing_trailers() } else { p }
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

/// Answer the request at hand with `r` (plain text) and say what becomes of the connection:
/// kept only if the rejection allows it and the write went.
async fn answer<I: ByteStream>(inb: &mut Conn<I>, r: Reject, record: &mut Record) -> After {
    record.answered(r.status);
    let from = inb.wbuf.len();
    put_reply_head(&mut inb.wbuf, r.status, b"", r.text.len(), r.keep);
    if let Some(copy) = record.copy.as_mut() {
        copy.response_head = inb.wbuf[from..].to_vec();
        copy.response_body.see(r.text.as_bytes());
    }
    inb.wbuf.put_slice(r.text.as_bytes());
    sent(inb, r.keep).await
}

/// Answer the request at hand with this hop's own plain-text response (`fields`: more field
/// lines, each ending in CRLF) and say what becomes of the connection: kept only if `keep`
/// and the write went. The caller has consumed the request (or gives up the connection).
pub(crate) async fn reply<I: ByteStream>(
    inb: &mut Conn<I>,
    status: StatusCode,
    fields: &[u8],
    text: &str,
    keep: bool,
) -> After {
    put_reply_head(&mut inb.wbuf, status, fields, text.len(), keep);
    inb.wbuf.put_slice(text.as_bytes());
    sent(inb, keep).await
}

/// The head of this hop's own plain-text answer.
fn put_reply_head(w: &mut BytesMut, status: StatusCode, fields: &[u8], len: usize, keep: bool) {
    w.put_slice(b"HTTP/1.1 ");
    w.put_slice(status.as_str().as_bytes());
    w.put_u8(b' ');
    w.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    w.put_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\n");
    put_length(w, len as u64);
    w.put_slice(fields);
    if !keep {
        w.put_slice(b"connection: close\r\n");
    }
    w.put_slice(b"\r\n");
}

/// Write what is composed; the connection is kept if `keep` and the write went.
async fn sent<I: ByteStream>(inb: &mut Conn<I>, keep: bool) -> After {
    match inb.flush().await {
        Ok(()) if keep => After::KeepAlive,
        _ => After::Close,
    }
}

/// After a `101` ([`After::Switched`]): the bytes each side already sent past its head, then
/// bytes both ways until either side closes. Returns the bytes copied inbound -> outbound and
/// back (0, 0 if the tunnel failed).
pub(crate) async fn tunnel<I: ByteStream, O: ByteStream>(
    mut inb: Conn<I>,
    mut out: Conn<O>,
) -> (u64, u64) {
    let early = (inb.rbuf.len() as u64, out.rbuf.len() as u64);
    let res = async {
        inb.io.write_all(&out.rbuf).await?;
        inb.io.flush().await?;
        out.io.write_all(&inb.rbuf).await?;
        out.io.flush().await?;
        tokio::io::copy_bidirectional(&mut inb.io, &mut out.io).await
    }
    .await;
    match res {
        Ok((up, down)) => {
            debug!(up, down, "upgraded stream closed");
            (up + early.0, down + early.1)
        }
        Err(e) => {
            debug!(error = %e, "upgraded stream failed");
            (0, 0)
        }
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

#[cfg(test)]
mod tests {
    //! The framing table of one exchange, over in-memory streams: what the next hop receives
    //! and what the client gets back, byte for byte where it matters.

    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;
    use crate::h1::pump::tests::decode_chunked;

    /// A route to the streams in `next`, one per connect; targets and fields pass unchanged.
    struct TestRoute {
        next: Mutex<Vec<DuplexStream>>,
    }

    impl Route for TestRoute {
        type Io = DuplexStream;
        fn target(&self, target: &str, out: &mut BytesMut) -> Result<(), String> {
            if target.contains("..") {
                return Err("bad request target\n".into());
            }
            out.put_slice(target.as_bytes());
            Ok(())
        }
        fn drops(&self, name: &str) -> bool {
            name.eq_ignore_ascii_case("proxy-authorization")
        }
        fn add_fields(&self, _req: &head::Request<'_, '_>, out: &mut BytesMut) {
            out.put_slice(b"x-hop: 1\r\n");
        }
        async fn connect(&self) -> Result<DuplexStream, BoxError> {
            self.next
                .lock()
                .unwrap()
                .pop()
                .ok_or_else(|| "no next hop".into())
        }
        fn failed(&self, why: &dyn std::fmt::Display) -> String {
            format!("502: {why}\n")
        }
    }

    /// What one run of exchanges gave.
    struct Ran {
        afters: Vec<After>,
        /// What the next hop received.
        upstream: String,
        /// What the client received.
        client: String,
        /// Whether the next-hop connection was kept for another request.
        kept: bool,
    }

    /// Send `request` (all at once), let the next hop answer `response` at once (then close its
    /// side if `close`), run up to `n` exchanges while they keep the connection.
    async fn run(request: &[u8], response: &[u8], close: bool, n: usize) -> Ran {
        let (inb_io, mut client) = tokio::io::duplex(1 << 20);
        let (out_io, mut upstream) = tokio::io::duplex(1 << 20);
        let route = TestRoute {
            next: Mutex::new(vec![out_io]),
        };
        let response = response.to_vec();
        let up = tokio::spawn(async move {
            upstream.write_all(&response).await.unwrap();
            if close {
                upstream.shutdown().await.unwrap();
            }
            let mut got = Vec::new();
            let _ = upstream.read_to_end(&mut got).await;
            String::from_utf8_lossy(&got).into_owned()
        });
        client.write_all(request).await.unwrap();
        let limits = Limits {
            max_head_bytes: 1024,
            ..Limits::default()
        };
        let mut inb = Conn::new(inb_io, b"", &limits);
        let mut out = None;
        let closing = || false;
        let settings = Settings::new(&limits, &limits, &closing);
        let mut afters = Vec::new();
        for _ in 0..n {
            let after = tokio::time::timeout(
                Duration::from_secs(10),
                exchange(
                    &mut inb,
                    &mut out,
                    &route,
                    &settings,
                    &mut Record::default(),
                ),
            )
            .await
            .expect("an exchange that never ends");
            afters.push(after);
            if after != After::KeepAlive {
                break;
            }
        }
        let kept = out.is_some();
        drop((inb, out, route));
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        Ran {
            afters,
            upstream: up.await.unwrap(),
            client: String::from_utf8_lossy(&got).into_owned(),
            kept,
        }
    }

    /// One exchange on `inb` toward `route`, with default limits and no stop.
    async fn once(
        inb: &mut Conn<DuplexStream>,
        out: &mut Option<Conn<DuplexStream>>,
        route: &TestRoute,
    ) -> After {
        let limits = Limits::default();
        let closing = || false;
        let settings = Settings::new(&limits, &limits, &closing);
        exchange(inb, out, route, &settings, &mut Record::default()).await
    }

    /// [`run`] with one exchange, the next hop's side left open.
    async fn ran(request: &[u8], response: &[u8]) -> Ran {
        run(request, response, false, 1).await
    }

    const OK2: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[tokio::test]
    async fn a_length_body_goes_as_it_came_and_the_head_is_rewritten() {
        let r = run(
            b"POST /p?q HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: x-secret\r\n\
              X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: k\r\n\
              Proxy-Authorization: Basic eA==\r\nUpgrade: h2c\r\nX-Kept: 1\r\n\r\nhello",
            OK2,
            false,
            1,
        )
        .await;
        assert_eq!(
            r.upstream,
            "POST /p?q HTTP/1.1\r\nHost: a\r\nX-Kept: 1\r\nx-hop: 1\r\ncontent-length: 5\r\n\r\nhello"
        );
        assert_eq!(r.client, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(r.afters, [After::KeepAlive]);
        assert!(r.kept);
    }

    #[tokio::test]
    async fn chunked_bodies_are_framed_again_without_extensions_or_trailers() {
        let r = ran(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x\r\nok\r\n0\r\nT: 2\r\n\r\n",
        )
        .await;
        let (head, body) = r.upstream.split_once("\r\n\r\n").unwrap();
        assert!(head.ends_with("transfer-encoding: chunked"), "{head}");
        assert_eq!(decode_chunked(body.as_bytes()), b"hello");
        let (head, body) = r.client.split_once("\r\n\r\n").unwrap();
        assert_eq!(head, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked");
        assert_eq!(decode_chunked(body.as_bytes()), b"ok");
        assert!(r.kept && r.afters == [After::KeepAlive]);
    }

    #[tokio::test]
    async fn a_close_delimited_response_is_chunked_to_http_1_1_and_raw_to_http_1_0() {
        let res = b"HTTP/1.0 200 OK\r\n\r\nuntil close";
        let r = run(b"GET / HTTP/1.1\r\n\r\n", res, true, 1).await;
        let (head, body) = r.client.split_once("\r\n\r\n").unwrap();
        assert_eq!(head, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked");
        assert_eq!(decode_chunked(body.as_bytes()), b"until close");
        assert_eq!(r.afters, [After::KeepAlive]);
        assert!(!r.kept, "a close-delimited connection is done");

        let r = run(b"GET / HTTP/1.0\r\n\r\n", res, true, 1).await;
        assert_eq!(
            r.client,
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil close"
        );
        assert_eq!(r.afters, [After::Close]);
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body() {
        let r = ran(
            b"HEAD / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        )
        .await;
        assert_eq!(r.client, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
        assert!(r.kept && r.afters == [After::KeepAlive]);
        let r = ran(
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        )
        .await;
        assert_eq!(r.client, "HTTP/1.1 204 No Content\r\n\r\n");
        let r = ran(
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        )
        .await;
        assert_eq!(
            r.client,
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
        );
        assert!(r.kept);
    }

    #[tokio::test]
    async fn a_204_or_304_with_both_length_fields_has_no_body_and_closes() {
        // Found by the h1_exchange fuzz target: the 204 was framed as chunked and the engine
        // wrote `transfer-encoding: chunked` on it (D79).
        let r = ran(
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await;
        assert_eq!(
            r.client,
            "HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
        );
        assert!(!r.kept, "a confused next hop is not reused (D79)");
        assert_eq!(
            r.afters,
            [After::KeepAlive],
            "the client's connection is fine"
        );
        let r = ran(
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(r.client, "HTTP/1.1 304 Not Modified\r\n\r\n");
        assert!(!r.kept);
    }

    #[tokio::test]
    async fn interim_responses_pass_through() {
        let r = ran(
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
        .await;
        assert_eq!(
            r.client,
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        );
        // None to an HTTP/1.0 client (RFC 9110 §15.2).
        let r = ran(
            b"GET / HTTP/1.0\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
        .await;
        assert!(r.client.starts_with("HTTP/1.1 200 OK\r\n"), "{}", r.client);
    }

    #[tokio::test]
    async fn length_beside_chunked_is_framed_by_chunked_and_the_connection_is_not_reused() {
        let r = ran(
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
        .await;
        let (head, body) = r.client.split_once("\r\n\r\n").unwrap();
        assert_eq!(head, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked");
        assert_eq!(decode_chunked(body.as_bytes()), b"ok");
        assert!(!r.kept, "decision D20");
        assert_eq!(r.afters, [After::KeepAlive]);
    }

    #[tokio::test]
    async fn bad_framing_is_a_400_from_the_client_and_a_502_from_the_next_hop() {
        for req in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /.. HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        ] {
            let r = ran(req, b"").await;
            assert!(
                r.client.starts_with("HTTP/1.1 400 "),
                "{req:?}: {}",
                r.client
            );
            assert!(r.client.contains("connection: close\r\n"), "{}", r.client);
            assert_eq!(r.afters, [After::Close]);
        }
        // Bad framing after the head went: the client's connection is cut, the body not ended.
        let r = run(
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n",
            true,
            1,
        )
        .await;
        // (The head and the first chunk may still be in the write buffer when the bad one is
        // read: then nothing went at all.)
        assert!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n"
                .starts_with(&r.client),
            "{}",
            r.client
        );
        assert_eq!(r.afters, [After::Close]);
        assert!(!r.kept);
        for res in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"",
        ] {
            let r = run(b"GET / HTTP/1.1\r\n\r\n", res, true, 1).await;
            assert!(
                r.client.starts_with("HTTP/1.1 502 "),
                "{res:?}: {}",
                r.client
            );
            assert!(!r.kept);
        }
    }

    #[tokio::test]
    async fn an_oversize_head_is_431_and_too_many_fields_too() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(2000, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        let r = ran(&big, b"").await;
        assert!(r.client.starts_with("HTTP/1.1 431 "), "{}", r.client);
        assert!(r.upstream.is_empty(), "nothing reached the next hop");
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..101 {
            many.extend_from_slice(b"X: y\r\n");
        }
        many.extend_from_slice(b"\r\n");
        let r = ran(&many, b"").await;
        assert!(r.client.starts_with("HTTP/1.1 431 "), "{}", r.client);
    }

    #[tokio::test]
    async fn pipelined_requests_are_not_mixed() {
        let (inb_io, mut client) = tokio::io::duplex(1 << 20);
        let (out_io, up_io) = tokio::io::duplex(1 << 20);
        // A real HTTP/1.1 server as the next hop: it answers each request with its path and body.
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    use http_body_util::BodyExt;
                    let path = req.uri().path().to_string();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let text = format!("{path}:{}", String::from_utf8_lossy(&body));
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(text)),
                    ))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(up_io), svc)
                .await;
        });
        client
            .write_all(
                b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nonePOST /b HTTP/1.1\r\n\
                  Transfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\nGET /c HTTP/1.1\r\n\r\n",
            )
            .await
            .unwrap();
        let route = TestRoute {
            next: Mutex::new(vec![out_io]),
        };
        let mut inb = Conn::new(inb_io, b"", &Limits::default());
        let mut out = None;
        for _ in 0..3 {
            assert_eq!(once(&mut inb, &mut out, &route).await, After::KeepAlive);
        }
        drop((inb, out));
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8_lossy(&got);
        let bodies: Vec<&str> = got
            .split("HTTP/1.1 200 OK\r\n")
            .skip(1)
            .map(|r| r.split_once("\r\n\r\n").unwrap().1)
            .collect();
        assert_eq!(bodies, ["/a:one", "/b:two", "/c:"], "{got}");
    }

    #[tokio::test]
    async fn a_101_answer_to_an_upgrade_becomes_a_tunnel() {
        let (inb_io, mut client) = tokio::io::duplex(1 << 20);
        let (out_io, mut upstream) = tokio::io::duplex(1 << 20);
        let route = TestRoute {
            next: Mutex::new(vec![out_io]),
        };
        client
            .write_all(b"GET /ws HTTP/1.1\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nEARLY")
            .await
            .unwrap();
        upstream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nFROMUP")
            .await
            .unwrap();
        let mut inb = Conn::new(inb_io, b"", &Limits::default());
        let mut out = None;
        assert_eq!(once(&mut inb, &mut out, &route).await, After::Switched);
        let tunnel = tokio::spawn(tunnel(inb, out.take().unwrap()));
        // The client gets the 101 and what the next hop sent behind it.
        let mut text = String::new();
        while !text.ends_with("FROMUP") {
            let mut buf = [0u8; 256];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {text:?}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(
            text.contains("upgrade: echo\r\nconnection: upgrade\r\n\r\nFROMUP"),
            "{text}"
        );
        // The next hop gets the upgrade request, the client's early bytes, then the rest.
        client.write_all(b"+LATE").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.contains("upgrade: echo\r\nconnection: upgrade\r\n"),
            "{got}"
        );
        assert!(got.ends_with("\r\n\r\nEARLY+LATE"), "{got}");
        drop(upstream);
        tunnel.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_asks_to_close_is_told_so() {
        let r = ran(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", OK2).await;
        assert_eq!(
            r.client,
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        );
        assert_eq!(r.afters, [After::Close]);
        assert!(r.kept, "the next hop's connection is its own");
    }

    #[tokio::test]
    async fn an_unreachable_next_hop_is_a_502_and_a_bodiless_request_keeps_the_connection() {
        let (inb_io, mut client) = tokio::io::duplex(1 << 16);
        let route = TestRoute {
            next: Mutex::new(vec![]),
        };
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut inb = Conn::new(inb_io, b"", &Limits::default());
        let mut out = None;
        assert_eq!(once(&mut inb, &mut out, &route).await, After::KeepAlive);
        drop(inb);
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{got}");
        assert!(got.ends_with("502: no next hop\n"), "{got}");
    }

    /// A tap that keeps what it is given.
    struct Keep(Mutex<Vec<Capture>>, usize);

    impl Tap for Keep {
        fn body_limit(&self) -> usize {
            self.1
        }
        fn record(&self, capture: Capture, record: &Record) {
            assert!(capture.sent.is_none() || record.answered_at().is_some());
            self.0.lock().unwrap().push(capture);
        }
    }

    /// One exchange of `request` against `response`, with `tap`: (client bytes, upstream bytes).
    async fn tapped(request: &[u8], response: &[u8], tap: Option<&dyn Tap>) -> (Vec<u8>, Vec<u8>) {
        let (inb_io, mut client) = tokio::io::duplex(1 << 20);
        let (out_io, mut upstream) = tokio::io::duplex(1 << 20);
        let route = TestRoute {
            next: Mutex::new(vec![out_io]),
        };
        upstream.write_all(response).await.unwrap();
        upstream.shutdown().await.unwrap();
        client.write_all(request).await.unwrap();
        let limits = Limits::default();
        let mut inb = Conn::new(inb_io, b"", &limits);
        let mut out = None;
        let closing = || false;
        let settings = Settings {
            tap,
            ..Settings::new(&limits, &limits, &closing)
        };
        exchange(
            &mut inb,
            &mut out,
            &route,
            &settings,
            &mut Record::default(),
        )
        .await;
        drop((inb, out, route));
        let (mut got, mut sent) = (Vec::new(), Vec::new());
        client.read_to_end(&mut got).await.unwrap();
        upstream.read_to_end(&mut sent).await.unwrap();
        (got, sent)
    }

    #[tokio::test]
    async fn a_tap_sees_heads_and_the_start_of_each_body_and_changes_nothing_forwarded() {
        let request = b"POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n";
        let response = b"HTTP/1.1 201 Created\r\nX-R: 1\r\nContent-Length: 10\r\n\r\n0123456789";
        let plain = tapped(request, response, None).await;
        let keep = Keep(Mutex::new(Vec::new()), 5);
        let with_tap = tapped(request, response, Some(&keep)).await;
        assert_eq!(plain, with_tap, "the same bytes both ways, tap or not");
        let caps = keep.0.into_inner().unwrap();
        assert_eq!(caps.len(), 1);
        let c = &caps[0];
        assert_eq!(
            c.request_head,
            b"POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            (&c.request_body.bytes[..], c.request_body.total),
            (&b"abcde"[..], 7)
        );
        assert!(c.response_head.starts_with(b"HTTP/1.1 201 Created\r\n"));
        assert_eq!(
            (&c.response_body.bytes[..], c.response_body.total),
            (&b"01234"[..], 10)
        );
        assert!(c.sent.is_some() && c.failed.is_none());
    }

    #[tokio::test]
    async fn a_tap_records_the_hops_own_answer() {
        let keep = Keep(Mutex::new(Vec::new()), 64);
        let (got, _) = tapped(b"GET /.. HTTP/1.1\r\n\r\n", b"", Some(&keep)).await;
        assert!(got.starts_with(b"HTTP/1.1 400 "));
        let caps = keep.0.into_inner().unwrap();
        assert_eq!(caps.len(), 1);
        assert!(caps[0].response_head.starts_with(b"HTTP/1.1 400 "));
        assert_eq!(caps[0].response_body.bytes, b"bad request target\n");
    }
}
