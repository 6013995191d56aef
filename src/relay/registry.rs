//! Agent names and their parked reversed connections.
//!
//! Each name has a `Slot` with its own mutex: the global map is locked only to find the slot
//! (and when agents arrive or leave), so public requests for different names never contend.
//! A connection is counted from the moment its claim is accepted (`Reservation`) until it is
//! dropped; the reservation travels inside the `AgentConn`, so whoever owns the connection
//! owns its place in the counts.
//!
//! A parked connection is only its stream: no HTTP client, no buffers, no task. Parking polls
//! the stream once with a waker of its own (`Readable`), so the reactor tells the sweeper when
//! the stream becomes readable; an agent that closes (or sends anything unasked) is dropped
//! then. A public request takes the stream with `Registry::checkout`, runs one exchange on it
//! and gives it back with `Registry::park`. (A watcher task per park cost a spawn, two polls
//! and an abort per request: 8% of the relay's instructions, and memory per parked stream.)
//!
//! A name whose last connection left goes through timed states (`Phase`): *reconnecting*
//! for the reconnect window (requests are held, an agent that comes back serves them),
//! *offline* until the grace ends (503 at once; the name still belongs to its token), then it
//! is forgotten. One sweeper task per relay (`Registry::sweep`) makes these changes on time,
//! from a queue ordered by deadline: nothing waits for a request to arrive, and no task or
//! timer exists per name.
//!
//! A `ptth` connection that chose HTTP/2 (draft-kazuho-ptth-ptth) is not checked out: it is
//! *leased* (`Registry::lease`, decisions D81). Its sender stays in the slot, and every lease
//! clones it and counts one open stream, so one connection carries many exchanges at once; a
//! lease takes the name's HTTP/2 connection with the fewest open streams, and the agent's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` is enforced by the HTTP/2 client itself (a stream past it
//! waits in the client for one to close).

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http::StatusCode;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Config;
use super::auth::Secret;
use super::h2_settings::ConnectProtocol;
use super::metrics::Metrics;
use crate::listener::ReversedH2Client;

/// The HTTP/2 client of a transposed connection: requests go to the agent with their bodies
/// as the relay's bridge read them ([`super::forward`]).
pub(crate) type H2Client = ReversedH2Client<Incoming>;

/// A name's HTTP/2 connection in its slot: the sender, and its open streams.
struct H2Entry {
    /// The reservation's id (one connection has one entry per name it serves).
    id: u64,
    client: H2Client,
    open: Arc<AtomicUsize>,
    queue_wait: bool,
    /// The agent allowed RFC 8441 extended CONNECT.
    connect: ConnectProtocol,
}

/// What a public request gets from [`Registry::lease`]: a checked-out HTTP/1.1 connection, or a
/// stream's share of an HTTP/2 one.
pub(crate) enum Leased {
    /// The connection, taken exclusively until it is parked again.
    H1(AgentConn),
    /// A clone of the HTTP/2 sender; dropping the lease closes its count of open streams.
    H2(H2Lease),
}

/// Which connections a request can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// HTTP/2 first, else HTTP/1.1.
    Any,
    /// HTTP/1.1 only.
    H1,
    /// An upgrade (WebSocket): an HTTP/1.1 connection (the byte stream as it is), else, when
    /// the name has only HTTP/2 ones, a stream for RFC 8441 extended CONNECT (decisions D85).
    Upgrade,
}

/// A public request waiting for a connection of a name.
struct Waiter {
    want: Want,
    tx: oneshot::Sender<Leased>,
}

impl Waiter {
    /// The request went away (its deadline passed, or its client).
    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// One open stream on a name's HTTP/2 connection (see [`Leased::H2`]).
pub(crate) struct H2Lease {
    pub(crate) client: H2Client,
    /// The agent asked for `PTTH-Queue-Wait` (decision D66).
    pub(crate) queue_wait: bool,
    /// The agent allowed RFC 8441 extended CONNECT on this connection.
    pub(crate) connect: ConnectProtocol,
    open: Arc<AtomicUsize>,
    registry: Arc<Registry>,
}

impl Drop for H2Lease {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.registry.bump();
    }
}

/// A byte stream to an agent (plain TCP or TLS).
pub(crate) use crate::io::ByteStream as AgentStream;

/// A flipped stream to an agent, and its place in the counts (released when dropped).
pub(crate) struct AgentConn {
    pub(crate) io: Box<dyn AgentStream>,
    pub(crate) reservation: Reservation,
    /// The waker its stream holds while it is parked, made at its first park.
    readable: Option<Waker>,
}

impl AgentConn {
    pub(crate) fn new(io: Box<dyn AgentStream>, reservation: Reservation) -> AgentConn {
        AgentConn {
            io,
            reservation,
            readable: None,
        }
    }

