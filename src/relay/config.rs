//! Every relay default and the one [`Config`] type.
//!
//! Each setting has a `DEFAULT_*` constant with its reason beside it; `ptth-serve`'s flags take
//! their defaults (and their `--help`) from these constants. The relay's parts read the one
//! `Config` they were started with (the registry and the claim through references to it), so a
//! setting has one name from the flag to the code that uses it. The protocol's own caps
//! (heads, handshake) are [`crate::limits`]; the listener role's are [`ListenerConfig`], which
//! the relay's config holds as it is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::limits::Limits;
use crate::listener::ListenerConfig;

use super::auth::Tokens;

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
/// Default `--max-connections`: connections served as HTTP at once, public clients and agents
/// before their switch (a parked agent connection is counted by `--max-agents` instead): 8192,
/// twice the agent cap. Each costs a task and hyper's buffers (about 20 KiB while idle), so the
/// cap bounds them near 160 MiB; past it a new connection is closed at accept (decisions D35).
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
/// Default `--head-timeout`: a request head must arrive within 10 s (slow-loris); also the idle
/// timeout of public keep-alive connections.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the relay holds a long poll before it answers `204` (the agent polls again): under
/// the 60 s idle timeouts common in front of servers (nginx's `proxy_read_timeout`).
pub const DEFAULT_LONG_POLL_TIMEOUT: Duration = Duration::from_secs(25);
/// Bytes buffered each way between the engine and a long poll's or a reply's body: the
/// back-pressure window of a long-poll exchange (a slow public client slows the reply).
pub const LONG_POLL_PIPE: usize = 64 * 1024;
/// Default TCP keepalive idle time on every socket: 10 s, so a dead parked connection is dropped
/// within about 10 + 3 × 5 s even when the agent vanished without a FIN.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(10);
/// How long the relay holds a public request body that expects `100 Continue` before it lets it
/// go without the agent's `100`: 2 s, twice [`crate::limits::CONTINUE_WAIT`]. Behind a ptth
/// agent the agent's own (shorter) wait, or its upstream, decides when the `100` comes; this
/// one only covers dialers that never answer the expectation.
pub const RELAY_CONTINUE_WAIT: Duration = Duration::from_secs(2);
/// The in-memory pipe between a public exchange and its HTTP/2 stream to the agent: 64 KiB
/// each way, about one HTTP/2 default window, so a slow public reader holds at most this much
/// beside its stream's window (decisions D83).
pub const H2_BRIDGE_BUF: usize = 64 * 1024;
/// `Retry-After` seconds sent with 503/429.
pub const RETRY_AFTER_SECS: u64 = 1;
/// The read buffer of a checked-out agent connection: 64 KiB, which is also the largest
/// response head accepted from an agent ([`ListenerConfig::read_buf`]). It belongs to the public
/// connection using the agent's (decisions D60), so a parked connection holds none. (Under
/// hyper, whose client lived for one exchange, a 64 KiB response at c8 took 5 reads and 5
/// writes per request with an adaptive 8 KiB buffer, 3 and 3 with this one.)
pub const AGENT_READ_BUF: usize = 64 * 1024;
/// Access log lines queued for the writer task: 4096 (about 1 MiB). A request never waits for
/// the log; past this many unwritten lines, new ones are dropped and counted
/// (`ptth_access_log_dropped_total`).
pub const ACCESS_LOG_QUEUE: usize = 4096;
/// How long the end of [`super::Relay::run`] waits for the access log's last lines.
pub(crate) const ACCESS_LOG_FLUSH_WAIT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin: the
/// relay's listeners, and the admin and inspector listeners ([`crate::admin::accept_loop`]).
pub(crate) const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Everything the relay can be told. Every field documents its default ([`Config::default`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// Domain for host mode (`NAME.<domain>`). Default [`DEFAULT_DOMAIN`].
    pub domain: String,
    /// Agent tokens; `None` means anonymous agents. Default `None`. A running relay takes new
    /// ones with [`RelayHandle::set_tokens`](super::RelayHandle::set_tokens).
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
    /// Default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Default [`DEFAULT_HEAD_TIMEOUT`].
    pub head_timeout: Duration,
    /// Default [`DEFAULT_TCP_KEEPALIVE`].
    pub tcp_keepalive: Duration,
    /// What an agent's offer must look like, the caps on heads, header counts and the upgrade
    /// body ([`ListenerConfig::limits`]; a public head over `max_head_bytes` gets 431 too), and
    /// how the reversed client reads responses. Default: [`ListenerConfig::default`] with
    /// [`AGENT_READ_BUF`] reads.
    pub listener: ListenerConfig,
    /// Admin listener (`/metrics`, `/agents`). Default `None` (off).
    pub admin: Option<SocketAddr>,
    /// TLS for the listeners given as [`super::Listeners::tls`] (certificate chain, key, optional
    /// client CA). Build it with [`crate::tls::server_config`]. Default: none. A running relay
    /// takes a new one with [`RelayHandle::set_tls`](super::RelayHandle::set_tls).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What agents must show as a TLS client certificate. Default: [`AgentCerts::Off`].
    pub agent_certs: AgentCerts,
    /// Where to write one JSON line per public request. Default `None` (off).
    pub access_log: Option<AccessLogTarget>,
    /// How long a long poll is held. Default [`DEFAULT_LONG_POLL_TIMEOUT`].
    pub long_poll_timeout: Duration,
    /// The browser origins (`https://app.example`) allowed to use the long-poll requests
    /// (CORS); `None` allows every origin, the default: the requests carry the token in
    /// `Authorization`, never a cookie, so an origin gains nothing it was not given.
    pub long_poll_origins: Option<Vec<String>>,
    /// Share names with other relays through Redis (`--registry`). Default `None`: this relay's
    /// own in-memory registry only.
    pub fleet: Option<FleetConfig>,
}

/// Default `--registry-ttl`: how long a name's record in the shared registry lives unless its
/// relay refreshes it (every third of it): 10 s, so a relay that dies is forgotten within
/// seconds, and a Redis hiccup of a few seconds costs nothing.
pub const DEFAULT_REGISTRY_TTL: Duration = Duration::from_secs(10);
/// How long one call to the shared registry may take before it counts as failed: 1 s. A
/// public request for a name held elsewhere waits for one such call.
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a forward waits to connect to the relay that holds the name: 2 s (then `502`).
/// Loopback and a LAN answer in well under a millisecond; a peer that does not answer
/// within 2 s is partitioned away or gone.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle keep-alive connections kept per peer relay: 64; more at once are dialled and closed
/// after their request.
pub const PEER_IDLE_PER_PEER: usize = 64;

/// The fleet: several relays that serve one name space, sharing which relay holds which name
/// through Redis (decisions D93–D97).
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The Redis URL, `redis://HOST:PORT[/DB]`.
    pub registry: String,
    /// The URL other relays reach this relay's peer listener at (`http://HOST:PORT`).
    pub advertise: String,
    /// Where the peer listener binds: forwards from other relays arrive there.
    pub peer_listen: SocketAddr,
    /// Default [`DEFAULT_REGISTRY_TTL`].
    pub ttl: Duration,
}

impl Config {
    /// Whether a browser page of `origin` may use the long-poll requests.
    pub(crate) fn long_poll_origin_allowed(&self, origin: &[u8]) -> bool {
        match &self.long_poll_origins {
            None => true,
            Some(list) => list
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin)),
        }
    }
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output (`--access-log -`).
    Stdout,
    /// A file, appended to (created if missing).
    File(std::path::PathBuf),
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
            max_connections: DEFAULT_MAX_CONNECTIONS,
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            tcp_keepalive: DEFAULT_TCP_KEEPALIVE,
            listener: ListenerConfig {
                // `ptth` (draft-kazuho-ptth-ptth) beside the 2009 tokens (decisions D82).
                rules: crate::proto::request::OfferRules::with_transposed(),
                limits: Limits::default(),
                read_buf: Some(AGENT_READ_BUF),
                ..ListenerConfig::default()
            },
            admin: None,
            tls: None,
            agent_certs: AgentCerts::Off,
            access_log: None,
            fleet: None,
            long_poll_timeout: DEFAULT_LONG_POLL_TIMEOUT,
            long_poll_origins: None,
        }
    }
}
