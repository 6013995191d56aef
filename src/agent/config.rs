//! Everything an agent can be told, checked once: every default with its reason, the
//! [`AgentBuilder`] that applies them, and the validated [`Config`] the pool runs on.
//!
//! The backoff's own defaults live with the policy they tune ([`super::backoff`]) and are
//! re-exported here, so that this is the one list of what an agent does when nobody says
//! otherwise. Protocol caps and deadlines of each connection are [`Limits`] (`crate::limits`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, InvalidHeaderName, InvalidHeaderValue};
use http::{HeaderMap, Method};

use super::backoff::Backoff;
use super::dial::Transport;
use super::forward_proxy::{BadProxy, ProxySettings};
use super::target::Target;
use super::{Agent, AgentError};
use crate::limits::Limits;
use crate::proto::Protocol;
use crate::tls::TlsConfigError;

pub use super::backoff::{
    DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, DEFAULT_HEALTHY_PERIOD, DEFAULT_OUTAGE_PROBE,
    DEFAULT_OUTAGE_WINDOW,
};
pub use crate::shutdown::DEFAULT_DRAIN_TIMEOUT;

/// How the agent's connections reach the relay: an upgraded connection, or the long-poll
/// transport of ordinary requests (spec-notes/long-poll.md) where `Upgrade` cannot pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Wire {
    /// Offer the upgrade; fall back to long polling for good when the answer shows that the
    /// upgrade did not reach a PTTH relay (`404`, `405`, `426`, or a `2xx` that ignored
    /// `Upgrade`: [`falls_back`]).
    #[default]
    Auto,
    /// Only the upgrade.
    Upgrade,
    /// Only long polling.
    LongPoll,
}

/// A long poll not answered within this time is held by the relay: the connection counts as
/// parked (a refusal comes at once, before the relay waits for anything).
pub const LONG_POLL_HELD: Duration = Duration::from_millis(250);

/// Bytes buffered between the agent's server and a long-poll reply's body: the back-pressure
/// window of a long-poll exchange, as the relay's (`relay::LONG_POLL_PIPE`).
pub const LONG_POLL_PIPE: usize = 64 * 1024;

/// Whether `status`, the answer to an upgrade offer in [`Wire::Auto`], means "the upgrade
/// does not pass here": something that is not a PTTH relay answered (or one that was sent the
/// offer without its `Upgrade`, and took it for a public request). Not `400`: that is how a
/// PTTH listener refuses a malformed offer, which long polling would not mend (decisions
/// D108); `--transport long-poll` serves a front that answers `400` to any `Upgrade`.
pub fn falls_back(status: http::StatusCode) -> bool {
    use http::StatusCode as S;
    status.is_success()
        || matches!(
            status,
            S::NOT_FOUND | S::METHOD_NOT_ALLOWED | S::UPGRADE_REQUIRED
        )
}

/// Protocol offered in `Upgrade` by default: `PTTH/0.9`, the original design's token and what
/// the relay this crate ships expects first (decisions D1); `PTTH/1.0` on request.
pub const DEFAULT_PROTOCOL: Protocol = Protocol::Ptth09;

/// Method of the upgrade request by default: `POST`, what deployed relays expect (the draft
/// allows any method).
pub const DEFAULT_METHOD: Method = Method::POST;

/// Idle parked connections kept ready by default: 4. One is enough to be reachable; a few more
/// let a burst of requests start at once while replacements are dialled, at the cost of a few
/// idle sockets on the relay.
pub const DEFAULT_CONNECTIONS: usize = 4;

/// Reversed HTTP/2 connections kept by default when the relay runs `h2` inside `ptth`: 2. Each
/// carries up to the agent's `SETTINGS_MAX_CONCURRENT_STREAMS` requests at once
/// ([`crate::H2Limits`]), so the pool does not grow with load; the second connection keeps
/// the service reachable while the first is redialled (decisions D75).
pub const DEFAULT_H2_CONNECTIONS: usize = 2;

/// Upstream HTTP/1.1 connections one agent opens at most for the requests of its HTTP/2
/// connections: 32. Requests past it wait for a connection instead of opening one each: an
/// upstream sized for a few browsers is not hit with 128 connections at once (decisions D76).
pub const DEFAULT_UPSTREAM_CONNECTIONS: usize = 32;

