//! `ptth-serve`, the public relay: agents behind NAT claim a name over PTTH; public HTTP
//! requests for that name are forwarded over the agents' parked reversed connections.
//!
//! ```text
//! agent ── POST /NAME  Upgrade: PTTH/0.9 ──▶ accept ─▶ auth ─▶ registry (parked)
//! public ── GET /NAME/x ──────────────────▶ accept ─▶ route ─▶ registry.checkout ─▶ forward
//! ```
//!
//! - [`accept`]: one hyper server for agents and public clients on every listener.
//! - [`route`]: which name a request is for (pure, fuzzable).
//! - [`registry`]: names, parked connections, waiters, limits.
//! - [`forward`]: one public exchange over one parked connection; 502/503/504 mapping.
//! - [`auth`]: the token file.
//! - [`admin`]: `/metrics` and `/agents`.

pub mod accept;
pub mod admin;
pub mod auth;
pub mod forward;
pub mod registry;
pub mod route;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::Limits;
use crate::listener::ListenerConfig;
use admin::Metrics;
use auth::Tokens;
use registry::{PoolLimits, Registry};

pub use registry::{NameState, NameStats, ReserveError};

/// Default `--domain`: `http://NAME.localhost:8080/` works in browsers with no DNS set-up.
pub const DEFAULT_DOMAIN: &str = "localhost";
/// Default `--queue-timeout`: how long a public request waits for an idle connection of a name
/// whose agent is connected but busy: 10 s, long enough to ride out a burst, short enough for
/// a browser to still be there.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--response-timeout`: from the end of the request body to the response head: 60 s
/// (nginx's `proxy_read_timeout`).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `--grace`: a name whose agent left stays known (`503` offline, not `404`) and keeps
/// belonging to its token this long: 30 s, enough for an agent restart or a short network
/// outage. Past it the relay forgets the name by itself.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default `--reconnect-window`: once a name has no connection, public requests are held this
/// long for an agent to come back, then answered `503` (offline) at once until the grace ends:
/// 5 s. A restarted agent dials as soon as it starts (well under a second after a crash under
/// a supervisor), and an agent that lost its connection retries with its backoff (250 ms
/// doubling: four tries within about 4 s), so a restart is served without an error. A longer
/// hold makes every visitor of a name that is really down wait; the window counts from when
/// the last connection left, so no request waits longer. Shorter than `--queue-timeout`
/// (10 s), which is for a name whose agent is there but busy; capped by `--grace` (30 s).
pub const DEFAULT_RECONNECT_WINDOW: Duration = Duration::from_secs(5);
/// Default `--drain-timeout`: 30 s for in-flight requests and open upgrade tunnels after
/// SIGINT/SIGTERM; whatever is still open then is cut. Shared with the agent.
pub use crate::shutdown::DEFAULT_DRAIN_TIMEOUT;
/// Default `--max-agents`: total agent connections: 4096.
pub const DEFAULT_MAX_AGENTS: usize = 4096;
/// Default `--max-per-name`: agent connections per name: 256.
pub const DEFAULT_MAX_PER_NAME: usize = 256;
/// Default `--max-per-ip`: agent connections per peer address: 256.
pub const DEFAULT_MAX_PER_IP: usize = 256;
/// Default `--max-waiting`: public requests held per name: 1024 (then 503 at once).
pub const DEFAULT_MAX_WAITING: usize = 1024;
/// Default `--head-timeout`: a request head must arrive within 10 s (slow-loris); also the idle
/// timeout of public keep-alive connections.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Default TCP keepalive idle time on every socket: 10 s, so a dead parked connection is dropped
/// within about 10 + 3 × 5 s even when the agent vanished without a FIN.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(10);
/// How long the relay holds a public request body that expects `100 Continue` before it lets it
/// go without the agent's `100`: 2 s, twice [`crate::limits::CONTINUE_WAIT`]. Behind a ptth
/// agent the agent's own (shorter) wait, or its upstream, decides when the `100` comes; this
/// one only covers dialers that never answer the expectation.
pub const RELAY_CONTINUE_WAIT: Duration = Duration::from_secs(2);
/// `Retry-After` seconds sent with 503/429.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Everything the relay can be told. Every field documents its default ([`Config::default`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// Domain for host mode (`NAME.<domain>`). Default [`DEFAULT_DOMAIN`].
    pub domain: String,
    /// Agent tokens; `None` means anonymous agents. Default `None`. A running relay takes new
    /// ones with [`RelayHandle::set_tokens`].
    pub tokens: Option<Tokens>,
    /// Allow anonymous agents on non-loopback listeners. Default `false`.
    pub allow_anonymous: bool,
    /// Keep client-sent `Forwarded`/`X-Forwarded-*` (append to them). Default `false`.
    pub trust_forwarded: bool,
    /// Default [`DEFAULT_QUEUE_TIMEOUT`].
    pub queue_timeout: Duration,
    /// Default [`DEFAULT_RESPONSE_TIMEOUT`].
    pub response_timeout: Duration,
    /// Default [`DEFAULT_GRACE`].
    pub grace: Duration,
    /// Default [`DEFAULT_RECONNECT_WINDOW`]; a value past `grace` acts as `grace`.
    pub reconnect_window: Duration,
    /// Default [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// Default [`DEFAULT_MAX_AGENTS`].
    pub max_agents: usize,
    /// Default [`DEFAULT_MAX_PER_NAME`].
    pub max_per_name: usize,
    /// Default [`DEFAULT_MAX_PER_IP`].
    pub max_per_ip: usize,
    /// Default [`DEFAULT_MAX_WAITING`].
    pub max_waiting: usize,
    /// Default [`DEFAULT_HEAD_TIMEOUT`].
    pub head_timeout: Duration,
    /// Default [`DEFAULT_TCP_KEEPALIVE`].
    pub tcp_keepalive: Duration,
    /// Head size, header count and upgrade-body caps (see [`Limits`]); a public head over
    /// `max_head_bytes` gets 431. Default [`Limits::default`].
    pub limits: Limits,
    /// Admin listener (`/metrics`, `/agents`). Default `None` (off).
    pub admin: Option<SocketAddr>,
    /// TLS for the listeners given as [`Listeners::tls`] (certificate chain, key, optional
    /// client CA). Build it with [`crate::tls::server_config`]. Default: none. A running relay
    /// takes a new one with [`RelayHandle::set_tls`].
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What agents must show as a TLS client certificate. Default: [`AgentCerts::Off`].
    pub agent_certs: AgentCerts,
}

