//! The agent: dial a relay, park reversed connections, and serve requests that come down them.
//!
//! ```text
//!  Agent::serve(service)
//!    pool ── keeps `connections` idle parked connections, grows to `max_connections`
//!            (ptth with h2 inside: `h2_connections`, each carrying many requests at once)
//!      └─ conn{id}: dial (TCP, keepalive, nodelay) -> handshake (Upgrade: PTTH/0.9, or ptth
//!                   with ALPN: h2, http%2F1.1) -> Flipped::serve(service), or serve_h2 on h2,
//!                   until the relay closes it
//!    on close or error: redial; failures wait per [`Backoff`]; 401/403 stop the agent
//! ```
//!
//! - [`config`]: every default, the [`AgentBuilder`] and the validated [`Config`].
//! - [`backoff`]: the reconnect policy, as pure functions.
//!
//! Private, with what a user needs re-exported here:
//! - `target`: the relay URL and the upstream URL, parsed and checked ([`Target`],
//!   [`Upstream`], [`Endpoint`]).
//! - `dial`: TCP (deadline, keepalive, nodelay) and TLS, to the relay and the upstream; a
//!   CONNECT tunnel through a forward proxy to the relay ([`Transport`]).
//! - `forward_proxy`: which forward proxy the relay connections go through (curl's
//!   environment variables, `NO_PROXY`), and its URL and credentials ([`ProxySettings`]).
//! - `long_poll`: the long-poll transport (ordinary requests where `Upgrade` cannot pass): a
//!   held poll and a streamed reply make a virtual connection served as a parked one.
//! - `pool`: the supervisor: counts, backoff, dial decisions, drain.
//! - `conn`: one connection's life: dial -> handshake -> serve -> outcome.
//! - `proxy`: the service that forwards to a local upstream ([`Proxy`]); `forward_h2`: the same
//!   on a reversed HTTP/2 connection, per stream, over a bounded upstream pool.
//! - [`inspect`]: the request inspector (`--inspect`): a bounded ring of exchanges, ngrok's
//!   agent API, replay, the page.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ptth::agent::AgentError> {
//! let agent = ptth::agent::Agent::builder("http://127.0.0.1:8080/demo")
//!     .token("secret")
//!     .build()?;
//! let service = hyper::service::service_fn(ptth::dialer::not_found);
//! agent.serve(service, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! [`Proxy`] is the service `ptth-connect` uses: it forwards every request to a local
//! upstream.

use std::future::Future;
use std::sync::Arc;

use http::StatusCode;

use crate::service::{HttpService, TowerService};

pub mod backoff;
pub mod config;
mod conn;
mod dial;
mod forward_h2;
mod forward_proxy;
pub mod inspect;
mod long_poll;
mod metrics;
mod pool;
mod proxy;
mod state;
mod target;

/// The `User-Agent` of the agent's CONNECT requests to a forward proxy.
pub use crate::proto::connect::USER_AGENT;
pub use backoff::Backoff;
pub use config::{
    AgentBuilder, Config, ConfigError, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONNECTIONS,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_H2_CONNECTIONS, DEFAULT_INSPECT_ADDR,
    DEFAULT_INSPECT_BODY_LIMIT, DEFAULT_INSPECT_MAX_BYTES, DEFAULT_INSPECT_MAX_REQUESTS,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_METHOD, DEFAULT_PROTOCOL, DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
    DEFAULT_UPSTREAM_CONNECTIONS, MAX_REDIRECTS, QUICK_CLOSE, Wire, falls_back,
};
pub use dial::{AgentIo, Transport};
pub use forward_proxy::{
    BadProxy, DEFAULT_PROXY_PORT, ForwardProxy, NoProxy, ProxyError, ProxyOrigin, ProxySettings,
    ProxyUrlError,
};
pub use proxy::{HostHeader, Proxy};
pub use state::AgentState;
pub use target::{Endpoint, Target, Upstream, UrlError};

pub use crate::service::BoxError;

