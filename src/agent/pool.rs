//! The elastic pool: keeps `connections` idle parked connections ready, grows up to
//! `max_connections` while requests are in flight, and redials with backoff after failures.
//! With `ptth` and a relay that chooses `h2`, "enough connections" is a fixed number instead
//! (`h2_connections`): each connection carries many requests at once, so load does not grow it.
//!
//! Failures are counted per outage, not per connection: every connection remembers the
//! *epoch* it was dialled in (the number of failures counted so far), and a failure of a
//! connection dialled before the last counted failure belongs to that same failure. So a relay
//! restart that closes four parked connections, or refuses four redials, is one failure, and
//! while failing the pool probes with one connection at a time, each probe its own epoch.
//!
//! One supervisor task owns all the state; each connection is a task ([`super::conn`]) that
//! reports what happens to it ([`Event`]) over a channel. A connection counts as *busy* from the
//! first byte of a request until its response body is done (or dropped), and as *idle*
//! otherwise. Busy connections are counted in a shared [`Gauge`]; a request only wakes the
//! supervisor when the idle count it leaves may call for another connection.
//!
//! When stopping, the pool stops dialling, asks every connection to finish its exchange, and
//! after the drain timeout closes the ones still serving.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, info, warn};

use super::state::{AgentState, StateTx};

use super::config::{MAX_REDIRECTS, QUICK_CLOSE};
use super::conn::{Dialled, Event, Gauge, Outcome, Serve, Stop, connection};
use super::metrics::Metrics;
use super::target::Target;
use super::{AgentError, Config};

/// Where a connection is in its life, as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Dialing,
    Parked,
}

struct Pool {
    config: Arc<Config>,
    target: Target,
    conns: HashMap<u64, State>,
    /// How many of `conns` are in each state (indexed by `State as usize`), kept in step by
    /// [`Pool::set`] so that evaluating the pool costs O(1).
    counts: [usize; 2],
    gauge: Arc<Gauge>,
    next_id: u64,
    failures: u32,
    /// How many failures have been counted: a connection's failure counts only if none was
    /// counted since it was dialled.
    epoch: u64,
    redirects: u32,
    not_before: Instant,
    healthy_since: Option<Instant>,
    /// When the current outage began, if it began while the pool was healthy (then it is
    /// probed at the backoff's outage step); cleared when a connection parks.
    outage_since: Option<Instant>,
    /// When the service stopped being reachable: the first counted failure with no connection
    /// parked, after it had been reachable. Cleared (and logged) when a connection parks again.
    unreachable_since: Option<Instant>,
    announced: bool,
    /// Whether the relay chose `h2` for the connection that parked last (`None`: none has).
    h2: Option<bool>,
    /// The agent is shutting down: connections ending now are its own doing, not failures.
    stopping: bool,
    /// Where the agent stands, for [`super::Agent::state`].
    state: StateTx,
}

impl Pool {
    fn count(&self, s: State) -> usize {
        self.counts[s as usize]
    }

    /// Put connection `id` in state `to` (`None`: gone). Unknown ids are only added by `Some`.
    fn set(&mut self, id: u64, to: Option<State>) {
        let old = match to {
            Some(to) => self.conns.insert(id, to),
            None => self.conns.remove(&id),
        };
        if let Some(old) = old {
            self.counts[old as usize] -= 1;
        }
        if let Some(to) = to {
            self.counts[to as usize] += 1;
        }
        self.gauge
            .parked
            .store(self.count(State::Parked), Ordering::Relaxed);
        self.gauge
            .dialing
            .store(self.count(State::Dialing), Ordering::Relaxed);
        self.gauge.room.store(
            self.conns.len() < self.config.max_connections,
            Ordering::Relaxed,
        );
    }

    /// Whether another connection is wanted now (ignoring the backoff clock).
    fn wants_dial(&self) -> bool {
        let dialing = self.count(State::Dialing);
        let parked = self.conns.len() - dialing;
        if self.failures > 0 && parked == 0 && dialing > 0 {
            // The relay is failing: probe with one connection at a time.
            return false;
        }
        if self.config.protocol.negotiates_alpn() && self.h2 != Some(false) {
            // HTTP/2 (or not known yet, and offered first): a fixed number of connections,
            // busy or not, since each carries many requests at once (decisions D75).
            return self.conns.len() < self.config.h2_connections;
        }
        let idle = self
            .count(State::Parked)
            .saturating_sub(self.gauge.busy.load(Ordering::Relaxed));
        dialing + idle < self.config.connections && self.conns.len() < self.config.max_connections
    }