/// Most connections (idle plus serving) by default: 64. Bounds what one agent can hold on the
/// relay (whose own default per name is 256) and how many requests it serves at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Deadline for the TCP connect to the relay, and again for the TLS handshake on it: 10 s. A
/// relay that is down refuses at once; this bounds a relay behind a black hole, which would
/// otherwise hold a dial for the kernel's two minutes of SYN retries.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for the TCP connect to the upstream, and again for its TLS handshake: 10 s. Well
/// under the relay's response timeout (60 s), so that the public client gets the agent's `502`
/// with the reason, not the relay's `504`.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle time before the first TCP keepalive probe, on relay and upstream connections alike:
/// 30 s, well under the usual NAT mapping lifetimes. The agent has no idle timer of its own
/// (decisions D12): keepalive is what keeps a parked connection's NAT state alive and finds a
/// dead relay.
pub const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(30);

/// Read buffer of an upstream connection, and the largest upstream response head: 64 KiB (the
/// engine's `Limits` for the upstream side, `src/agent/proxy.rs`). When the agent ran hyper's
/// client, hyper's default ceiling (about 400 KiB) let each upstream connection grow its buffer
/// that far under large bodies: agent RSS 25–56 MiB after the benchmark's 10 MB echo, against
/// 9–12 MiB with this cap (BENCHMARKS.md).
pub const UPSTREAM_MAX_BUF: usize = 64 * 1024;

/// Where `ptth-connect --inspect` serves the inspector by default (ngrok's address, loopback).
pub const DEFAULT_INSPECT_ADDR: &str = "127.0.0.1:4040";

/// Bytes of each request and response body the inspector keeps: 64 KiB (the rest is counted).
pub const DEFAULT_INSPECT_BODY_LIMIT: usize = 64 * 1024;

/// Exchanges the inspector keeps: 1000, the oldest going first.
pub const DEFAULT_INSPECT_MAX_REQUESTS: usize = 1000;

/// Bytes the inspector keeps in all (heads and kept bodies): 64 MiB, the oldest going first.
pub const DEFAULT_INSPECT_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Largest request body the inspector's API reads (a replay with an edited body): 16 MiB.
pub const INSPECT_MAX_API_BODY: usize = 16 * 1024 * 1024;

/// How long a replay may take, to the end of its response: 60 s.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// Buffer of the in-memory stream a replay is sent on: 64 KiB.
pub const REPLAY_PIPE_BYTES: usize = 64 * 1024;

/// A connection that closes within this time of parking without having served a request counts
/// as a failure, so a relay that drops every connection at once meets the backoff: 5 s.
pub const QUICK_CLOSE: Duration = Duration::from_secs(5);

/// Consecutive `307`/`308` answers followed before they count as failures: 5, as browsers
/// follow a handful; a longer chain is a loop between relays, not a move.
pub const MAX_REDIRECTS: u32 = 5;