    /// Whether the stream is still open with nothing unread: a closed stream, an error or
    /// unsolicited bytes all mean the connection must not carry a request. Does not wait.
    pub(crate) fn is_alive(&mut self) -> bool {
        poll_alive(&mut self.io, Waker::noop())
    }

    /// Alive, and watched while parked: the stream holds this connection's [`Readable`].
    fn watch(&mut self, woken: &Arc<Woken>) -> bool {
        let reservation = &self.reservation;
        let waker = self.readable.get_or_insert_with(|| {
            Waker::from(Arc::new(Readable {
                slot: Arc::downgrade(&reservation.slot),
                id: reservation.id,
                woken: woken.clone(),
            }))
        });
        poll_alive(&mut self.io, waker)
    }
}

/// [`AgentConn::is_alive`] of `io`, leaving `waker` with the stream: it is woken when the
/// stream becomes readable.
fn poll_alive(io: &mut Box<dyn AgentStream>, waker: &Waker) -> bool {
    let mut cx = Context::from_waker(waker);
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    matches!(Pin::new(io).poll_read(&mut cx, &mut buf), Poll::Pending)
}

/// The waker a parked stream holds: its wake means the agent closed the stream or sent bytes
/// nobody asked for. It only queues the connection for the sweeper ([`Registry::sweep`]),
/// which looks at it outside the reactor.
struct Readable {
    slot: Weak<Slot>,
    id: u64,
    woken: Arc<Woken>,
}

impl Wake for Readable {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.slot.clone(), self.id));
        self.woken.notify.notify_one();
    }
}

/// Parked connections whose streams became readable, for the sweeper. A stream wakes its
/// waker once per park, so the queue holds at most one entry per parked connection.
#[derive(Default)]
struct Woken {
    queue: Mutex<Vec<(Weak<Slot>, u64)>>,
    notify: Notify,
}

/// The stream of a checked-out connection, for the engine's exchange: the reservation rides
/// along (a connection dropped mid-exchange gives its place in the counts back).
impl AsyncRead for AgentConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgentConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How long a name without connections holds requests: the reconnect window, but never past
/// the grace.
fn window(config: &Config) -> Duration {
    config.reconnect_window.min(config.grace)
}

#[derive(Default)]
struct SlotState {
    /// Every live connection of this name, with the agent's address.
    conns: HashMap<u64, SocketAddr>,
    /// The idle connections, oldest first; each stream holds its connection's [`Readable`].
    idle: VecDeque<AgentConn>,
    waiters: VecDeque<Waiter>,
    /// The HTTP/2 connections serving this name (each also in `conns`).
    h2: Vec<H2Entry>,
    /// The token that holds the name: while any of its connections is alive, and through the
    /// grace after the last one left.
    owner: Option<Secret>,
    /// When the last connection left; `None` while one is alive (and for a slot being
    /// created).
    empty_since: Option<Instant>,
    /// The deadline of this slot's live entry in the sweeper's queue, if it has one. Other
    /// entries for the slot are stale and skipped.
    queued: Option<Instant>,
}

/// Where a name stands, from its connections and the time since the last one left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// At least one connection is alive.
    Connected,
    /// No connection, until the given end of the reconnect window: requests are held.
    Reconnecting(Instant),
    /// No connection past the window, until the given end of the grace: 503 at once.
    Offline(Instant),
    /// The grace has passed (or the slot has never had a connection): forget it.
    Gone,
}

impl SlotState {
    fn phase(&self, config: &Config, now: Instant) -> Phase {
        if !self.conns.is_empty() {
            return Phase::Connected;
        }
        let Some(since) = self.empty_since else {
            return Phase::Gone;
        };
        let window_end = since + window(config);
        let grace_end = since + config.grace;
        if now < window_end {
            Phase::Reconnecting(window_end)
        } else if now < grace_end {
            Phase::Offline(grace_end)
        } else {
            Phase::Gone
        }
    }
}

/// One agent name.
pub(crate) struct Slot {
    name: String,
    state: Mutex<SlotState>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding the lock leaves plain counters behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReserveError {
    /// The relay holds its maximum number of agent connections.
    #[error("the relay has reached its limit of {0} agent connections")]
    TooManyAgents(usize),
    /// This peer address holds its maximum.
    #[error("this address has reached its limit of {0} agent connections")]
    PerIp(usize),
    /// This name holds its maximum.
    #[error("this name has reached its limit of {0} agent connections")]
    PerName(usize),
    /// Another token holds the name: its agent is connected, or left less than the grace ago.
    #[error(
        "the name is held by another token (its agent is connected or left less than the grace period ago)"
    )]
    Taken,
}

