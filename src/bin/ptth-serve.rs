//! `ptth-serve`: the public relay. Agents claim a name over PTTH; public requests for that name
//! are forwarded to them. Parses flags (and an optional TOML file), then runs
//! [`ptth::relay::run`] until SIGINT or SIGTERM.

/// mimalloc instead of glibc's malloc: after a burst of agent connections, glibc kept the freed
/// handshake buffers in the heap, so idle parked connections looked several KiB larger in RSS
/// than they are (see BENCHMARKS.md, "relay memory per parked connection").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ptth::relay::{self, AgentCerts, Config, Listeners, auth::Tokens};
use serde::Deserialize;

/// The public PTTH relay. Agents dial in and claim a name; public HTTP requests for
/// http://NAME.DOMAIN:PORT/ or http://HOST:PORT/NAME/ are forwarded to them.
#[derive(Debug, Parser, Default, Deserialize)]
#[command(version, about)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Args {
    /// TOML file with the same settings as the flags (flags win).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on for agents and public clients; repeatable. [default: 127.0.0.1:8080]
    #[arg(long = "listen")]
    #[serde(default)]
    listen: Vec<SocketAddr>,
    /// Domain for host-mode names (NAME.DOMAIN). [default: localhost]
    #[arg(long)]
    domain: Option<String>,
    /// Token file: lines `NAME TOKEN` or `* TOKEN`; `#` comments.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Accept anonymous agents on non-loopback addresses.
    #[arg(long)]
    #[serde(default)]
    allow_anonymous: bool,
    /// Keep client-sent Forwarded / X-Forwarded-* headers (append to them).
    #[arg(long)]
    #[serde(default)]
    trust_forwarded: bool,
    /// How long a request waits for an idle connection of a busy agent before 503.
    /// [default: 10s]
    #[arg(long, value_parser = common::parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    queue_timeout: Option<Duration>,
    /// Time from the end of the request body to the response head before 504. [default: 60s]
    #[arg(long, value_parser = common::parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    response_timeout: Option<Duration>,
    /// How long a name whose agent left stays known (503 offline, kept for its token) before
    /// it is forgotten (404). [default: 30s]
    #[arg(long, value_parser = common::parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    grace: Option<Duration>,
    /// How long requests for a name that lost its last connection are held for the agent to
    /// come back, before 503 offline at once (at most --grace). [default: 5s]
    #[arg(long, value_parser = common::parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    reconnect_window: Option<Duration>,
    /// Time for in-flight requests after SIGINT/SIGTERM. [default: 30s]
    #[arg(long, value_parser = common::parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    drain_timeout: Option<Duration>,
    /// Deadline for a request head (slow-loris), also the public idle timeout. [default: 10s]
    #[arg(long, value_parser = common::parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    head_timeout: Option<Duration>,
    /// TCP keepalive idle time on every socket. [default: 10s]
    #[arg(long, value_parser = common::parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    tcp_keepalive: Option<Duration>,
    /// Total agent connections. [default: 4096]
    #[arg(long)]
    max_agents: Option<usize>,
    /// Agent connections per name. [default: 256]
    #[arg(long)]
    max_per_name: Option<usize>,
    /// Agent connections per peer address. [default: 256]
    #[arg(long)]
    max_per_ip: Option<usize>,
    /// Public requests held per name while no connection is idle. [default: 1024]
    #[arg(long)]
    max_waiting: Option<usize>,
    /// Largest request head in bytes (431 past it). [default: 16384]
    #[arg(long)]
    max_head_bytes: Option<usize>,
    /// Worker threads: 1 runs everything on one thread (fewest wakeups), 0 one per CPU.
    /// [default: 1]
    #[arg(long)]
    threads: Option<usize>,
    /// Admin address for /metrics and /agents. [default: off]
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Address to serve HTTPS on (agents and public clients); repeatable; needs --tls-cert
    /// and --tls-key. Runs beside --listen.
    #[arg(long = "listen-tls")]
    #[serde(default)]
    listen_tls: Vec<SocketAddr>,
    /// PEM certificate chain for the TLS listeners (leaf first).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert (PKCS#8, RSA or EC).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA whose client certificates agents must present on the TLS listeners (mutual TLS).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// With --client-ca: the agent's certificate must also be valid for NAME.DOMAIN.
    #[arg(long)]
    #[serde(default)]
    client_cert_names: bool,
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    common::parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl Args {
    /// Flags override the file.
    fn merge(self, file: Args) -> Args {
        Args {
            config: self.config,
            listen: if self.listen.is_empty() {
                file.listen
            } else {
                self.listen
            },
            domain: self.domain.or(file.domain),
            tokens: self.tokens.or(file.tokens),
            allow_anonymous: self.allow_anonymous || file.allow_anonymous,
            trust_forwarded: self.trust_forwarded || file.trust_forwarded,
            queue_timeout: self.queue_timeout.or(file.queue_timeout),
            response_timeout: self.response_timeout.or(file.response_timeout),
            grace: self.grace.or(file.grace),
            reconnect_window: self.reconnect_window.or(file.reconnect_window),
            drain_timeout: self.drain_timeout.or(file.drain_timeout),
            head_timeout: self.head_timeout.or(file.head_timeout),
            tcp_keepalive: self.tcp_keepalive.or(file.tcp_keepalive),
            max_agents: self.max_agents.or(file.max_agents),
            max_per_name: self.max_per_name.or(file.max_per_name),
            max_per_ip: self.max_per_ip.or(file.max_per_ip),
            max_waiting: self.max_waiting.or(file.max_waiting),
            max_head_bytes: self.max_head_bytes.or(file.max_head_bytes),
            admin: self.admin.or(file.admin),
            threads: self.threads.or(file.threads),
            listen_tls: if self.listen_tls.is_empty() {
                file.listen_tls
            } else {
                self.listen_tls
            },
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            client_ca: self.client_ca.or(file.client_ca),
            client_cert_names: self.client_cert_names || file.client_cert_names,
        }
    }

    fn into_config(self) -> anyhow::Result<Config> {
        let d = Config::default();
        let mut limits = d.limits.clone();
        if let Some(n) = self.max_head_bytes {
            limits.max_head_bytes = n;
        }
        let tokens = match &self.tokens {
            Some(p) => Some(Tokens::load(p).with_context(|| format!("loading {}", p.display()))?),
            None => None,
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ptth::tls::server_config(
                cert,
                key,
                self.client_ca.as_deref(),
            )?),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        if tls.is_none() && self.client_ca.is_some() {
            anyhow::bail!("--client-ca needs --tls-cert and --tls-key");
        }
        if self.client_cert_names && self.client_ca.is_none() {
            anyhow::bail!("--client-cert-names needs --client-ca");
        }
        let agent_certs = match (&self.client_ca, self.client_cert_names) {
            (None, _) => AgentCerts::Off,
            (Some(_), false) => AgentCerts::Required,
            (Some(_), true) => AgentCerts::MatchName,
        };
        Ok(Config {
            tls,
            agent_certs,
            domain: self.domain.unwrap_or(d.domain).to_ascii_lowercase(),
            tokens,
            allow_anonymous: self.allow_anonymous,
            trust_forwarded: self.trust_forwarded,
            queue_timeout: self.queue_timeout.unwrap_or(d.queue_timeout),
            response_timeout: self.response_timeout.unwrap_or(d.response_timeout),
            grace: self.grace.unwrap_or(d.grace),
            reconnect_window: self.reconnect_window.unwrap_or(d.reconnect_window),
            drain_timeout: self.drain_timeout.unwrap_or(d.drain_timeout),
            head_timeout: self.head_timeout.unwrap_or(d.head_timeout),
            tcp_keepalive: self.tcp_keepalive.unwrap_or(d.tcp_keepalive),
            max_agents: self.max_agents.unwrap_or(d.max_agents),
            max_per_name: self.max_per_name.unwrap_or(d.max_per_name),
            max_per_ip: self.max_per_ip.unwrap_or(d.max_per_ip),
            max_waiting: self.max_waiting.unwrap_or(d.max_waiting),
            limits,
            admin: self.admin,
        })
    }
}