/// Whether agents must authenticate with a TLS client certificate (mutual TLS).
///
/// Needs a client CA in [`Config::tls`] (see [`crate::tls::server_config`]); the TLS layer
/// only *requests* certificates, because public clients share the listener, and the claim is
/// refused with 401 when the policy is not met. A token, when a token file is configured, is
/// required as well.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AgentCerts {
    /// No certificate needed.
    #[default]
    Off,
    /// A certificate signed by the client CA.
    Required,
    /// A certificate signed by the client CA that is valid for `NAME.<domain>` (a SAN DNS
    /// name equal to it, or a matching wildcard).
    MatchName,
}

/// The sockets a relay serves: plain HTTP, and HTTPS (with [`Config::tls`]).
#[derive(Debug, Default)]
pub struct Listeners {
    /// Plain TCP listeners.
    pub plain: Vec<TcpListener>,
    /// TLS listeners.
    pub tls: Vec<TcpListener>,
}

impl From<Vec<TcpListener>> for Listeners {
    fn from(plain: Vec<TcpListener>) -> Self {
        Listeners {
            plain,
            tls: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: DEFAULT_DOMAIN.to_string(),
            tokens: None,
            allow_anonymous: false,
            trust_forwarded: false,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            grace: DEFAULT_GRACE,
            reconnect_window: DEFAULT_RECONNECT_WINDOW,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_agents: DEFAULT_MAX_AGENTS,
            max_per_name: DEFAULT_MAX_PER_NAME,
            max_per_ip: DEFAULT_MAX_PER_IP,
            max_waiting: DEFAULT_MAX_WAITING,
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            tcp_keepalive: DEFAULT_TCP_KEEPALIVE,
            limits: Limits::default(),
            admin: None,
            tls: None,
            agent_certs: AgentCerts::Off,
        }
    }
}