impl ReserveError {
    /// `409` for a name held by another token, `503` when the whole relay is full, `429` for
    /// this address's or this name's share (both with `Retry-After`).
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ReserveError::Taken => StatusCode::CONFLICT,
            ReserveError::TooManyAgents(_) => StatusCode::SERVICE_UNAVAILABLE,
            ReserveError::PerIp(_) | ReserveError::PerName(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// Why no connection was found for a public request (for the name it carries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CheckoutError {
    /// No agent holds the name (and none did within the grace period).
    #[error("no agent is connected for the name {0:?}")]
    Unknown(String),
    /// The name has had no connection for longer than the reconnect window (or lost its last
    /// one while the request waited, and none came back within the window).
    #[error(
        "the agent for {0:?} is offline: it has no connection to the relay (it may be restarting)"
    )]
    Offline(String),
    /// Too many requests are already waiting for this name.
    #[error("too many requests waiting for {0:?}")]
    QueueFull(String),
    /// The name has connections, but none became idle before the deadline.
    #[error("no connection of {0:?} became free in time")]
    Timeout(String),
    /// An upgrade needs an HTTP/1.1 connection, or an HTTP/2 one whose agent allowed RFC 8441
    /// extended CONNECT, and the agent has neither (decisions D85).
    #[error(
        "the agent for {0:?} has no HTTP/1.1 connection, and its HTTP/2 connections do not \
         allow extended CONNECT (RFC 8441 SETTINGS_ENABLE_CONNECT_PROTOCOL): an upgrade \
         (WebSocket) cannot reach it"
    )]
    NeedsH1(String),
}

impl CheckoutError {
    /// `404` for a name nobody holds, `503` (with `Retry-After`) for the others.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            CheckoutError::Unknown(_) => StatusCode::NOT_FOUND,
            CheckoutError::Offline(_) | CheckoutError::QueueFull(_) | CheckoutError::Timeout(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            CheckoutError::NeedsH1(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// What `/agents` says about a name's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NameState {
    /// At least one agent connection is alive (idle or busy).
    Connected,
    /// No connection, for less than the reconnect window: requests are held.
    Reconnecting,
    /// No connection for longer than the reconnect window: requests get 503 at once until the
    /// grace ends.
    Offline,
}

/// What `/agents` shows for one name.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NameStats {
    /// The agent name.
    pub name: String,
    /// Live reversed connections.
    pub connections: usize,
    /// Of those, parked and idle.
    pub idle: usize,
    /// Of those, carrying a request (or a tunnel).
    pub busy: usize,
    /// Public requests waiting for a connection.
    pub waiting: usize,
    /// Distinct agent addresses.
    pub peers: Vec<String>,
    /// Connected, reconnecting or offline.
    pub state: NameState,
    /// Connections running HTTP/2 (`ptth` with `ALPN: h2`); the others are HTTP/1.1.
    pub h2_connections: usize,
    /// Streams open on them.
    pub h2_streams: usize,
}

/// An entry in the sweeper's queue: look at `slot` again at `at`.
struct Expiry {
    at: Instant,
    slot: Arc<Slot>,
}

impl PartialEq for Expiry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Expiry {}
impl PartialOrd for Expiry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Expiry {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.at.cmp(&other.at)
    }
}

/// Names, connections and limits.
pub(crate) struct Registry {
    names: Mutex<HashMap<String, Arc<Slot>>>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    next_id: AtomicU64,
    /// The relay's configuration: the counts' limits, the grace and the reconnect window.
    config: Arc<Config>,
    /// Bumped on every pool change, so tests and admin can wait for a state.
    changed: watch::Sender<u64>,
    /// When names without connections next change phase, earliest first (a min-heap). Each
    /// slot has at most one live entry (`SlotState::queued`); a stale one is left behind only
    /// when a slot needs an earlier look than it had queued, which takes a reconnect after at
    /// least a reconnect window offline, so there are at most about grace / window of them per
    /// name, each gone by its deadline.
    expiries: Mutex<BinaryHeap<Reverse<Expiry>>>,
    /// Wakes the sweeper when an entry earlier than all others is queued.
    expiry_added: Notify,
    /// Parked connections whose streams became readable, for the sweeper.
    woken: Arc<Woken>,
    /// Told when a name is forgotten (its series go).
    metrics: Arc<Metrics>,
}

impl Registry {
    pub(crate) fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Arc<Registry> {
        Arc::new(Registry {
            names: Mutex::default(),
            per_ip: Mutex::default(),
            total: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            config,
            changed: watch::Sender::new(0),
            expiries: Mutex::default(),
            expiry_added: Notify::new(),
            woken: Arc::default(),
            metrics,
        })
    }

