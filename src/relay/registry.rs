//! Agent names and their parked reversed connections.
//!
//! Each name has a `Slot` with its own mutex: the global map is locked only to find the slot
//! (and when agents arrive or leave), so public requests for different names never contend.
//! A connection is counted from the moment its claim is accepted (`Reservation`) until it is
//! dropped; the reservation travels inside the `AgentConn`, so whoever owns the connection
//! owns its place in the counts.
//!
//! A parked connection is only its stream: no HTTP client, no buffers. A small watcher task
//! per parked connection waits for the stream to become readable; an agent that closes (or
//! sends anything unasked) is dropped at once. A public request takes the stream with
//! `Registry::checkout`, runs one exchange on it and gives it back with `Registry::park`.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

use super::auth::Secret;

/// Body type of requests forwarded to agents.
pub type ForwardBody = BoxBody<Bytes, hyper::Error>;

/// A byte stream to an agent (plain TCP or TLS).
pub trait AgentStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AgentStream for T {}

/// A flipped stream to an agent, and its place in the counts (released when dropped).
pub(crate) struct AgentConn {
    pub(crate) io: Box<dyn AgentStream>,
    pub(crate) reservation: Reservation,
}

impl AgentConn {
    /// Whether the stream is still open with nothing unread: a closed stream, an error or
    /// unsolicited bytes all mean the connection must not carry a request. Does not wait.
    pub(crate) fn is_alive(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }
}

/// Pool limits (copied from [`super::Config`]).
#[derive(Debug, Clone)]
pub(crate) struct PoolLimits {
    pub max_agents: usize,
    pub max_per_name: usize,
    pub max_per_ip: usize,
    pub max_waiters_per_name: usize,
    pub grace: Duration,
}

/// Where a parked connection waits; its watcher and a checkout race to take it.
type Cell = Arc<Mutex<Option<AgentConn>>>;

/// An idle reversed connection in a slot's queue.
struct Parked {
    id: u64,
    cell: Cell,
    watcher: AbortHandle,
}