/// Why the relay could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// No token file and a non-loopback listener, without `allow_anonymous`.
    #[error(
        "refusing anonymous agents on non-loopback address {0}: give --tokens FILE or --allow-anonymous"
    )]
    AnonymousNotLoopback(SocketAddr),
    /// No listener given.
    #[error("no listen address")]
    NoListener,
    /// TLS listeners were given without [`Config::tls`].
    #[error("TLS listeners need a certificate and key (Config::tls / --tls-cert, --tls-key)")]
    TlsWithoutCertificate,
    /// [`Config::agent_certs`] asks for client certificates but there is no TLS listener.
    #[error("agent certificates are required but no TLS listener with a client CA is configured")]
    AgentCertsWithoutTls,
    /// Socket trouble.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// State shared by every connection task.
pub(crate) struct Shared {
    /// The configuration the relay started with; [`Shared::live`] holds what a reload replaces.
    pub(crate) config: Config,
    pub(crate) live: RwLock<Live>,
    pub(crate) listener: ListenerConfig,
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    /// Every connection and upgrade tunnel: the drain waits for these to end.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when in-flight work must stop (after the drain).
    pub(crate) hard: CancellationToken,
}

/// The settings a running relay can replace ([`RelayHandle::set_tokens`],
/// [`RelayHandle::set_tls`]). Each claim and each TLS handshake reads them when it starts, so a
/// change applies to the next ones and leaves established connections as they are.
pub(crate) struct Live {
    pub(crate) tokens: Option<Arc<Tokens>>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

impl Shared {
    fn live(&self) -> std::sync::RwLockReadGuard<'_, Live> {
        // A panic while writing two `Option<Arc>`s leaves nothing half-written.
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    fn live_mut(&self) -> std::sync::RwLockWriteGuard<'_, Live> {
        self.live.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The agent tokens in force: `None` for anonymous agents.
    pub(crate) fn tokens(&self) -> Option<Arc<Tokens>> {
        self.live().tokens.clone()
    }

    /// The TLS configuration in force for new handshakes.
    pub(crate) fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.live().tls.clone()
    }
}

/// A relay bound to its listeners, not yet running. Use [`Relay::handle`] to observe it, then
/// [`Relay::run`].
pub struct Relay {
    listeners: Vec<(TcpListener, bool)>,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
}

/// A cheap view of a running relay (addresses, pool state), for tests and embedding.
#[derive(Clone)]
pub struct RelayHandle {
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    shared: Arc<Shared>,
}