    /// A connection dialled in `epoch` failed: count it, unless a failure was counted since it
    /// was dialled (the same outage). A `Retry-After` (`at_least`) is honoured either way.
    /// Returns whether it was counted.
    fn fail(
        &mut self,
        why: &dyn std::fmt::Display,
        at_least: Option<Duration>,
        epoch: u64,
    ) -> bool {
        if self.stopping {
            debug!("{why} (while stopping: not a failure)");
            return false;
        }
        let now = Instant::now();
        let at_least = at_least.unwrap_or_default();
        if epoch != self.epoch {
            self.not_before = self.not_before.max(now + at_least);
            debug!(
                failures = self.failures,
                "{why} (the same outage: not counted again)"
            );
            return false;
        }
        self.reset_if_healthy(now);
        if self.failures == 0 && self.announced {
            // Connected and healthy until now: an outage, probed at the outage step.
            self.outage_since = Some(now);
        }
        self.healthy_since = None;
        if self.announced && self.count(State::Parked) == 0 {
            self.unreachable_since.get_or_insert(now);
        }
        self.epoch += 1;
        let backoff = &self.config.backoff;
        let outage = self.outage_since.map(|t| now.duration_since(t));
        self.failures = backoff.next_failures(self.failures, outage);
        let delay = backoff.delay_random(self.failures).max(at_least);
        self.not_before = self.not_before.max(now + delay);
        if self.unreachable_since.is_some() {
            self.state.set(AgentState::Reconnecting {
                public_url: self.config.public_url.clone(),
                failures: self.failures,
            });
        }
        self.gauge.metrics.failed();
        warn!(failures = self.failures, retry_in = ?delay, "{why}");
        true
    }

    fn reset_if_healthy(&mut self, now: Instant) {
        if self
            .healthy_since
            .is_some_and(|t| now.duration_since(t) >= self.config.backoff.healthy_period)
        {
            self.failures = 0;
        }
    }

    /// Returns an error when the agent must stop (the relay does not accept the credentials).
    fn on_event(&mut self, event: Event) -> Result<(), AgentError> {
        match event {
            Event::Parked { id, h2 } => {
                self.set(id, Some(State::Parked));
                self.gauge.metrics.connected();
                self.h2 = Some(h2);
                self.redirects = 0;
                self.outage_since = None;
                self.healthy_since.get_or_insert_with(Instant::now);
                self.state.set(AgentState::Connected {
                    public_url: self.config.public_url.clone(),
                });
                if !self.announced {
                    self.announced = true;
                    info!(
                        public_url = %self.config.public_url,
                        protocol = %self.config.protocol,
                        inner = if h2 { "h2" } else { "http/1.1" },
                        "connected to the relay: service reachable at {}",
                        self.config.public_url
                    );
                } else if let Some(since) = self.unreachable_since.take() {
                    self.gauge.metrics.reconnected();
                    // Whole milliseconds: the outage's length, not the clock's noise.
                    let outage = Duration::from_millis(since.elapsed().as_millis() as u64);
                    info!(
                        public_url = %self.config.public_url,
                        outage = %humantime::format_duration(outage),
                        "connected to the relay again: service reachable at {} after an outage of {}",
                        self.config.public_url,
                        humantime::format_duration(outage)
                    );
                }
            }
            // Only a wakeup: the loop looks at the gauge again.
            Event::Busy => {}
            Event::Ended { id, epoch, outcome } => {
                self.set(id, None);
                self.on_outcome(outcome, epoch)?;
            }
        }
        Ok(())
    }

