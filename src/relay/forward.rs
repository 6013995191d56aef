//! Public connections on the forwarding engine ([`crate::h1`]): each request is routed, gets
//! an agent connection from the registry, is forwarded in one engine exchange, and the agent
//! connection is parked again.
//!
//! ```text
//! head scan -> offer? -> hand the connection to hyper (claim)
//!           -> Host check -> route -> checkout -> h1::exchange (exchange::AgentRoute) -> park
//!                                                  |  (dead on arrival: one more checkout)
//!                                                  +-> 101: h1::tunnel
//! ```
//!
//! Failures map to 404 (no such agent), 503 (the agent is offline, or no idle connection in
//! time), 502 (agent gone, or a `101` to a request that did not ask to upgrade) and 504 (no
//! response head in time). A public request body that fails on its way (a bad chunk, a
//! connection closed early) is the client's fault: 400 if no response has started. A bad
//! `Host` (RFC 9112 §3.2) is 400 before anything else. An agent connection found closed when
//! the request is about to be written is replaced by one more checkout, once. A body that
//! expects `100 Continue` is held back until the agent answers `100` (the engine's `Expect`
//! handling): the public client's `100` comes from the agent side, and a refusal from there
//! costs no upload.
//!
//! With a fleet (`--registry`), a request for a name that has no connection here and that
//! another relay holds goes to that relay instead, in the same kind of exchange
//! ([`super::fleet::PeerRoute`]), unless it came from another relay already (decisions D94).
//!
//! Every answered public request is counted at one place, [`finish`].
//!
//! A name served over HTTP/2 (`ptth` with `ALPN: h2`) is *leased*, not checked out: the
//! exchange runs on a pipe to one of its streams ([`super::over_h2`], decisions D83). An upgrade
//! takes an HTTP/1.1 connection of the name, else a stream for RFC 8441 extended CONNECT
//! ([`super::websocket`]) when the agent allowed it, else `502` with the reason (D85).

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Uri, Version};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::debug;

use super::exchange::AgentRoute;
use super::fleet::{self, Fleet, PeerRoute};
use super::metrics::Finished;
use super::over_h2;
use super::registry::{AgentConn, AgentStream, CheckoutError, Leased, Want};
use super::route::{RouteError, route};
use super::tunnel::tunnel;
use super::{ConnInfo, RELAY_CONTINUE_WAIT, RETRY_AFTER_SECS, Shared};
use crate::error::HeadError;
use crate::h1::{self, After, Conn, Record, Settings};
use crate::io::Rewind;
use crate::proto::body::Framing;
use crate::proto::forwarded::Hop;
use crate::proto::head::{self, Slots};
use crate::proto::hop::connection_names;
use crate::proto::long_poll;
use crate::proto::{Protocol, request};

