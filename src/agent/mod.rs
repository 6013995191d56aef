//! The agent: dial a relay, park reversed connections, and serve requests that come down them.
//!
//! ```text
//!  Agent::serve(service)
//!    pool ── keeps `connections` idle parked connections, grows to `max_connections`
//!      └─ conn{id}: dial (TCP, keepalive, nodelay) -> handshake (Upgrade: PTTH/0.9)
//!                   -> Flipped::serve(service) until the relay closes it
//!    on close or error: redial; failures wait per [`Backoff`]; 401/403 stop the agent
//! ```
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
//! [`proxy::Proxy`] is the service `ptth-connect` uses: it forwards every request to a local
//! upstream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;

pub mod backoff;
pub mod dial;
mod pool;
pub mod proxy;

pub use backoff::Backoff;
pub use dial::{Target, Transport};
pub use pool::{MAX_REDIRECTS, QUICK_CLOSE};

use crate::limits::Limits;
use crate::proto::Protocol;

/// Idle parked connections kept ready by default: 4.
pub const DEFAULT_CONNECTIONS: usize = 4;

/// Most connections (idle plus serving) by default: 64.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// How long a stopping agent lets requests in flight finish by default: 30 s (as the relay).
/// Past it, the connections still serving are closed.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A boxed error, as hyper services use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What can stop an agent or keep it from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The relay URL cannot be used.
    #[error("relay URL {url:?}: {reason}")]
    BadRelayUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The upstream URL cannot be used.
    #[error("upstream URL {url:?}: {reason}")]
    BadUpstreamUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A setting is out of range.
    #[error("invalid agent configuration: {0}")]
    BadConfig(String),
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
    /// (retried with backoff while running).
    #[error("TLS with the relay at {addr}: {message}")]
    Tls {
        /// The address dialled.
        addr: String,
        /// What went wrong, in words.
        message: String,
    },
    /// The upgrade handshake failed (retried with backoff while running).
    #[error("upgrade handshake with the relay: {0}")]
    Handshake(#[source] crate::Error),
    /// The relay answered `401` or `403`: the token is missing or wrong. The agent stops.
    #[error(
        "the relay refused the agent's credentials ({status}); check --token / PTTH_TOKEN: {detail}"
    )]
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

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to dial first (redirects change where later dials go).
    pub target: Target,
    /// Where the service is reachable, for the log line.
    pub public_url: String,
    /// `Authorization` value sent with each upgrade request (marked sensitive: never logged).
    pub token: Option<HeaderValue>,
    /// Idle parked connections to keep ready.
    pub connections: usize,
    /// Most connections in total.
    pub max_connections: usize,
    /// The protocol offered.
    pub protocol: Protocol,
    /// Method of the upgrade request.
    pub method: Method,
    /// Extra fields for the upgrade request.
    pub headers: HeaderMap,
    /// Caps and deadlines of each connection.
    pub limits: Limits,
    /// Reconnect policy.
    pub backoff: Backoff,
    /// How to reach the relay.
    pub transport: Transport,
    /// TCP connect deadline.
    pub connect_timeout: Duration,
    /// When stopping, how long requests in flight may take before their connections close.
    pub drain_timeout: Duration,
}

/// An agent, ready to serve. Build with [`Agent::builder`].
#[derive(Debug, Clone)]
pub struct Agent {
    config: Arc<Config>,
}

/// Builder for [`Agent`]; every setter documents its default.
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    url: String,
    token: Option<String>,
    connections: usize,
    max_connections: usize,
    protocol: Protocol,
    method: Method,
    headers: Vec<(String, String)>,
    limits: Limits,
    backoff: Backoff,
    transport: Transport,
    connect_timeout: Duration,
    drain_timeout: Duration,
}

