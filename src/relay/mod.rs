//! `ptth-serve`, the public relay: agents behind NAT claim a name over PTTH; public HTTP
//! requests for that name are forwarded over the agents' parked reversed connections.
//!
//! ```text
//! agent ── POST /NAME  Upgrade: PTTH/0.9 ──▶ accept ─▶ claim ─▶ registry (parked)
//! public ── GET /NAME/x ─▶ accept ─▶ forward (route, checkout, retry) ─▶ exchange | tunnel
//! ```
//!
//! - `config`: every relay default and the one [`Config`].
//! - `accept`: the accept loop (connection cap, TLS); public connections go to `forward`, a
//!   connection whose request is a PTTH offer to a hyper server for `claim`.
//! - `claim`: an agent claiming a name: the name, its token, its certificate, its place in the
//!   counts, the switch, the parking.
//! - `route`: which name a request is for (pure, fuzzable).
//! - `registry`: names, parked connections, waiters, counts.
//! - `forward`: a public connection on the forwarding engine (`crate::h1`): Host, route,
//!   checkout, one exchange, park; the one place a public request is counted.
//! - `exchange`: the engine's route toward an agent (target, forwarding fields, the one more
//!   checkout when a connection is found closed).
//! - `long_poll`: the long-poll transport: a claim and a reversed connection made of a held
//!   poll and a reply, for agents whose `Upgrade` cannot pass.
//! - `tunnel`: a public upgrade (WebSocket) over an agent's connection.
//! - `respond`: the relay's own hyper answers to claims.
//! - `auth`: the token file; `admin`: `/metrics` and `/agents`.
//! - `fleet`: the shared registry in Redis (`--registry`) and forwards to the relay that holds
//!   a name.
//! - `metrics`: the series and the one entry point per finished request, claim, refusal and
//!   forgotten name; `access_log`: `--access-log`'s lines, written by a task of their own.

mod accept;
mod access_log;
mod admin;
mod auth;
mod claim;
mod config;
mod exchange;
mod fleet;
mod forward;
mod h2_settings;
mod long_poll;
mod metrics;
mod over_h2;
mod registry;
mod respond;
pub(crate) mod route;
mod tunnel;
mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use metrics::Metrics;
use registry::Registry;

pub use auth::{Tokens, TokensError};
pub use config::*;
pub use metrics::LATENCY_BUCKETS;
pub use registry::{NameState, NameStats};
pub use route::MAX_NAME_LEN;

/// Bind a relay listener with the large listen backlog a restart storm needs.
pub use crate::net::{LISTEN_BACKLOG, listen};

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

/// Why the relay could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// No token file and a non-loopback listener, without `allow_anonymous`.
    #[error(
        "refusing anonymous agents on non-loopback address {0}: configure tokens or allow anonymous agents"
    )]
    AnonymousNotLoopback(SocketAddr),
    /// No listener given.
    #[error("no listen address")]
    NoListener,
    /// TLS listeners were given without [`Config::tls`].
    #[error("TLS listeners need a certificate and key (Config::tls)")]
    TlsWithoutCertificate,
    /// [`Config::agent_certs`] asks for client certificates but there is no TLS listener.
    #[error("agent certificates are required but no TLS listener with a client CA is configured")]
    AgentCertsWithoutTls,
    /// The fleet's registry URL is not a Redis URL, or the advertised URL is not
    /// `http://HOST:PORT`.
    #[error("fleet: {0}")]
    Fleet(String),
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

/// What the handlers know about the connection a request came on.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
    /// The TLS client certificate, verified against the client CA, if one was sent.
    pub client_cert: Option<rustls::pki_types::CertificateDer<'static>>,
    /// The connection came in on the fleet's peer listener: its requests were forwarded by
    /// another relay (its `Forwarded` is kept, and they are never forwarded again).
    pub fleet_peer: bool,
}