/// Why an agent configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No idle connection asked for: the agent would never be reachable.
    #[error("connections must be at least 1")]
    NoConnections,
    /// Fewer connections allowed in all than kept idle.
    #[error("max connections ({max}) must be at least connections ({connections})")]
    MaxBelowConnections {
        /// The most connections allowed.
        max: usize,
        /// The idle connections wanted.
        connections: usize,
    },
    /// The token cannot go in an `Authorization` field.
    #[error("the token has characters not allowed in a header")]
    Token(#[source] InvalidHeaderValue),
    /// An extra field's name is not a field name.
    #[error("invalid header name {name:?}")]
    HeaderName {
        /// The name given.
        name: String,
        /// What `http` said.
        #[source]
        source: InvalidHeaderName,
    },
    /// An extra field's value cannot go in a field.
    #[error("invalid value for header {name}")]
    HeaderValue {
        /// The field's name.
        name: String,
        /// What `http` said.
        #[source]
        source: InvalidHeaderValue,
    },
    /// The default TLS configuration (the system's roots) for an `https://` URL could not be
    /// built.
    #[error("TLS for an https:// URL: {0}")]
    Tls(#[source] TlsConfigError),
    /// An `https://` relay with [`Transport::Plain`] (only reachable by building a [`Config`]
    /// by hand: the builder picks TLS itself).
    #[error("an https:// relay needs a TLS transport")]
    PlainTransportForHttps,
    /// The forward proxy for the relay URL's scheme cannot be used.
    #[error("{0}")]
    Proxy(#[source] BadProxy),
}

/// Called with the error of each failure the agent counts (see [`AgentBuilder::on_failure`]).
#[derive(Clone)]
pub struct FailureHook(Arc<dyn Fn(&AgentError) + Send + Sync>);

impl FailureHook {
    pub(crate) fn call(&self, e: &AgentError) {
        (self.0)(e)
    }
}

impl fmt::Debug for FailureHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FailureHook")
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
    /// With `ptth`: how many connections to keep while the relay chooses `h2` (the elastic
    /// pool of `connections`/`max_connections` applies when it chooses `http/1.1`).
    pub h2_connections: usize,
    /// Method of the upgrade request (always `GET` for `ptth`: [`Config::upgrade_method`]).
    pub method: Method,
    /// Extra fields for the upgrade request.
    pub headers: HeaderMap,
    /// Caps and deadlines of each connection.
    pub limits: Limits,
    /// Reconnect policy.
    pub backoff: Backoff,
    /// How to reach the relay.
    pub transport: Transport,
    /// Which forward proxy, if any, connections to the relay go through.
    pub proxy: ProxySettings,
    /// TCP connect deadline (and TLS handshake deadline, to the relay or a forward proxy).
    pub connect_timeout: Duration,
    /// When stopping, how long requests in flight may take before their connections close.
    pub drain_timeout: Duration,
    /// Told of each failure the agent counts.
    pub on_failure: Option<FailureHook>,
    /// Upgrade, long polling, or the upgrade with a fallback. Default: [`Wire::Auto`].
    pub wire: Wire,
    /// In [`Wire::Auto`]: set once an answer to an offer said the upgrade cannot pass; every
    /// connection long-polls from then on.
    pub(crate) fell_back: Arc<std::sync::atomic::AtomicBool>,
}

impl Config {
    /// Whether connections long-poll now.
    pub(crate) fn long_polls(&self) -> bool {
        match self.wire {
            Wire::LongPoll => true,
            Wire::Upgrade => false,
            Wire::Auto => self.fell_back.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Builder for [`Agent`]; every setter documents its default.
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    url: String,
    token: Option<String>,
    connections: usize,
    max_connections: usize,
    protocol: Protocol,
    h2_connections: usize,
    method: Method,
    headers: Vec<(String, String)>,
    limits: Limits,
    backoff: Backoff,
    transport: Transport,
    proxy: ProxySettings,
    connect_timeout: Duration,
    drain_timeout: Duration,
    on_failure: Option<FailureHook>,
    wire: Wire,
}

impl AgentBuilder {
    /// A builder for the relay URL with every default.
    pub(crate) fn new(url: String) -> AgentBuilder {
        AgentBuilder {
            url,
            token: None,
            connections: DEFAULT_CONNECTIONS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            protocol: DEFAULT_PROTOCOL,
            h2_connections: DEFAULT_H2_CONNECTIONS,
            method: DEFAULT_METHOD,
            headers: Vec::new(),
            limits: Limits::default(),
            backoff: Backoff::default(),
            transport: Transport::Plain,
            proxy: ProxySettings::direct(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            on_failure: None,
            wire: Wire::Auto,
        }
    }

    /// How connections reach the relay: [`Wire::Auto`] (the default), [`Wire::Upgrade`] or
    /// [`Wire::LongPoll`].
    pub fn wire(mut self, wire: Wire) -> Self {
        self.wire = wire;
        self
    }

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

    /// Protocol offered in `Upgrade`. Default: [`DEFAULT_PROTOCOL`].
    pub fn protocol(mut self, p: Protocol) -> Self {
        self.protocol = p;
        self
    }

    /// With [`Protocol::Transposed`] (`ptth`): the connections kept while the relay runs `h2`
    /// inside, each carrying many requests at once. Default: [`DEFAULT_H2_CONNECTIONS`].
    pub fn h2_connections(mut self, n: usize) -> Self {
        self.h2_connections = n;
        self
    }

    /// Method of the upgrade request. Default: [`DEFAULT_METHOD`]. A `ptth` offer is always
    /// `GET` (the draft: it "SHALL be GET"), whatever this says.
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

    /// How to reach the relay. Default: [`Transport::Plain`] for an `http://` relay, TLS with
    /// the system's roots for an `https://` one.
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }

    /// Reach the relay through a forward proxy (HTTP CONNECT), except for the relay hosts of the
    /// settings' no-proxy list: [`ProxySettings::from_env`] for curl's environment variables,
    /// [`ProxySettings::from_url`] for one proxy. Only connections to the relay use it.
    /// Default: [`ProxySettings::direct`] (the library does not read the environment by
    /// itself; `ptth-connect` does).
    pub fn proxy(mut self, proxy: ProxySettings) -> Self {
        self.proxy = proxy;
        self
    }

    /// Deadline for the TCP connect to the relay (or to its forward proxy), and again for the TLS
    /// handshake; a proxy's answer to CONNECT has [`Limits::handshake_timeout`]. Default:
    /// [`DEFAULT_CONNECT_TIMEOUT`].
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

    /// Call `hook` with the error of each failure the agent counts (a connect, TLS or handshake
    /// failure it logs as a warning and backs off for; the failures of one outage count once).
    /// For a program that wants to advise its user on top of the log line, such as naming the
    /// flag that fixes a TLS failure ([`crate::tls::TlsError::kind`]). Default: none.
    pub fn on_failure(mut self, hook: impl Fn(&AgentError) + Send + Sync + 'static) -> Self {
        self.on_failure = Some(FailureHook(Arc::new(hook)));
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<Agent, AgentError> {
        let target = Target::parse(&self.url)?;
        Ok(Agent {
            config: Arc::new(self.config(target)?),
            state: Default::default(),
            metrics: Default::default(),
        })
    }

    fn config(self, target: Target) -> Result<Config, ConfigError> {
        if self.connections == 0 || self.h2_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        if self.max_connections < self.connections {
            return Err(ConfigError::MaxBelowConnections {
                max: self.max_connections,
                connections: self.connections,
            });
        }
        let token = match self.token {
            None => None,
            Some(t) => {
                let mut v =
                    HeaderValue::from_str(&format!("Bearer {t}")).map_err(ConfigError::Token)?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let n = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|source| {
                ConfigError::HeaderName {
                    name: name.clone(),
                    source,
                }
            })?;
            let v =
                HeaderValue::from_str(value.trim()).map_err(|source| ConfigError::HeaderValue {
                    name: name.clone(),
                    source,
                })?;
            headers.append(n, v);
        }
        self.proxy
            .proxy_for(&target.endpoint)
            .map_err(ConfigError::Proxy)?;
        let transport = match (target.endpoint.tls, self.transport) {
            (true, Transport::Plain) => Transport::Tls(default_tls()?),
            (_, t) => t,
        };
        Ok(Config {
            public_url: target.public_url(),
            target,
            token,
            connections: self.connections,
            max_connections: self.max_connections,
            protocol: self.protocol,
            h2_connections: self.h2_connections,
            method: self.method,
            headers,
            limits: self.limits,
            backoff: self.backoff,
            transport,
            proxy: self.proxy,
            connect_timeout: self.connect_timeout,
            drain_timeout: self.drain_timeout,
            on_failure: self.on_failure,
            wire: self.wire,
            fell_back: Arc::default(),
        })
    }
}

impl Config {
    /// The method the upgrade request is sent with: `GET` for `ptth` (draft-kazuho-ptth-ptth:
    /// "SHALL be GET"; a relay answers anything else `405`), [`Config::method`] otherwise.
    pub fn upgrade_method(&self) -> Method {
        if self.protocol.negotiates_alpn() {
            Method::GET
        } else {
            self.method.clone()
        }
    }
}

/// TLS for an `https://` URL given no configuration: the system's roots, no client certificate.
pub(crate) fn default_tls() -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    crate::tls::client_config(None, None).map_err(ConfigError::Tls)
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
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
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
    fn config_errors_are_typed_with_their_source() {
        let err = |b: AgentBuilder| match b.build() {
            Err(AgentError::BadConfig(e)) => e,
            other => panic!("{other:?}"),
        };
        let b = || Agent::builder("http://127.0.0.1:8080/demo");
        assert!(matches!(
            err(b().connections(0)),
            ConfigError::NoConnections
        ));
        assert!(matches!(
            err(b().connections(5).max_connections(2)),
            ConfigError::MaxBelowConnections {
                max: 2,
                connections: 5
            }
        ));
        let e = err(b().token("a\nb"));
        assert!(matches!(e, ConfigError::Token(_)));
        assert!(std::error::Error::source(&e).is_some());
        let e = err(b().header("bad name", "v"));
        assert!(matches!(&e, ConfigError::HeaderName { name, .. } if name == "bad name"));
        assert!(std::error::Error::source(&e).is_some());
        let e = err(b().header("x-ok", "a\u{0}b"));
        assert!(matches!(e, ConfigError::HeaderValue { .. }));
        assert_eq!(e.to_string(), "invalid value for header x-ok");
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