impl AgentBuilder {
    /// Bearer token, sent as `Authorization: Bearer <token>`. Default: none.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Idle parked connections to keep ready. Default: [`DEFAULT_CONNECTIONS`].
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n;
        self
    }

    /// Most connections (idle plus serving). Default: [`DEFAULT_MAX_CONNECTIONS`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Protocol offered in `Upgrade`. Default: `PTTH/0.9`.
    pub fn protocol(mut self, p: Protocol) -> Self {
        self.protocol = p;
        self
    }

    /// Method of the upgrade request. Default: `POST` (what deployed relays expect).
    pub fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }

    /// Add a field to the upgrade request. Default: none. `Host`, `Upgrade`, `Connection` and
    /// framing fields are set by the library and ignored here.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Caps and deadlines. Default: [`Limits::default`] (no idle timeout: parked connections
    /// wait for as long as the relay keeps them).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Reconnect policy. Default: [`Backoff::default`] (250 ms doubling to 30 s, with jitter;
    /// an outage after a healthy period is probed every second for its first minute).
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }

    /// How to reach the relay. Default: [`Transport::Plain`].
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }

    /// TCP connect deadline. Default: [`dial::DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// When stopping, how long requests in flight may take before their connections are closed.
    /// Default: [`DEFAULT_DRAIN_TIMEOUT`].
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<Agent, AgentError> {
        let target = Target::parse(&self.url)?;
        if self.connections == 0 {
            return Err(AgentError::BadConfig(
                "connections must be at least 1".into(),
            ));
        }
        if self.max_connections < self.connections {
            return Err(AgentError::BadConfig(format!(
                "max connections ({}) must be at least connections ({})",
                self.max_connections, self.connections
            )));
        }
        let token = match self.token {
            None => None,
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    AgentError::BadConfig("the token has characters not allowed in a header".into())
                })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let n = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| AgentError::BadConfig(format!("invalid header name {name:?}")))?;
            let v = HeaderValue::from_str(value.trim())
                .map_err(|_| AgentError::BadConfig(format!("invalid value for header {name}")))?;
            headers.append(n, v);
        }
        let target_is_tls = target.tls;
        Ok(Agent {
            config: Arc::new(Config {
                public_url: target.public_url(),
                target,
                token,
                connections: self.connections,
                max_connections: self.max_connections,
                protocol: self.protocol,
                method: self.method,
                headers,
                limits: self.limits,
                backoff: self.backoff,
                transport: match (target_is_tls, self.transport) {
                    (true, Transport::Plain) => Transport::Tls(
                        crate::tls::client_config(None, None)
                            .map_err(|e| AgentError::BadConfig(e.to_string()))?,
                    ),
                    (_, t) => t,
                },
                connect_timeout: self.connect_timeout,
                drain_timeout: self.drain_timeout,
            }),
        })
    }
}

impl Agent {
    /// Start building an agent for the relay URL: `http://relay:8080/NAME` (path mode) or
    /// `http://NAME.relay-domain:8080/` (host mode).
    pub fn builder(relay_url: impl Into<String>) -> AgentBuilder {
        AgentBuilder {
            url: relay_url.into(),
            token: None,
            connections: DEFAULT_CONNECTIONS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            protocol: Protocol::Ptth09,
            method: Method::POST,
            headers: Vec::new(),
            limits: Limits::default(),
            backoff: Backoff::default(),
            transport: Transport::Plain,
            connect_timeout: dial::DEFAULT_CONNECT_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the service is reachable through the relay.
    pub fn public_url(&self) -> &str {
        &self.config.public_url
    }

    /// Serve a hyper service through the relay until `shutdown` completes; then stop parking,
    /// let requests in flight finish, and return `Ok(())`.
    ///
    /// Connection failures and refusals are retried with backoff, forever. The only error
    /// returned is [`AgentError::Unauthorized`] (`401`/`403` from the relay).
    pub async fn serve<S, B>(
        self,
        service: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AgentError>
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let make = move || (service.clone(), std::future::pending::<()>());
        pool::run(self.config, make, shutdown).await
    }

    /// Serve a [`proxy::Proxy`] through the relay (what `ptth-connect` does), as
    /// [`Agent::serve`] does for other services. Each reversed connection keeps its own
    /// upstream connection, run in the same task as the reversed connection.
    pub async fn serve_proxy(
        self,
        proxy: proxy::Proxy,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AgentError> {
        pool::run(self.config, move || proxy.connection(), shutdown).await
    }

    /// [`Agent::serve`] for a `tower::Service`, such as an axum `Router`.
    pub async fn serve_tower<S, B>(
        self,
        service: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AgentError>
    where
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.serve(
            hyper_util::service::TowerToHyperService::new(service),
            shutdown,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_defaults_and_validation() {
        let a = Agent::builder("http://127.0.0.1:8080/demo")
            .build()
            .unwrap();
        let c = a.config();
        assert_eq!(c.connections, 4);
        assert_eq!(c.max_connections, 64);
        assert_eq!(c.protocol, Protocol::Ptth09);
        assert_eq!(c.method, Method::POST);
        assert_eq!(c.limits.idle_timeout, None);
        assert_eq!(a.public_url(), "http://127.0.0.1:8080/demo/");
        assert!(
            Agent::builder("http://x/")
                .connections(5)
                .max_connections(2)
                .build()
                .is_err()
        );
    }

    #[test]
    fn token_is_never_printed() {
        let a = Agent::builder("http://x/")
            .token("hunter2")
            .build()
            .unwrap();
        assert!(!format!("{a:?}").contains("hunter2"));
    }
}