/// Serve public requests on `io` until the client closes, the connection idles past the head
/// timeout, or the drain ends it. A PTTH offer is not public: the connection is handed back,
/// with the bytes read so far in front, for the claim.
pub(crate) async fn serve<S: AgentStream>(
    io: S,
    info: &ConnInfo,
    shared: &Arc<Shared>,
    soft: &CancellationToken,
) -> Option<Rewind<S>> {
    let limits = &shared.public_limits;
    let mut inb = Conn::new(io, b"", limits);
    // The buffers of the agent connection in use, kept here between exchanges so that a
    // parked connection holds none.
    let mut spare = (BytesMut::new(), BytesMut::new());
    // One timer for the connection's life, moved later before each request. A timer made per
    // request lands earlier than the driver's next wakeup (the exchange's response timer), and
    // tokio then wakes its driver: an eventfd write and an extra epoll round per request (seen
    // with strace at c1). Moving a registered timer later costs no wheel work at all.
    let idle = tokio::time::sleep(shared.config.head_timeout);
    tokio::pin!(idle);
    let between = soft.cancelled();
    tokio::pin!(between);
    let hard = shared.hard.cancelled();
    tokio::pin!(hard);
    let mut stops = Stops {
        soft,
        between,
        hard,
    };
    loop {
        // Idle (or between requests), then the head: both within the head timeout.
        idle.as_mut()
            .reset(Instant::now() + shared.config.head_timeout);
        let judged = loop {
            if !inb.rbuf.is_empty() {
                match judge(&inb.rbuf, shared) {
                    Judged::Incomplete => {}
                    judged => break judged,
                }
            }
            // The read first: a wake with the next request skips polling the stop (a lock in
            // tokio-util each time); a request already sent is served, and the stop is seen
            // at the next wait.
            tokio::select! {
                biased;
                r = inb.fill() => match r {
                    Ok(n) if n > 0 => {}
                    _ => return None,
                },
                () = stops.between.as_mut(), if inb.rbuf.is_empty() => return None,
                () = &mut idle => return None,
            }
        };
        let mut count = Count::new(&inb.rbuf, shared.metrics.logs_requests());
        let after = match public(
            &mut inb, judged, &mut spare, info, shared, &mut stops, &mut count,
        )
        .await
        {
            Public::After(after) => after,
            Public::Claim => {
                // A copy: the read buffer itself must not stay behind a parked connection.
                let already = Bytes::copy_from_slice(&inb.rbuf);
                return Some(Rewind::new(already, inb.io));
            }
            Public::Switched(agent) => {
                finish(shared, &count, info);
                tunnel(shared, inb, *agent);
                return None;
            }
            Public::SwitchedPeer(peer) => {
                finish(shared, &count, info);
                tunnel(shared, inb, *peer);
                return None;
            }
            Public::SwitchedOverH2(pipe) => {
                finish(shared, &count, info);
                tunnel(shared, inb, *pipe);
                return None;
            }
            Public::BadHead(after) => {
                // Not a request at all: nothing to count (as hyper's own 400/431 were not).
                if after == After::KeepAlive {
                    continue;
                }
                return None;
            }
        };
        finish(shared, &count, info);
        match after {
            After::KeepAlive => {}
            After::Close => return None,
            // `public` gives a switch as `Public::Switched`.
            After::Switched => return None,
        }
    }
}

/// The relay's two stops as one public connection waits on them: the soft one ends it between
/// requests, the hard one cuts an exchange. Each wait is made once for the connection's life:
/// a `cancelled()` made per request cost a waiter-list insert and removal under a lock every
/// time (3% of the relay's instructions, callgrind).
pub(super) struct Stops<'s, 't> {
    soft: &'t CancellationToken,
    between: Pin<&'s mut WaitForCancellationFuture<'t>>,
    hard: Pin<&'s mut WaitForCancellationFuture<'t>>,
}

impl Stops<'_, '_> {
    /// `exchange`'s outcome, or `Close` if the hard stop cuts it first. The exchange is polled
    /// first: no random pick per poll, and no look at the stop on the poll that finishes it.
    pub(super) async fn unless_hard(&mut self, exchange: impl Future<Output = After>) -> After {
        tokio::select! {
            biased;
            a = exchange => a,
            () = self.hard.as_mut() => After::Close,
        }
    }
}

/// How one request ended.
pub(super) enum Public {
    /// Answered; the record says how.
    After(After),
    /// A PTTH offer: the connection goes to the claim.
    Claim,
    /// The agent switched protocols: the two connections become a tunnel.
    Switched(Box<Conn<AgentConn>>),
    /// The same through the relay of the fleet that holds the name.
    SwitchedPeer(Box<Conn<TcpStream>>),
    /// The same over an HTTP/2 agent: the pipe to the bridge, which holds the extended
    /// CONNECT stream (RFC 8441).
    SwitchedOverH2(Box<Conn<tokio::io::DuplexStream>>),
    /// The head was refused before it was a request (431, 400).
    BadHead(After),
}

/// The one place a finished public request is counted: its status (the agent's, or the relay's
/// own), its body bytes each way and its duration. `record.status()` is `None` when the
/// connection was cut before any answer.
fn finish(shared: &Shared, count: &Count, info: &ConnInfo) {
    let (seen, record) = (count, &count.record);
    let Some(status) = record.status() else {
        return;
    };
    shared.metrics.request(&Finished {
        name: seen.name.as_deref(),
        known: seen.known,
        method: &seen.method,
        path: &seen.path,
        status,
        bytes_in: record.up(),
        bytes_out: record.down(),
        head: record.head(),
        duration: record.started().elapsed(),
        client: info.peer,
    });
}

/// What the count of a request needs: the engine's record, and from the head and the route
/// (see [`finish`]).
#[derive(Default)]
struct Count {
    record: Record,
    method: Method,
    /// The target as received; kept only when there is an access log to write it to.
    path: String,
    /// The name the request was routed to, and whether the relay knew it.
    name: Option<String>,
    known: bool,
}