impl Relay {
    /// Check the configuration against the listeners and bind the admin address.
    pub async fn new(listeners: impl Into<Listeners>, config: Config) -> Result<Relay, RelayError> {
        let Listeners { plain, tls } = listeners.into();
        if plain.is_empty() && tls.is_empty() {
            return Err(RelayError::NoListener);
        }
        if !tls.is_empty() && config.tls.is_none() {
            return Err(RelayError::TlsWithoutCertificate);
        }
        if config.agent_certs != AgentCerts::Off && tls.is_empty() {
            return Err(RelayError::AgentCertsWithoutTls);
        }
        let local = |ls: &[TcpListener]| {
            ls.iter()
                .map(|l| l.local_addr())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| RelayError::Io {
                    context: "reading a listener's address",
                    source,
                })
        };
        let (addrs, tls_addrs) = (local(&plain)?, local(&tls)?);
        let listeners: Vec<(TcpListener, bool)> = plain
            .into_iter()
            .map(|l| (l, false))
            .chain(tls.into_iter().map(|l| (l, true)))
            .collect();
        if config.tokens.is_none()
            && !config.allow_anonymous
            && let Some(a) = addrs
                .iter()
                .chain(&tls_addrs)
                .find(|a| !a.ip().is_loopback())
        {
            return Err(RelayError::AnonymousNotLoopback(*a));
        }
        let admin = match config.admin {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|source| RelayError::Io {
                        context: "binding the admin address",
                        source,
                    })?,
            ),
            None => None,
        };
        let listener = ListenerConfig {
            limits: config.limits.clone(),
            ..ListenerConfig::default()
        };
        let registry = Registry::new(PoolLimits {
            max_agents: config.max_agents,
            max_per_name: config.max_per_name,
            max_per_ip: config.max_per_ip,
            max_waiters_per_name: config.max_waiting,
            grace: config.grace,
            reconnect_window: config.reconnect_window,
        });
        Ok(Relay {
            listeners,
            admin,
            addrs,
            tls_addrs,
            shared: Arc::new(Shared {
                live: RwLock::new(Live {
                    tokens: config.tokens.clone().map(Arc::new),
                    tls: config.tls.clone(),
                }),
                config,
                listener,
                registry,
                metrics: Arc::default(),
                tasks: TaskTracker::new(),
                hard: CancellationToken::new(),
            }),
        })
    }

    /// A handle to observe the relay while it runs.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            addrs: self.addrs.clone(),
            tls_addrs: self.tls_addrs.clone(),
            admin: self.admin.as_ref().and_then(|a| a.local_addr().ok()),
            shared: self.shared.clone(),
        }
    }

    /// Serve until `shutdown` completes, then stop accepting, let in-flight requests finish
    /// within [`Config::drain_timeout`], and close everything.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
        let soft = CancellationToken::new();
        for (l, tls) in self.listeners {
            tokio::spawn(accept::serve(l, tls, self.shared.clone(), soft.clone()));
        }
        if let Some(a) = self.admin {
            tokio::spawn(admin::serve(a, self.shared.clone(), soft.clone()));
        }
        // Names expire during the drain too; the sweeper stops when `run` ends, however it
        // ends (the guard cancels on drop).
        let sweeper = self.shared.hard.child_token();
        let _stop_sweeper = sweeper.clone().drop_guard();
        tokio::spawn(self.shared.registry.clone().sweep(sweeper));
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        soft.cancel();
        let tasks = &self.shared.tasks;
        tasks.close();
        let drain = self.shared.config.drain_timeout;
        if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
            tracing::warn!(
                ?drain,
                "drain timeout passed; closing the remaining connections"
            );
        }
        self.shared.hard.cancel();
        self.shared.registry.close_all();
        Ok(())
    }
}

impl RelayHandle {
    /// The bound public addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The addresses of the TLS listeners.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The bound admin address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Replace the agent tokens (a reloaded token file): later claims are checked against
    /// `tokens`; parked and serving connections stay, whatever their token (a revoked token is
    /// refused at the agent's next claim).
    pub fn set_tokens(&self, tokens: Tokens) {
        self.shared.live_mut().tokens = Some(Arc::new(tokens));
    }

    /// Replace the TLS configuration of the TLS listeners (a renewed certificate): later
    /// handshakes use `tls`; established TLS connections keep theirs.
    pub fn set_tls(&self, tls: Arc<rustls::ServerConfig>) {
        self.shared.live_mut().tls = Some(tls);
    }

    /// Idle parked connections for `name`.
    pub fn idle(&self, name: &str) -> usize {
        self.shared.registry.idle(name)
    }

    /// Per-name pool numbers.
    pub fn stats(&self) -> Vec<NameStats> {
        self.shared.registry.stats()
    }

    /// All agent connections.
    pub fn agents(&self) -> usize {
        self.shared.registry.total()
    }

    /// Wait until `cond` holds for the pool (checked on every pool change).
    pub async fn wait_until(&self, mut cond: impl FnMut(&RelayHandle) -> bool) {
        let mut rx = self.shared.registry.subscribe();
        loop {
            if cond(self) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Wait until `name` has at least `n` idle parked connections.
    pub async fn wait_idle(&self, name: &str, n: usize) {
        self.wait_until(|h| h.idle(name) >= n).await
    }
}

/// Run a relay on `listeners` until `shutdown` completes (see [`Relay::run`]).
pub async fn run(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    Relay::new(listeners, config).await?.run(shutdown).await
}
