//! Agent names and their parked reversed connections.
//!
//! Each name has a [`Slot`] with its own mutex: the global map is locked only to find the slot
//! (and when agents arrive or leave), so public requests for different names never contend.
//! A connection is counted from the moment its claim is accepted ([`Reservation`]) until its
//! connection task ends; while it is idle it sits in the slot's queue as a [`Parked`] entry.
//! A public request takes one with [`Registry::checkout`] (holding in a bounded queue when none
//! is idle) and gives it back by dropping the [`Lease`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

use super::auth::Secret;
use crate::listener::ReversedClient;

/// Body type of requests forwarded to agents.
pub type ForwardBody = BoxBody<Bytes, hyper::Error>;

/// How long a connection given back while still finishing its exchange may take to become
/// ready again before it is dropped instead of parked.
const READY_AGAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Pool limits (copied from [`super::Config`]).
#[derive(Debug, Clone)]
pub(crate) struct PoolLimits {
    pub max_agents: usize,
    pub max_per_name: usize,
    pub max_per_ip: usize,
    pub max_waiters_per_name: usize,
    pub grace: Duration,
}

/// An idle reversed connection, ready for one request.
pub(crate) struct Parked {
    id: u64,
    pub(crate) client: ReversedClient<ForwardBody>,
    conn: AbortHandle,
}

impl Parked {
    /// Close the connection for good (its task ends and its reservation is released).
    pub(crate) fn kill(self) {
        self.conn.abort();
    }
}

#[derive(Default)]
struct SlotState {
    /// Every live connection of this name, with the agent's address.
    conns: HashMap<u64, SocketAddr>,
    idle: VecDeque<Parked>,
    waiters: VecDeque<oneshot::Sender<Parked>>,
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
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
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

    /// Take an idle connection for `name`, waiting for one until `deadline`.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Lease, CheckoutError> {
        let slot = self
            .names()
            .get(name)
            .cloned()
            .ok_or(CheckoutError::Unknown)?;
        let mut rx = {
            let mut st = slot.lock();
            while let Some(p) = st.idle.pop_front() {
                if p.client.is_closed() {
                    continue;
                }
                drop(st);
                self.bump();
                return Ok(Lease::new(self.clone(), slot, p));
            }
            let gone = st.conns.is_empty()
                && st
                    .empty_since
                    .is_none_or(|t| t.elapsed() >= self.limits.grace);
            if gone {
                drop(st);
                self.collect(name);
                return Err(CheckoutError::Unknown);
            }
            if st.waiters.len() >= self.limits.max_waiters_per_name {
                st.waiters.retain(|w| !w.is_closed());
                if st.waiters.len() >= self.limits.max_waiters_per_name {
                    return Err(CheckoutError::QueueFull);
                }
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(tx);
            rx
        };
        // `waiting` is part of the pool state (`stats`, `/agents`): announce it.
        self.bump();
        match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(p)) => Ok(Lease::new(self.clone(), slot, p)),
            Ok(Err(_)) => Err(CheckoutError::Timeout),
            Err(_) => {
                // A connection handed over just as the deadline passed must not be lost.
                rx.close();
                match rx.try_recv() {
                    Ok(p) => Ok(Lease::new(self.clone(), slot, p)),
                    Err(_) => Err(CheckoutError::Timeout),
                }
            }
        }
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

    /// Put a connection back: to the first waiter, else to the idle queue.
    fn checkin(self: &Arc<Self>, slot: Arc<Slot>, mut parked: Parked) {
        if parked.client.is_closed() {
            return parked.kill();
        }
        if !parked.client.is_ready() {
            // The exchange is still finishing (e.g. the request body's last chunk): wait for it
            // off the hot path, then park.
            let registry = self.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(READY_AGAIN_TIMEOUT, parked.client.ready()).await {
                    Ok(Ok(())) => registry.park(&slot, parked),
                    _ => parked.kill(),
                }
            });
            return;
        }
        self.park(&slot, parked);
    }

    fn park(&self, slot: &Slot, mut parked: Parked) {
        {
            let mut st = slot.lock();
            if !st.conns.contains_key(&parked.id) {
                return;
            }
            while let Some(w) = st.waiters.pop_front() {
                match w.send(parked) {
                    Ok(()) => return,
                    Err(p) => parked = p,
                }
            }
            st.idle.push_back(parked);
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

/// A counted agent connection; dropping it (when the connection task ends) releases the count.
pub(crate) struct Reservation {
    registry: Arc<Registry>,
    slot: Arc<Slot>,
    id: u64,
    ip: IpAddr,
}

impl Reservation {
    /// The connection is up: park it.
    pub(crate) fn park(&self, client: ReversedClient<ForwardBody>, conn: AbortHandle) {
        let parked = Parked {
            id: self.id,
            client,
            conn,
        };
        self.registry.park(&self.slot, parked);
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

/// A connection taken for one exchange. Dropping it parks the connection again.
pub(crate) struct Lease {
    registry: Arc<Registry>,
    slot: Arc<Slot>,
    parked: Option<Parked>,
}

impl Lease {
    fn new(registry: Arc<Registry>, slot: Arc<Slot>, parked: Parked) -> Lease {
        Lease {
            registry,
            slot,
            parked: Some(parked),
        }
    }

    /// The client to send on.
    pub(crate) fn client(&mut self) -> &mut ReversedClient<ForwardBody> {
        &mut self
            .parked
            .as_mut()
            .expect("lease holds a connection")
            .client
    }

    /// The connection must not be reused (dead, timed out, or half-way through an exchange).
    pub(crate) fn discard(mut self) {
        if let Some(p) = self.parked.take() {
            p.kill();
        }
    }

    /// Keep the connection out of the pool for good (it becomes a tunnel).
    pub(crate) fn detach(mut self) -> Parked {
        self.parked.take().expect("lease holds a connection")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(p) = self.parked.take() {
            self.registry.checkin(self.slot.clone(), p);
        }
    }
}