impl Count {
    /// The method and (if `keep_path`) the target from the request line at the front of `buf`.
    fn new(buf: &[u8], keep_path: bool) -> Count {
        let mut parts = buf.splitn(3, |&b| b == b' ');
        let method = parts
            .next()
            .and_then(|m| Method::from_bytes(m).ok())
            .unwrap_or_default();
        let path = match parts.next() {
            Some(t) if keep_path => String::from_utf8_lossy(t).into_owned(),
            _ => String::new(),
        };
        Count {
            method,
            path,
            ..Count::default()
        }
    }
}

/// What routing needs from a request head, owned (the head borrows the read buffer).
struct Routed {
    name: String,
    path: String,
    prefix: Option<String>,
    host: Option<String>,
    /// The target was in absolute form: its authority is sent as `Host`.
    absolute: bool,
    http10: bool,
    upgrade: bool,
    /// The connection can serve another request if this one is refused unread.
    keep: bool,
    /// The request carries the fleet's hop marker: another relay sent it, it goes no further.
    hop_marked: bool,
    /// The head's length.
    len: usize,
}

/// A relay's own refusal of a request, before any agent is involved.
struct Refusal {
    status: StatusCode,
    text: String,
    /// The request had no body: the connection may serve the next one.
    keep: bool,
    /// The head's length, consumed when the connection is kept.
    len: usize,
}