impl Parked {
    /// The connection, unless the watcher found it dead first.
    fn take(self) -> Option<AgentConn> {
        self.watcher.abort();
        self.cell.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[derive(Default)]
struct SlotState {
    /// Every live connection of this name, with the agent's address.
    conns: HashMap<u64, SocketAddr>,
    idle: VecDeque<Parked>,
    waiters: VecDeque<oneshot::Sender<AgentConn>>,
    /// The token that holds the name while any of its connections is alive.
    owner: Option<Secret>,
    empty_since: Option<Instant>,
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
pub enum ReserveError {
    /// The relay holds its maximum number of agent connections.
    #[error("the relay has reached its limit of {0} agent connections")]
    TooManyAgents(usize),
    /// This peer address holds its maximum.
    #[error("this address has reached its limit of {0} agent connections")]
    PerIp(usize),
    /// This name holds its maximum.
    #[error("this name has reached its limit of {0} agent connections")]
    PerName(usize),
    /// Another token holds the name.
    #[error("the name is held by another agent")]
    Taken,
}

/// Why no connection was found for a public request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckoutError {
    /// No agent holds the name (and none did within the grace period).
    Unknown,
    /// Too many requests are already waiting for this name.
    QueueFull,
    /// No connection became idle before the deadline.
    Timeout,
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
}

/// Names, connections and limits.
pub(crate) struct Registry {
    names: Mutex<HashMap<String, Arc<Slot>>>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    next_id: AtomicU64,
    limits: PoolLimits,
    /// Bumped on every pool change, so tests and admin can wait for a state.
    changed: watch::Sender<u64>,
}

impl Registry {
    pub(crate) fn new(limits: PoolLimits) -> Arc<Registry> {
        Arc::new(Registry {
            names: Mutex::default(),
            per_ip: Mutex::default(),
            total: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            limits,
            changed: watch::Sender::new(0),
        })
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

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Count a new connection for `name` before answering the claim.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        name: &str,
        owner: Option<Secret>,
        peer: SocketAddr,
    ) -> Result<Reservation, ReserveError> {
        let l = &self.limits;
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
        let refused = {
            let mut st = slot.lock();
            if !st.conns.is_empty() && st.owner != owner {
                Some(ReserveError::Taken)
            } else if st.conns.len() >= l.max_per_name {
                Some(ReserveError::PerName(l.max_per_name))
            } else {
                st.conns.insert(id, peer);
                st.owner = owner;
                st.empty_since = None;
                None
            }
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
            ip: peer.ip(),
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

    /// Take an idle, live connection for `name`, waiting for one until `deadline`.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<AgentConn, CheckoutError> {
        let slot = self
            .names()
            .get(name)
            .cloned()
            .ok_or(CheckoutError::Unknown)?;
        // Dead connections are dropped after the lock is released: dropping one releases its
        // reservation, which takes the same lock.
        let mut dead = Vec::new();
        let mut rx = {
            let mut st = slot.lock();
            while let Some(p) = st.idle.pop_front() {
                let Some(mut conn) = p.take() else { continue };
                if !conn.is_alive() {
                    dead.push(conn);
                    continue;
                }
                drop(st);
                drop(dead);
                self.bump();
                return Ok(conn);
            }
            let gone = st.conns.is_empty()
                && st
                    .empty_since
                    .is_none_or(|t| t.elapsed() >= self.limits.grace);
            if gone {
                drop(st);
                drop(dead);
                self.collect(name);
                return Err(CheckoutError::Unknown);
            }
            if st.waiters.len() >= self.limits.max_waiters_per_name {
                st.waiters.retain(|w| !w.is_closed());
                if st.waiters.len() >= self.limits.max_waiters_per_name {
                    drop(st);
                    drop(dead);
                    return Err(CheckoutError::QueueFull);
                }
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(tx);
            rx
        };
        drop(dead);
        self.bump();
        let got = match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(_)) => Err(CheckoutError::Timeout),
            Err(_) => {
                // A connection handed over just as the deadline passed must not be lost.
                rx.close();
                rx.try_recv().map_err(|_| CheckoutError::Timeout)
            }
        };
        self.bump();
        got
    }

    /// Forget `name` if it has had no agent for the grace period.
    fn collect(&self, name: &str) {
        let mut names = self.names();
        let empty = names.get(name).is_some_and(|slot| {
            let st = slot.lock();
            st.conns.is_empty() && st.waiters.iter().all(|w| w.is_closed())
        });
        if empty {
            names.remove(name);
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
                match w.send(conn) {
                    Ok(()) => {
                        drop(st);
                        self.bump();
                        return;
                    }
                    Err(c) => conn = c,
                }
            }
            let cell: Cell = Arc::new(Mutex::new(Some(conn)));
            let watcher = tokio::spawn(watch_parked(self.clone(), slot.clone(), id, cell.clone()));
            st.idle.push_back(Parked {
                id,
                cell,
                watcher: watcher.abort_handle(),
            });
        }
        self.bump();
    }

    /// Drop every parked connection and waiter (the relay is stopping).
    pub(crate) fn close_all(&self) {
        let slots: Vec<Arc<Slot>> = self.names().values().cloned().collect();
        for slot in slots {
            let parked: Vec<Parked> = {
                let mut st = slot.lock();
                st.waiters.clear();
                st.idle.drain(..).collect()
            };
            // Outside the lock: dropping a connection releases its reservation, which locks.
            for p in parked {
                drop(p.take());
            }
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
        let mut out: Vec<NameStats> = slots
            .iter()
            .map(|slot| {
                let st = slot.lock();
                let mut peers: Vec<String> =
                    st.conns.values().map(|a| a.ip().to_string()).collect();
                peers.sort();
                peers.dedup();
                NameStats {
                    name: slot.name.clone(),
                    connections: st.conns.len(),
                    idle: st.idle.len(),
                    busy: st.conns.len().saturating_sub(st.idle.len()),
                    waiting: st.waiters.iter().filter(|w| !w.is_closed()).count(),
                    peers,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
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
    ip: IpAddr,
}

impl Reservation {
    /// The connection's registry.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        {
            let mut st = self.slot.lock();
            st.conns.remove(&self.id);
            st.idle.retain(|p| p.id != self.id);
            if st.conns.is_empty() {
                st.owner = None;
                st.empty_since = Some(Instant::now());
            }
        }
        self.registry.release_ip(self.ip);
        self.registry.total.fetch_sub(1, Ordering::AcqRel);
        self.registry.bump();
    }
}

/// Wait until a parked connection becomes readable (closed, failed, or bytes nobody asked
/// for), then drop it. A checkout that takes the connection first aborts this task.
async fn watch_parked(registry: Arc<Registry>, slot: Arc<Slot>, id: u64, cell: Cell) {
    poll_fn(|cx| {
        let mut guard = cell.lock().unwrap_or_else(|e| e.into_inner());
        let Some(conn) = guard.as_mut() else {
            return Poll::Ready(());
        };
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        match Pin::new(&mut conn.io).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(()),
        }
    })
    .await;
    let dead = cell.lock().unwrap_or_else(|e| e.into_inner()).take();
    if dead.is_some() {
        tracing::debug!(name = %slot.name, id, "parked connection closed by the agent");
        slot.lock().idle.retain(|p| p.id != id);
        drop(dead);
        registry.bump();
    }
}