    fn expiries(&self) -> MutexGuard<'_, BinaryHeap<Reverse<Expiry>>> {
        self.expiries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn names(&self) -> MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        // Only tests and admin waiters subscribe; without them the notification is pure cost on
        // every checkout and park.
        if self.changed.receiver_count() > 0 {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Wake the watchers ([`Registry::subscribe`]) for a change outside the pool (a public
    /// connection counted or gone).
    pub(crate) fn notify(&self) {
        self.bump();
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Count a new connection for `name` from `peer` (over `proto`, for the log) before
    /// answering the claim.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        name: &str,
        owner: Option<Secret>,
        peer: SocketAddr,
        proto: &'static str,
    ) -> Result<Reservation, ReserveError> {
        let l = &self.config;
        if self.total.fetch_add(1, Ordering::AcqRel) >= l.max_agents {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(ReserveError::TooManyAgents(l.max_agents));
        }
        let release_total = || {
            self.total.fetch_sub(1, Ordering::AcqRel);
        };
        {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(peer.ip()).or_default();
            if *n >= l.max_per_ip {
                release_total();
                return Err(ReserveError::PerIp(l.max_per_ip));
            }
            *n += 1;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Both locks, names first (the only order used), so a slot is never collected while a
        // connection is being added to it.
        let mut names = self.names();
        let slot = names
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    name: name.to_string(),
                    state: Mutex::default(),
                })
            })
            .clone();
        let mut first = false;
        let refused = {
            let mut st = slot.lock();
            let phase = st.phase(l, Instant::now());
            let refused = if phase != Phase::Gone && st.owner != owner {
                Some(ReserveError::Taken)
            } else if st.conns.len() >= l.max_per_name {
                Some(ReserveError::PerName(l.max_per_name))
            } else {
                first = st.conns.is_empty();
                st.conns.insert(id, peer);
                st.owner = owner;
                st.empty_since = None;
                None
            };
            // A slot created for a refused claim has never had a connection: nothing would
            // ever expire it.
            if refused.is_some() && st.conns.is_empty() && st.empty_since.is_none() {
                drop(st);
                names.remove(name);
            }
            refused
        };
        drop(names);
        if let Some(e) = refused {
            self.release_ip(peer.ip());
            release_total();
            return Err(e);
        }
        self.bump();
        Ok(Reservation {
            registry: self.clone(),
            slot,
            id,
            peer,
            proto,
            first,
            queue_wait: false,
            one_shot: false,
        })
    }

    fn release_ip(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    /// Take an idle, live HTTP/1.1 connection for `name`, waiting for one until `deadline`.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        name: &str,
        deadline: Instant,
    ) -> Result<AgentConn, CheckoutError> {
        match self.lease(name, deadline, Want::H1).await? {
            Leased::H1(conn) => Ok(conn),
            Leased::H2(_) => Err(CheckoutError::NeedsH1(name.to_string())),
        }
    }

    /// A connection for one request to `name`: a stream on its least busy HTTP/2 connection
    /// (unless `want` is [`Want::H1`]), else an idle HTTP/1.1 connection, waiting for either
    /// until `deadline`.
    pub(crate) async fn lease(
        self: &Arc<Self>,
        name: &str,
        deadline: Instant,
        want: Want,
    ) -> Result<Leased, CheckoutError> {
        let slot = self
            .names()
            .get(name)
            .cloned()
            .ok_or_else(|| CheckoutError::Unknown(name.to_string()))?;
        // Dead connections are dropped after the lock is released: dropping one releases its
        // reservation, which takes the same lock.
        let mut dead = Vec::new();
        let mut rx = {
            let mut st = slot.lock();
            if want == Want::Any
                && let Some(lease) = self.h2_lease(&mut st, false)
            {
                drop(st);
                self.bump();
                return Ok(Leased::H2(lease));
            }
            while let Some(mut conn) = st.idle.pop_front() {
                if !conn.is_alive() {
                    dead.push(conn);
                    continue;
                }
                drop(st);
                drop(dead);
                self.bump();
                return Ok(Leased::H1(conn));
            }
            if want == Want::Upgrade
                && let Some(lease) = self.h2_lease(&mut st, true)
            {
                drop(st);
                drop(dead);
                self.bump();
                return Ok(Leased::H2(lease));
            }
            if want != Want::Any && !st.h2.is_empty() && st.conns.len() == st.h2.len() {
                drop(st);
                drop(dead);
                return Err(CheckoutError::NeedsH1(name.to_string()));
            }
            // Connected or reconnecting: wait. The sweeper lets go of the waiters when the
            // reconnect window ends without a connection; forgetting a name is its job too.
            let refused = match st.phase(&self.config, Instant::now()) {
                Phase::Connected | Phase::Reconnecting(_) => None,
                Phase::Offline(_) => Some(CheckoutError::Offline(name.to_string())),
                Phase::Gone => Some(CheckoutError::Unknown(name.to_string())),
            };
            if let Some(e) = refused {
                drop(st);
                drop(dead);
                return Err(e);
            }
            if st.waiters.len() >= self.config.max_waiting {
                st.waiters.retain(|w| !w.is_closed());
                if st.waiters.len() >= self.config.max_waiting {
                    drop(st);
                    drop(dead);
                    return Err(CheckoutError::QueueFull(name.to_string()));
                }
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(Waiter { want, tx });
            rx
        };
        drop(dead);
        self.bump();
        // Not served: the name is offline if it has no connection now (the sweeper dropped
        // the waiters at the end of the reconnect window, or the deadline came first), busy
        // otherwise.
        let unserved = || {
            if slot.lock().conns.is_empty() {
                CheckoutError::Offline(name.to_string())
            } else {
                CheckoutError::Timeout(name.to_string())
            }
        };
        let got = match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(Leased::H2(_))) if want == Want::H1 => {
                Err(CheckoutError::NeedsH1(name.to_string()))
            }
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(_)) => Err(unserved()),
            Err(_) => {
                // A connection handed over just as the deadline passed must not be lost.
                rx.close();
                rx.try_recv().map_err(|_| unserved())
            }
        };
        self.bump();
        got
    }

    /// A stream on the slot's HTTP/2 connection with the fewest open streams, if it has a live
    /// one (that allowed extended CONNECT, with `connect`).
    fn h2_lease(self: &Arc<Self>, st: &mut SlotState, connect: bool) -> Option<H2Lease> {
        let entry = st
            .h2
            .iter()
            .filter(|e| !e.client.is_closed() && (!connect || e.connect.enabled()))
            .min_by_key(|e| e.open.load(Ordering::Acquire))?;
        entry.open.fetch_add(1, Ordering::AcqRel);
        Some(H2Lease {
            client: entry.client.clone(),
            queue_wait: entry.queue_wait,
            connect: entry.connect.clone(),
            open: entry.open.clone(),
            registry: self.clone(),
        })
    }

    /// Add an HTTP/2 connection to its reservation's name: it serves the requests waiting there
    /// at once, and later ones beside the name's other connections. It stays until
    /// [`Registry::retire_h2`] or until its reservation is dropped.
    /// `connect` is what the agent's first SETTINGS says about extended CONNECT.
    pub(crate) fn add_h2(
        self: &Arc<Self>,
        reservation: &Reservation,
        client: H2Client,
        connect: ConnectProtocol,
    ) {
        let slot = &reservation.slot;
        {
            let mut st = slot.lock();
            st.h2.push(H2Entry {
                id: reservation.id,
                client,
                open: Arc::new(AtomicUsize::new(0)),
                queue_wait: reservation.queue_wait,
                connect,
            });
            // Every waiter that can use HTTP/2 is served now; the others keep their places.
            let waiters: Vec<Waiter> = st.waiters.drain(..).collect();
            for w in waiters {
                if w.is_closed() {
                    continue;
                }
                let lease = match w.want {
                    Want::H1 => None,
                    Want::Any | Want::Upgrade => self.h2_lease(&mut st, false),
                };
                match lease {
                    // A waiter that went away in between drops its lease, which only counts
                    // down.
                    Some(lease) => drop(w.tx.send(Leased::H2(lease))),
                    None => st.waiters.push_back(w),
                }
            }
        }
        self.bump();
    }

    /// Take a connection's HTTP/2 sender out of its name: no new stream goes to it. Its open
    /// streams finish; once the last sender clone is dropped the client sends GOAWAY (the
    /// relay's drain).
    pub(crate) fn retire_h2(&self, reservation: &Reservation) {
        reservation
            .slot
            .lock()
            .h2
            .retain(|e| e.id != reservation.id);
        self.bump();
    }

    /// Queue a look at `slot` at `at`, unless one at or before `at` is queued already.
    fn schedule(&self, slot: &Arc<Slot>, st: &mut SlotState, at: Instant) {
        if st.queued.is_some_and(|q| q <= at) {
            return;
        }
        st.queued = Some(at);
        let earliest = {
            let mut q = self.expiries();
            let earliest = q.peek().is_none_or(|e| at < e.0.at);
            q.push(Reverse(Expiry {
                at,
                slot: slot.clone(),
            }));
            earliest
        };
        if earliest {
            // `notify_one` keeps the wakeup if the sweeper is not waiting yet.
            self.expiry_added.notify_one();
        }
    }

    /// Move names without connections through their phases on time, and drop the parked
    /// connections whose agents closed them, until `stop`: the relay's one timer for every
    /// name and its one watcher of every parked stream.
    pub(crate) async fn sweep(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let next = self.expiries().peek().map(|e| e.0.at);
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.expiry_added.notified() => continue,
                () = self.woken.notify.notified() => {
                    self.reap();
                    continue;
                }
                () = due => {}
            }
            self.expire_due(Instant::now());
        }
    }

    /// Handle every queued entry due at `now`.
    fn expire_due(&self, now: Instant) {
        let mut changed = false;
        loop {
            let entry = {
                let mut q = self.expiries();
                match q.peek() {
                    Some(e) if e.0.at <= now => q.pop().map(|e| e.0),
                    _ => None,
                }
            };
            let Some(entry) = entry else { break };
            changed |= self.expire(entry, now);
        }
        if changed {
            self.bump();
        }
    }

    /// One entry of the sweeper's queue: end the reconnect window (the held requests are let
    /// go and answered "offline"), or forget the name at the end of its grace. Whether
    /// anything changed.
    fn expire(&self, Expiry { at, slot }: Expiry, now: Instant) -> bool {
        let gone = {
            let mut st = slot.lock();
            if st.queued != Some(at) {
                return false;
            }
            st.queued = None;
            match st.phase(&self.config, now) {
                Phase::Connected => return false,
                Phase::Reconnecting(end) => {
                    self.schedule(&slot, &mut st, end);
                    return false;
                }
                Phase::Offline(end) => {
                    // Dropping a waiter's sender wakes its request, which answers offline.
                    st.waiters.clear();
                    self.schedule(&slot, &mut st, end);
                    false
                }
                Phase::Gone => true,
            }
        };
        if gone {
            self.collect(&slot, now);
        }
        true
    }

    /// Forget `slot` if its grace is over (and it is still the slot of its name).
    fn collect(&self, slot: &Arc<Slot>, now: Instant) {
        let mut names = self.names();
        let ours = names.get(&slot.name).is_some_and(|s| Arc::ptr_eq(s, slot));
        if ours && slot.lock().phase(&self.config, now) == Phase::Gone {
            names.remove(&slot.name);
            drop(names);
            tracing::debug!(name = %slot.name, "grace over: the name is forgotten");
            self.metrics.forget(&slot.name);
        }
    }

    /// Put a connection back after an exchange (or for the first time): to the first waiter,
    /// else to the idle queue under a watcher.
    pub(crate) fn park(self: &Arc<Self>, mut conn: AgentConn) {
        let slot = conn.reservation.slot.clone();
        let id = conn.reservation.id;
        {
            let mut st = slot.lock();
            while let Some(w) = st.waiters.pop_front() {
                match w.tx.send(Leased::H1(conn)) {
                    Ok(()) => {
                        drop(st);
                        self.bump();
                        return;
                    }
                    Err(Leased::H1(c)) => conn = c,
                    Err(Leased::H2(_)) => unreachable!("an HTTP/1.1 connection was sent"),
                }
            }
            // Polled under the slot's lock: a waiter that came in between would otherwise wait
            // beside an idle connection.
            if !conn.watch(&self.woken) {
                drop(st);
                tracing::debug!(name = %slot.name, id, "parked connection closed by the agent");
                drop(conn);
                self.bump();
                return;
            }
            st.idle.push_back(conn);
        }
        self.bump();
    }

    /// Drop the parked connections whose streams became readable (closed by the agent, or
    /// bytes nobody asked for). A wake that finds its connection checked out, or alive after
    /// all, changes nothing; a live one keeps being watched.
    fn reap(&self) {
        let woken =
            std::mem::take(&mut *self.woken.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let mut changed = false;
        for (slot, id) in woken {
            let Some(slot) = slot.upgrade() else { continue };
            let dead = {
                let mut st = slot.lock();
                let Some(at) = st.idle.iter().position(|c| c.reservation.id == id) else {
                    continue;
                };
                if st.idle[at].watch(&self.woken) {
                    continue;
                }
                st.idle.remove(at)
            };
            // Outside the lock: dropping a connection releases its reservation, which locks.
            tracing::debug!(name = %slot.name, id, "parked connection closed by the agent");
            drop(dead);
            changed = true;
        }
        if changed {
            self.bump();
        }
    }

    /// Drop every parked connection and waiter (the relay is stopping).
    pub(crate) fn close_all(&self) {
        let slots: Vec<Arc<Slot>> = self.names().values().cloned().collect();
        for slot in slots {
            let parked: Vec<AgentConn> = {
                let mut st = slot.lock();
                st.waiters.clear();
                st.h2.clear();
                st.idle.drain(..).collect()
            };
            // Outside the lock: dropping a connection releases its reservation, which locks.
            drop(parked);
        }
        self.bump();
    }

    /// Idle connections of `name`.
    pub(crate) fn idle(&self, name: &str) -> usize {
        self.names().get(name).map_or(0, |s| s.lock().idle.len())
    }

    /// Per-name numbers for admin and tests.
    pub(crate) fn stats(&self) -> Vec<NameStats> {
        let slots: Vec<Arc<Slot>> = self.names().values().cloned().collect();
        let now = Instant::now();
        let mut out: Vec<NameStats> = slots
            .iter()
            .map(|slot| {
                let st = slot.lock();
                let mut peers: Vec<String> =
                    st.conns.values().map(|a| a.ip().to_string()).collect();
                peers.sort();
                peers.dedup();
                let state = match st.phase(&self.config, now) {
                    Phase::Connected => NameState::Connected,
                    Phase::Reconnecting(_) => NameState::Reconnecting,
                    // A name past its grace is only shown until the sweeper gets to it.
                    Phase::Offline(_) | Phase::Gone => NameState::Offline,
                };
                NameStats {
                    name: slot.name.clone(),
                    connections: st.conns.len(),
                    idle: st.idle.len(),
                    busy: st.conns.len().saturating_sub(st.idle.len() + st.h2.len()),
                    h2_connections: st.h2.len(),
                    h2_streams: st.h2.iter().map(|e| e.open.load(Ordering::Acquire)).sum(),
                    waiting: st.waiters.iter().filter(|w| !w.is_closed()).count(),
                    peers,
                    state,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Whether `name` has a live connection here (a request for it is served here, not
    /// forwarded to another relay of the fleet).
    pub(crate) fn connected(&self, name: &str) -> bool {
        self.names()
            .get(name)
            .is_some_and(|s| !s.lock().conns.is_empty())
    }

    /// Every name this relay holds (connected, or in its grace), with the fingerprint of its
    /// owner's token (empty for anonymous agents): what the fleet's records say.
    pub(crate) fn owners(&self) -> Vec<(String, String)> {
        let slots: Vec<Arc<Slot>> = self.names().values().cloned().collect();
        let now = Instant::now();
        slots
            .iter()
            .filter_map(|slot| {
                let st = slot.lock();
                (st.phase(&self.config, now) != Phase::Gone).then(|| {
                    let owner = st.owner.as_ref().map(Secret::fingerprint);
                    (slot.name.clone(), owner.unwrap_or_default())
                })
            })
            .collect()
    }

    /// All agent connections.
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// A counted agent connection; dropping it (with its `AgentConn`) releases the count.
pub(crate) struct Reservation {
    registry: Arc<Registry>,
    slot: Arc<Slot>,
    id: u64,
    peer: SocketAddr,
    proto: &'static str,
    /// The name had no connection before this one.
    first: bool,
    /// The agent asked for `PTTH-Queue-Wait` on the requests this connection carries (its
    /// claim said `PTTH-Timing: queue-wait`, decision D66).
    pub(crate) queue_wait: bool,
    /// The connection carries one exchange and is dropped after it, not parked again (a
    /// long-poll virtual connection, `super::long_poll`).
    pub(crate) one_shot: bool,
}

impl Reservation {
    /// Whether the name had no connection before this one.
    pub(crate) fn first(&self) -> bool {
        self.first
    }

    /// Undo a claim that the fleet refused (another token holds the name on another relay):
    /// the place in the counts goes, and so does this relay's hold on the name when this was
    /// its only connection, so that the name's real owner can still claim it here.
    pub(crate) fn cancel(self) {
        let (registry, slot) = (self.registry.clone(), self.slot.clone());
        drop(self);
        let mut names = registry.names();
        let ours = names.get(&slot.name).is_some_and(|s| Arc::ptr_eq(s, &slot));
        let mut st = slot.lock();
        if ours && st.conns.is_empty() {
            st.owner = None;
            st.empty_since = None;
            st.waiters.clear();
            drop(st);
            names.remove(&slot.name);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        {
            let mut st = self.slot.lock();
            st.conns.remove(&self.id);
            st.h2.retain(|e| e.id != self.id);
            if st.conns.is_empty() {
                tracing::info!(
                    name = %self.slot.name,
                    peer = %self.peer,
                    proto = self.proto,
                    "the name's last agent connection left"
                );
                // The owner keeps the name through the grace; the sweeper takes it from here.
                // Its first look is at the end of the window, even when that is now: the
                // requests waiting for a connection are let go then.
                let now = Instant::now();
                st.empty_since = Some(now);
                let end = now + window(&self.registry.config);
                self.registry.schedule(&self.slot, &mut st, end);
            }
        }
        self.registry.release_ip(self.peer.ip());
        self.registry.total.fetch_sub(1, Ordering::AcqRel);
        self.registry.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);
    const WINDOW: Duration = Duration::from_secs(5);

    fn registry(max_per_name: usize) -> Arc<Registry> {
        Registry::new(
            Arc::new(Config {
                max_agents: usize::MAX,
                max_per_name,
                max_per_ip: usize::MAX,
                max_waiting: 16,
                grace: GRACE,
                reconnect_window: WINDOW,
                ..Config::default()
            }),
            Arc::new(Metrics::new(None)),
        )
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    /// The sweeper's queue holds about one entry per name without connections, however often
    /// agents come and go, and is empty once their grace has passed.
    #[tokio::test(start_paused = true)]
    async fn expiry_queue_stays_bounded() {
        let r = registry(16);
        // A name whose agent reconnects at once, over and over: one entry.
        for _ in 0..100 {
            drop(r.reserve("flap", None, peer(), "http").unwrap());
        }
        assert_eq!(r.expiries().len(), 1);
        // Reconnecting each time after the window: a stale entry per cycle, each gone by its
        // deadline, so never more than about grace / window.
        for _ in 0..100 {
            tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
            r.expire_due(Instant::now());
            drop(r.reserve("flap", None, peer(), "http").unwrap());
        }
        let bound = (GRACE.as_secs() / WINDOW.as_secs()) as usize + 2;
        assert!(r.expiries().len() <= bound, "{}", r.expiries().len());
        // One-shot names: all forgotten after the grace, nothing left behind.
        for i in 0..1000 {
            drop(r.reserve(&format!("n{i}"), None, peer(), "http").unwrap());
        }
        assert_eq!(r.stats().len(), 1001);
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        r.expire_due(Instant::now());
        assert_eq!(r.stats().len(), 0);
        assert_eq!(r.expiries().len(), 0);
        assert_eq!(r.total(), 0);
    }

    /// A claim the fleet refused leaves this relay no hold on the name (D93), and the names
    /// held are listed with their owners' fingerprints for the fleet's records.
    #[tokio::test]
    async fn a_claim_cancelled_by_the_fleet_leaves_no_hold() {
        let r = registry(16);
        let (t1, t2) = (Secret::new("t1"), Secret::new("t2"));
        let first = r.reserve("app", Some(t1), peer(), "http").unwrap();
        assert!(r.connected("app"));
        assert_eq!(
            r.owners(),
            vec![("app".into(), Secret::new("t1").fingerprint())]
        );
        first.cancel();
        assert!(!r.connected("app"));
        assert!(r.stats().is_empty());
        assert!(r.owners().is_empty());
        assert_eq!(r.total(), 0);
        let kept = r.reserve("app", Some(t2), peer(), "http").unwrap();
        assert!(kept.first());
        // A second connection's cancel leaves the name to the first.
        let second = r
            .reserve("app", Some(Secret::new("t2")), peer(), "http")
            .unwrap();
        second.cancel();
        assert!(r.connected("app"));
        assert_eq!(r.owners().len(), 1);
    }

    /// A refused claim on a new name leaves no name behind (nothing would expire it).
    #[tokio::test]
    async fn a_refused_claim_leaves_no_name() {
        let r = registry(0);
        assert_eq!(
            r.reserve("app", None, peer(), "http").err(),
            Some(ReserveError::PerName(0))
        );
        assert!(r.stats().is_empty());
        assert_eq!(r.expiries().len(), 0);
    }

    /// The phases of a name after its last connection left, and who may claim it.
    #[tokio::test(start_paused = true)]
    async fn phases_and_the_owner_after_the_last_connection_left() {
        let r = registry(16);
        let (t1, t2) = (Secret::new("t1"), Secret::new("t2"));
        drop(r.reserve("app", Some(t1.clone()), peer(), "http").unwrap());
        let state = |r: &Registry| r.stats()[0].state;
        assert_eq!(state(&r), NameState::Reconnecting);
        assert_eq!(
            r.reserve("app", Some(t2.clone()), peer(), "http").err(),
            Some(ReserveError::Taken)
        );
        tokio::time::advance(WINDOW).await;
        r.expire_due(Instant::now());
        assert_eq!(state(&r), NameState::Offline);
        let far = Instant::now() + GRACE;
        assert_eq!(
            r.checkout("app", far).await.err(),
            Some(CheckoutError::Offline("app".into()))
        );
        assert_eq!(
            r.reserve("app", Some(t2.clone()), peer(), "http").err(),
            Some(ReserveError::Taken)
        );
        tokio::time::advance(GRACE - WINDOW).await;
        r.expire_due(Instant::now());
        assert!(r.stats().is_empty());
        assert_eq!(
            r.checkout("app", far).await.err(),
            Some(CheckoutError::Unknown("app".into()))
        );
        // Past the grace the name is free for another token.
        assert!(r.reserve("app", Some(t2), peer(), "http").is_ok());
    }
}