/// Serve the request whose head is at the front of `inb.rbuf`, as `judged`.
async fn public<S: AgentStream>(
    inb: &mut Conn<S>,
    judged: Judged,
    spare: &mut (BytesMut, BytesMut),
    info: &ConnInfo,
    shared: &Arc<Shared>,
    stops: &mut Stops<'_, '_>,
    count: &mut Count,
) -> Public {
    let routed = match judged {
        Judged::Incomplete => unreachable!("`serve` waits for a complete head"),
        Judged::Claim if info.fleet_peer => {
            let r = Refusal {
                status: StatusCode::FORBIDDEN,
                text: "the fleet's peer listener takes no agent claims: dial a public listener\n"
                    .into(),
                keep: false,
                len: 0,
            };
            return Public::After(refuse(inb, r, &mut count.record).await);
        }
        Judged::Claim => return Public::Claim,
        Judged::BadHead(e) => {
            let text = format!("{e}\n");
            let status = match e {
                // hyper's answer before the engine, kept: the head cap is hit first.
                HeadError::LineTooLong { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                e => e.status(),
            };
            return Public::BadHead(h1::reply(inb, status, b"", &text, false).await);
        }
        Judged::Refused(r) => return Public::After(refuse(inb, r, &mut count.record).await),
        Judged::Routed(r) => r,
    };
    let cfg = &shared.config;
    if info.fleet_peer {
        shared.metrics.fleet_forward(false);
    }
    // A marked request on a public listener is not forwarded either, but its forwarding
    // fields are not trusted: only the peer listener's are (D94).
    if let Some(fleet) = &shared.fleet
        && !info.fleet_peer
        && !routed.hop_marked
        && !shared.registry.connected(&routed.name)
        && let Some(url) = fleet.holder(&routed.name).await
        && let Some(authority) = fleet::authority(&url)
    {
        // Not a name of this relay's: no per-name series here (the holder counts it under
        // its name; nothing here would ever remove the series).
        count.known = false;
        count.name = Some(routed.name.clone());
        return to_peer(
            inb,
            fleet,
            authority,
            &routed,
            info,
            shared,
            stops,
            &mut count.record,
        )
        .await;
    }
    let queue_deadline = Instant::now() + cfg.queue_timeout;
    let want = if routed.upgrade {
        Want::Upgrade
    } else {
        Want::Any
    };
    let leased = shared
        .registry
        .lease(&routed.name, queue_deadline, want)
        .await;
    count.known = !matches!(leased, Err(CheckoutError::Unknown(_)));
    count.name = Some(routed.name.clone());
    let leased = match leased {
        Ok(c) => c,
        Err(e) => {
            let r = Refusal {
                status: e.status(),
                text: format!("{e}\n"),
                keep: routed.keep,
                len: routed.len,
            };
            return Public::After(refuse(inb, r, &mut count.record).await);
        }
    };
    let route = AgentRoute {
        registry: &shared.registry,
        name: &routed.name,
        path: &routed.path,
        queue_deadline,
        hop: Hop {
            client: info.peer.ip(),
            proto: info.proto(),
            host: routed.host.as_deref(),
            prefix: routed.prefix.as_deref(),
            // Another relay of the fleet wrote the client's `Forwarded` (D94).
            trust: cfg.trust_forwarded || info.fleet_peer,
        },
        absolute: routed.absolute,
        http10: routed.http10,
        queue_wait: match &leased {
            Leased::H1(conn) => conn.reservation.queue_wait,
            Leased::H2(lease) => lease.queue_wait,
        }
        .then(|| count.record.started().elapsed()),
    };
    let soft = stops.soft;
    let closing = || soft.is_cancelled();
    let settings = Settings {
        continue_wait: RELAY_CONTINUE_WAIT,
        response_timeout: Some(cfg.response_timeout),
        trailers: true,
        length_beside_chunked: true,
        ..Settings::new(&shared.public_limits, &shared.agent_limits, &closing)
    };
    let conn = match leased {
        Leased::H1(conn) => conn,
        Leased::H2(lease) => {
            return over_h2::exchange(
                inb,
                lease,
                &route,
                &settings,
                spare,
                shared,
                stops,
                &mut count.record,
            )
            .await;
        }
    };
    let rbuf = std::mem::take(&mut spare.0);
    let wbuf = std::mem::take(&mut spare.1);
    let mut out = Some(Conn::with_buffers(conn, rbuf, wbuf, &shared.agent_limits));
    let after = stops
        .unless_hard(h1::exchange(
            inb,
            &mut out,
            &route,
            &settings,
            &mut count.record,
        ))
        .await;
    if after == After::Switched {
        return match out.take() {
            Some(agent) => Public::Switched(Box::new(agent)),
            None => Public::After(After::Close),
        };
    }
    if let Some(agent) = out.take() {
        let (conn, mut rbuf, mut wbuf) = agent.into_parts();
        if routed.upgrade {
            // Declined upgrade: the agent may still be set up for the switch.
            debug!("the agent declined an upgrade; not reusing its connection");
        } else if !rbuf.is_empty() {
            debug!("the agent sent bytes after its response; dropping the connection");
        } else if conn.reservation.one_shot {
            // A long-poll connection: dropping it ends the poll's body, so the agent knows.
        } else {
            shared.registry.clone().park(conn);
        }
        rbuf.clear();
        wbuf.clear();
        *spare = (rbuf, wbuf);
    }
    Public::After(after)
}

/// Forward the request to the relay of the fleet at `authority`, which holds its name, over a
/// kept connection to it (decisions D94).
#[allow(clippy::too_many_arguments)]
async fn to_peer<S: AgentStream>(
    inb: &mut Conn<S>,
    fleet: &Fleet,
    authority: &str,
    routed: &Routed,
    info: &ConnInfo,
    shared: &Arc<Shared>,
    stops: &mut Stops<'_, '_>,
    record: &mut Record,
) -> Public {
    let cfg = &shared.config;
    fleet.metrics().fleet_forward(true);
    let route = PeerRoute {
        fleet,
        authority,
        hop: Hop {
            client: info.peer.ip(),
            proto: info.proto(),
            host: routed.host.as_deref(),
            prefix: None,
            trust: cfg.trust_forwarded,
        },
    };
    let soft = stops.soft;
    let closing = || soft.is_cancelled();
    // The peer holds the request as long as its own queue and response timeouts allow; past
    // both, the peer is partitioned away: 504 (decisions D96).
    let settings = Settings {
        continue_wait: RELAY_CONTINUE_WAIT,
        response_timeout: Some(cfg.queue_timeout + cfg.response_timeout),
        trailers: true,
        length_beside_chunked: true,
        ..Settings::new(&shared.public_limits, &shared.agent_limits, &closing)
    };
    let mut out = None;
    let after = stops
        .unless_hard(h1::exchange(inb, &mut out, &route, &settings, record))
        .await;
    if after == After::Switched {
        return match out.take() {
            Some(peer) => Public::SwitchedPeer(Box::new(peer)),
            None => Public::After(After::Close),
        };
    }
    if let Some(peer) = out.take() {
        let (tcp, rbuf, _) = peer.into_parts();
        if rbuf.is_empty() && !routed.upgrade {
            fleet.keep(authority, tcp);
        }
    }
    Public::After(after)
}

/// What the relay makes of a request head.
enum Judged {
    /// More bytes are needed.
    Incomplete,
    Claim,
    BadHead(HeadError),
    Refused(Refusal),
    Routed(Routed),
}

/// Read the head at the front of `buf` (if complete): an offer, a malformed head, a request the
/// relay refuses itself (Host, route, framing), or where it goes.
fn judge(buf: &[u8], shared: &Shared) -> Judged {
    let mut slots = Slots::new();
    let req = match head::Request::parse(buf, &mut slots, &shared.public_limits) {
        Ok(Some(r)) => r,
        Ok(None) => return Judged::Incomplete,
        Err(e) => return Judged::BadHead(e),
    };
    let fields = req.fields;
    let http10 = req.version == Version::HTTP_10;
    let has_upgrade = fields.get_all("upgrade").next().is_some();
    if has_upgrade
        && let Ok(parts) = req.to_parts()
        // Every protocol this crate knows, `ptth` too: the claim refuses one the relay's rules
        // do not accept.
        && crate::proto::tokens::offered_protocol(&parts.headers, &Protocol::KNOWN).is_some()
    {
        return Judged::Claim;
    }
    // A long-poll request is the agent's too (spec-notes/long-poll.md), and so are a browser's
    // CORS preflight for one and the browser agent's script.
    if fields.get_all(long_poll::FIELD).next().is_some()
        || super::long_poll::is_preflight(
            req.method,
            fields.get_all("access-control-request-headers"),
        )
        || (req.method == "GET" && req.target == long_poll::AGENT_JS_PATH)
    {
        return Judged::Claim;
    }
    // D16: both length fields are framed by the coding, and the connection closes after.
    let (framing, conflict) = match req.forward_framing() {
        Ok(f) => f,
        Err(e) => return Judged::BadHead(e),
    };
    let keep = framing == Framing::Empty
        && !conflict
        && !http10
        && !connection_names(fields.get_all("connection"), "close");
    let len = req.len;
    let refuse = |status, text: String, keep| {
        Judged::Refused(Refusal {
            status,
            text,
            keep,
            len,
        })
    };
    let uri = match req.target.starts_with('/') {
        true => None,
        false => match req.target.parse::<Uri>() {
            Ok(u) => Some(u),
            Err(_) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid request target\n".into(),
                    false,
                );
            }
        },
    };
    // RFC 9112 §3.2: one Host (none only in HTTP/1.0); an absolute-form target's authority
    // wins over it (§3.2.2).
    let target_authority = uri.as_ref().and_then(|u| u.authority()).map(|a| a.as_str());
    let host = match request::authority_of(req.version, target_authority, fields.get_all("host")) {
        Ok(h) => h,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("{e}\n"), false),
    };
    let pq = match &uri {
        None => req.target,
        Some(u) => u.path_and_query().map_or("/", |pq| pq.as_str()),
    };
    let r = match route(host, pq, &shared.config.domain) {
        Ok(r) => r,
        Err(RouteError::NoName) => {
            let text = format!(
                "no agent name in the request: use http://NAME.{}/ or /NAME/\n",
                shared.config.domain
            );
            return refuse(StatusCode::NOT_FOUND, text, keep);
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("{e}\n"), keep),
    };
    if r.path.parse::<Uri>().is_err() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid request target\n".into(),
            keep,
        );
    }
    let upgrade = has_upgrade && connection_names(fields.get_all("connection"), "upgrade");
    Judged::Routed(Routed {
        name: r.name,
        path: r.path,
        prefix: r.prefix,
        host: host.map(str::to_string),
        absolute: target_authority.is_some(),
        http10,
        upgrade,
        keep,
        len,
        hop_marked: fields.get_all(fleet::HOP_FIELD).next().is_some(),
    })
}

/// Answer with a refusal of the relay's own: a `503` or `429` says when to try again.
async fn refuse<S: AgentStream>(inb: &mut Conn<S>, r: Refusal, record: &mut Record) -> After {
    record.answered(r.status);
    let retry = matches!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    );
    let mut fields = BytesMut::new();
    if retry {
        fields.extend_from_slice(b"retry-after: ");
        crate::proto::put_decimal(&mut fields, RETRY_AFTER_SECS);
        fields.extend_from_slice(b"\r\n");
    }
    if r.keep {
        // The request has no body: it is consumed whole.
        bytes::Buf::advance(&mut inb.rbuf, r.len);
    }
    h1::reply(inb, r.status, &fields, &r.text, r.keep).await
}