    fn on_outcome(&mut self, outcome: Outcome, epoch: u64) -> Result<(), AgentError> {
        match outcome {
            Outcome::Closed { served, lived } => {
                if !served && lived < QUICK_CLOSE {
                    self.fail(
                        &format_args!("relay closed a parked connection after {lived:?}"),
                        None,
                        epoch,
                    );
                } else {
                    debug!(served, ?lived, "parked connection closed");
                }
            }
            Outcome::Failed(e) => {
                if self.fail(&e, None, epoch)
                    && let Some(hook) = &self.config.on_failure
                {
                    hook.call(&e);
                }
            }
            Outcome::Cancelled => {}
            Outcome::Refused(r) => match r.status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    self.state.set(AgentState::Refused {
                        status: r.status,
                        detail: r.to_string(),
                    });
                    return Err(AgentError::Unauthorized {
                        status: r.status,
                        detail: r.to_string(),
                    });
                }
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => {
                    match r.location().map(|l| self.target.redirect(l)) {
                        Some(Ok(next)) => {
                            info!(location = %next.url(), "relay redirected the agent");
                            self.target = next;
                            self.redirects += 1;
                            if self.redirects > MAX_REDIRECTS {
                                self.fail(&"too many redirects in a row", None, epoch);
                            }
                        }
                        Some(Err(e)) => {
                            self.fail(&e, None, epoch);
                        }
                        None => {
                            self.fail(&format_args!("{r} without a usable Location"), None, epoch);
                        }
                    }
                }
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    let after = r.retry_after();
                    self.fail(&r, after, epoch);
                }
                _ => {
                    self.fail(&r, None, epoch);
                }
            },
        }
        Ok(())
    }
}

/// Run the pool until `shutdown` completes (then drain) or the relay rejects the credentials.
pub(crate) async fn run<V: Serve>(
    config: Arc<Config>,
    server: V,
    shutdown: impl std::future::Future<Output = ()> + Send,
    state: StateTx,
    metrics: Arc<Metrics>,
) -> Result<(), AgentError> {
    let server = Arc::new(server);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let gauge = Arc::new(Gauge {
        busy: AtomicUsize::new(0),
        parked: AtomicUsize::new(0),
        dialing: AtomicUsize::new(0),
        room: AtomicBool::new(true),
        connections: config.connections,
        metrics: metrics.clone(),
    });
    metrics.attach(&gauge);
    let mut pool = Pool {
        target: config.target.clone(),
        config,
        conns: HashMap::new(),
        counts: [0; 2],
        gauge: gauge.clone(),
        next_id: 0,
        failures: 0,
        epoch: 0,
        redirects: 0,
        not_before: Instant::now(),
        healthy_since: None,
        outage_since: None,
        unreachable_since: None,
        announced: false,
        h2: None,
        stopping: false,
        state,
    };
    tokio::pin!(shutdown);
    let mut stopping = false;
    // Set when stopping starts; past it, connections still serving are dropped.
    let mut drain_until: Option<Instant> = None;
    let hard = CancellationToken::new();
    let mut result = Ok(());
    loop {
        if !stopping {
            let now = Instant::now();
            pool.reset_if_healthy(now);
            while pool.wants_dial() && now >= pool.not_before {
                let id = pool.next_id;
                pool.next_id += 1;
                pool.set(id, Some(State::Dialing));
                let task = connection(
                    Dialled {
                        id,
                        epoch: pool.epoch,
                    },
                    pool.target.clone(),
                    pool.config.clone(),
                    server.clone(),
                    gauge.clone(),
                    tx.clone(),
                    Stop {
                        graceful: cancel.child_token(),
                        hard: hard.child_token(),
                    },
                );
                // A debug span: at the default level, entering a span on every poll of a
                // connection costs more than the rest of the pool's bookkeeping.
                tracker.spawn(task.instrument(debug_span!("conn", id)));
            }
        } else if pool.conns.is_empty() {
            break;
        }
        let wait_backoff = !stopping && pool.wants_dial();
        let draining = drain_until.filter(|_| !hard.is_cancelled());
        tokio::select! {
            Some(event) = rx.recv() => {
                if let Err(e) = pool.on_event(event) {
                    result = Err(e);
                    stopping = true;
                }
            }
            () = tokio::time::sleep_until(pool.not_before), if wait_backoff => {}
            () = &mut shutdown, if !stopping => {
                info!(drain_timeout = ?pool.config.drain_timeout, "shutting down: finishing requests in flight");
                stopping = true;
            }
            () = tokio::time::sleep_until(draining.unwrap_or(pool.not_before)), if draining.is_some() => {
                warn!(
                    drain_timeout = ?pool.config.drain_timeout,
                    "drain timeout passed; closing the connections still serving"
                );
                hard.cancel();
            }
        }
        if stopping && drain_until.is_none() {
            pool.stopping = true;
            cancel.cancel();
            drain_until = Some(Instant::now() + pool.config.drain_timeout);
        }
    }
    tracker.close();
    tracker.wait().await;
    if result.is_ok() {
        pool.state.set(AgentState::Stopped);
    }
    result
}