/// Worker threads when `--threads` is not given (see `bench/` for the measurement behind it).
const DEFAULT_THREADS: usize = 1;

/// Where the relay listens when no address is given: loopback only, so a first run exposes
/// nothing to the network.
const DEFAULT_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 8080);

async fn bind_all(addrs: &[SocketAddr]) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    let mut out = Vec::new();
    for a in addrs {
        out.push(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding {a}"))?,
        );
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: Args =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        args = args.merge(file);
    }
    let threads = args.threads.unwrap_or(DEFAULT_THREADS);
    let mut rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b
    };
    rt.enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args))
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    common::init_tracing();
    let mut listen = std::mem::take(&mut args.listen);
    let listen_tls = std::mem::take(&mut args.listen_tls);
    if listen.is_empty() && listen_tls.is_empty() {
        listen.push(SocketAddr::from(DEFAULT_LISTEN));
    }
    if !listen_tls.is_empty() && args.tls_cert.is_none() {
        anyhow::bail!("--listen-tls needs --tls-cert and --tls-key");
    }
    let config = args.into_config()?;
    let listeners = Listeners {
        plain: bind_all(&listen).await?,
        tls: bind_all(&listen_tls).await?,
    };
    let domain = config.domain.clone();
    let r = relay::Relay::new(listeners, config).await?;
    let handle = r.handle();
    let plain = handle.local_addrs().iter().map(|a| ("http", a));
    for (scheme, a) in plain.chain(handle.tls_addrs().iter().map(|a| ("https", a))) {
        let port = a.port();
        tracing::info!("listening on {scheme}://{a}");
        println!("agents:  dial {scheme}://{a}/NAME (Upgrade: PTTH/0.9 or PTTH/1.0)");
        println!("public:  {scheme}://{a}/NAME/...  or  {scheme}://NAME.{domain}:{port}/...");
    }
    if let Some(a) = handle.admin_addr() {
        println!("admin:   http://{a}/metrics  http://{a}/agents");
    }
    r.run(common::shutdown_signal()).await?;
    Ok(())
}