/// What can stop an agent or keep it from starting.
///
/// The errors say what failed, not which setting of which program fixes it: a program can tell
/// its own user that, from the variant and its source (`ptth-connect` names its flags).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The relay URL cannot be used.
    #[error("relay URL {url:?}: {reason}")]
    BadRelayUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        #[source]
        reason: UrlError,
    },
    /// The upstream URL cannot be used.
    #[error("upstream URL {url:?}: {reason}")]
    BadUpstreamUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        #[source]
        reason: UrlError,
    },
    /// A setting is out of range, or the TLS it asks for cannot be set up.
    #[error("invalid agent configuration: {0}")]
    BadConfig(#[from] ConfigError),
    /// The TCP connection to the relay failed (retried with backoff while running).
    #[error("connecting to the relay at {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake with the relay failed: wrong name, unknown CA, expired certificate...
    /// (retried with backoff while running). [`crate::tls::TlsError::kind`] says which.
    #[error("TLS with the relay at {addr}: {source}")]
    Tls {
        /// The address dialled.
        addr: String,
        /// What went wrong.
        #[source]
        source: crate::tls::TlsError,
    },
    /// The forward proxy could not be reached or did not open a tunnel to the relay: down, a
    /// `407` (credentials missing or rejected), another refusal (retried with backoff while
    /// running, as any other failure to reach the relay).
    #[error("through the forward proxy: {0}")]
    Proxy(#[from] forward_proxy::ProxyError),
    /// The upgrade handshake failed (retried with backoff while running).
    #[error("upgrade handshake with the relay: {0}")]
    Handshake(#[source] crate::Error),
    /// A long-poll request to the relay failed (retried with backoff while running).
    #[error("long polling the relay: {what}")]
    LongPoll {
        /// What went wrong.
        what: &'static str,
        /// hyper's error, when the request itself failed.
        #[source]
        source: Option<hyper::Error>,
    },
    /// The relay answered `401` or `403`: the token is missing or wrong. The agent stops.
    #[error("the relay refused the agent's credentials ({status}): {detail}")]
    Unauthorized {
        /// `401` or `403`.
        status: StatusCode,
        /// The refusal, with the start of its body.
        detail: String,
    },
}

impl AgentError {
    /// Whether this is [`AgentError::Unauthorized`].
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, AgentError::Unauthorized { .. })
    }
}

/// An agent, ready to serve. Build with [`Agent::builder`].
#[derive(Debug, Clone)]
pub struct Agent {
    config: Arc<Config>,
    state: state::StateTx,
    metrics: Arc<metrics::Metrics>,
}

impl Agent {
    /// Start building an agent for the relay URL: `http://relay:8080/NAME` (path mode) or
    /// `http://NAME.relay-domain:8080/` (host mode).
    pub fn builder(relay_url: impl Into<String>) -> AgentBuilder {
        AgentBuilder::new(relay_url.into())
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the service is reachable through the relay.
    pub fn public_url(&self) -> &str {
        &self.config.public_url
    }

    /// A watch of where the agent stands ([`AgentState`]: connecting, connected with the
    /// public URL, reconnecting, refused, stopped), for a program to show. Take it before
    /// `serve`, which consumes the agent; clones of an agent share one state.
    pub fn state(&self) -> tokio::sync::watch::Receiver<AgentState> {
        self.state.subscribe()
    }

    /// Serve the agent's metrics (`/metrics`, Prometheus text format: connections by state,
    /// responses by status code, upstream latency, reconnects; see the README) on `listener`
    /// until `stop` completes. The pages have no authentication: bind a private address.
    /// Clones of an agent share one set of series, so take a clone before `serve`.
    pub async fn serve_admin(
        &self,
        listener: tokio::net::TcpListener,
        stop: impl Future<Output = ()> + Send,
    ) {
        let pages = Arc::new(metrics::AgentPages(self.metrics.clone()));
        crate::admin::serve(listener, pages, stop).await;
    }

    /// Serve a hyper service through the relay until `shutdown` completes; then stop parking,
    /// let requests in flight finish, and return `Ok(())`.
    ///
    /// Connection failures and refusals are retried with backoff, forever. The only error
    /// returned is [`AgentError::Unauthorized`] (`401`/`403` from the relay).
    pub async fn serve<S>(
        self,
        service: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AgentError>
    where
        S: HttpService + Clone + Send + 'static,
    {
        pool::run(
            self.config,
            conn::Hyper(std::sync::Mutex::new(service)),
            shutdown,
            self.state,
            self.metrics,
        )
        .await
    }

    /// Serve a [`proxy::Proxy`] through the relay (what `ptth-connect` does), as
    /// [`Agent::serve`] does for other services, on the forwarding engine instead of hyper.
    /// Each reversed connection keeps its own upstream connection, run in the same task as the
    /// reversed connection.
    pub async fn serve_proxy(
        self,
        proxy: proxy::Proxy,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AgentError> {
        pool::run(self.config, proxy, shutdown, self.state, self.metrics).await
    }

    /// [`Agent::serve`] for a `tower::Service`, such as an axum `Router`. The service is cloned
    /// for each request (tower's `call` takes `&mut self`) and need not be `Sync`: a
    /// `tower::util::BoxCloneService` will do.
    pub async fn serve_tower<S>(
        self,
        service: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AgentError>
    where
        S: TowerService,
    {
        self.serve(
            hyper_util::service::TowerToHyperService::new(service),
            shutdown,
        )
        .await
    }
}