impl ConnInfo {
    /// `http` or `https`.
    pub fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// State shared by every connection task.
pub(crate) struct Shared {
    /// The configuration the relay started with; [`Shared::live`] holds what a reload replaces.
    pub(crate) config: Arc<Config>,
    pub(crate) live: RwLock<Live>,
    pub(crate) registry: Arc<Registry>,
    /// One permit per connection served as HTTP ([`Config::max_connections`]).
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    /// Every connection and upgrade tunnel: the drain waits for these to end.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when in-flight work must stop (after the drain).
    pub(crate) hard: CancellationToken,
    /// The caps of public request heads ([`ListenerConfig::limits`] with
    /// [`Config::head_timeout`]).
    pub(crate) public_limits: crate::limits::Limits,
    /// The caps of agents' response heads and the read buffer of a checked-out connection
    /// ([`ListenerConfig::read_buf`]).
    pub(crate) agent_limits: crate::limits::Limits,
    /// The fleet (`--registry`), if this relay is part of one.
    pub(crate) fleet: Option<Arc<fleet::Fleet>>,
    /// The long-poll exchanges waiting for their reply.
    pub(crate) long_poll: long_poll::Exchanges,
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

    /// Connections holding a permit of the connection cap now.
    pub(crate) fn http_connections(&self) -> usize {
        let cap = self.config.max_connections.min(Semaphore::MAX_PERMITS);
        cap - self.connections.available_permits()
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
    /// The fleet's peer listener.
    peer: Option<TcpListener>,
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
        let access_log =
            match &config.access_log {
                Some(target) => Some(access_log::AccessLog::open(target).await.map_err(
                    |source| RelayError::Io {
                        context: "opening the access log",
                        source,
                    },
                )?),
                None => None,
            };
        let metrics = Arc::new(Metrics::new(access_log));
        let (fleet, peer) = match &config.fleet {
            Some(f) => {
                if fleet::authority(&f.advertise).is_none() {
                    return Err(RelayError::Fleet(format!(
                        "the advertised URL {:?} is not http://HOST:PORT",
                        f.advertise
                    )));
                }
                let peer =
                    TcpListener::bind(f.peer_listen)
                        .await
                        .map_err(|source| RelayError::Io {
                            context: "binding the fleet's peer listener",
                            source,
                        })?;
                let fleet = fleet::Fleet::new(f.clone(), metrics.clone())
                    .map_err(|e| RelayError::Fleet(e.to_string()))?;
                (Some(Arc::new(fleet)), Some(peer))
            }
            None => (None, None),
        };
        let public_limits = crate::limits::Limits {
            head_timeout: config.head_timeout,
            ..config.listener.limits.clone()
        };
        let read_buf = config.listener.read_buf.unwrap_or(AGENT_READ_BUF);
        let agent_limits = crate::limits::Limits {
            max_head_bytes: read_buf.max(config.listener.limits.max_head_bytes),
            buffer_bytes: read_buf,
            ..config.listener.limits.clone()
        };
        let config = Arc::new(config);
        let registry = Registry::new(config.clone(), metrics.clone());
        let connections = Arc::new(Semaphore::new(
            config.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        Ok(Relay {
            listeners,
            admin,
            peer,
            addrs,
            tls_addrs,
            shared: Arc::new(Shared {
                live: RwLock::new(Live {
                    tokens: config.tokens.clone().map(Arc::new),
                    tls: config.tls.clone(),
                }),
                config,
                registry,
                connections,
                metrics,
                tasks: TaskTracker::new(),
                hard: CancellationToken::new(),
                public_limits,
                agent_limits,
                fleet,
                long_poll: long_poll::Exchanges::default(),
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
            tokio::spawn(accept::serve(
                l,
                tls,
                false,
                self.shared.clone(),
                soft.clone(),
            ));
        }
        if let Some(l) = self.peer {
            tokio::spawn(accept::serve(
                l,
                false,
                true,
                self.shared.clone(),
                soft.clone(),
            ));
        }
        if let Some(f) = &self.shared.fleet {
            let stop = self.shared.hard.child_token();
            tokio::spawn(f.clone().keep_records(self.shared.registry.clone(), stop));
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
        self.shared.metrics.flush().await;
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

    /// Connections served as HTTP now: public clients, and agents until their switch (at most
    /// [`Config::max_connections`]).
    pub fn connections(&self) -> usize {
        self.shared.http_connections()
    }

    /// Wait until `cond` holds for the pool (checked on every pool change, and whenever a
    /// connection is counted or let go).
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
