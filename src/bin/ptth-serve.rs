//! `ptth-serve`: the public relay. Agents claim a name over PTTH; public requests for that name
//! are forwarded to them. Reads its settings (defaults, an optional TOML file, flags), then
//! runs [`ptth::relay::run`] until SIGINT or SIGTERM.

/// mimalloc instead of glibc's malloc: after a burst of agent connections, glibc kept the freed
/// handshake buffers in the heap, so idle parked connections looked several KiB larger in RSS
/// than they are (see BENCHMARKS.md, "relay memory per parked connection").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_e` in the mimalloc v3 that
/// libmimalloc-sys 0.1.49 builds; its own constants stop at 14 and go on at 16).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Hand freed pages back to the OS at once instead of 1 s later. mimalloc purges a delayed page
/// only on a later allocator call, so a relay that goes quiet after a claim burst (every agent
/// redialling after a restart) kept the burst's buffers: 10.4 KiB per parked connection at
/// N = 1,000 as read, 1.9 purged. Under load pages rarely empty: `strace -c` at c64 counted 1
/// `madvise` in 19,000 requests with the delay at 0.
/// An operator's own `MIMALLOC_PURGE_DELAY` (mimalloc reads it at start) is left in force.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets an option of the allocator this binary links; any value is valid for it.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use humantime::Duration as Dur;
use ptth::relay::{self, AccessLogTarget, AgentCerts, Config, Listeners, Tokens};

/// Where the relay listens when no address is given: loopback only, so a first run exposes
/// nothing to the network.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The public PTTH relay. Agents dial in and claim a name; public HTTP requests for
/// http://NAME.DOMAIN:PORT/ or http://HOST:PORT/NAME/ are forwarded to them.
#[derive(Debug, Parser)]
#[command(name = "ptth-serve", version, about)]
struct Settings {
    /// TOML file with the same settings as the flags, by their long names (`max-agents = 10`,
    /// `listen = ["0.0.0.0:80"]`): it replaces the defaults shown, and flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    // No clap default: the default address is used only when --listen-tls is not given either.
    #[arg(long = "listen", value_name = "ADDR", value_parser = common::listen_addr, help = format!(
        "Address to listen on for agents and public clients, IP:PORT or NAME:PORT (every \
         address the name resolves to); repeatable. \
         [default: {DEFAULT_LISTEN}, unless --listen-tls is given]"
    ))]
    listen: Vec<common::ListenAddr>,
    /// Domain for host-mode names (NAME.DOMAIN), without a port: the port is the listener's.
    #[arg(long, default_value = relay::DEFAULT_DOMAIN, value_parser = domain)]
    domain: String,
    /// Token file: lines `NAME TOKEN` or `* TOKEN`; `#` comments. [default: none]
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Accept anonymous agents on non-loopback addresses.
    #[arg(long)]
    allow_anonymous: bool,
    /// Keep client-sent Forwarded / X-Forwarded-* headers (append to them).
    #[arg(long)]
    trust_forwarded: bool,
    /// How long a request waits for an idle connection of a busy agent before 503.
    #[arg(long, value_parser = common::duration, default_value_t = Dur::from(relay::DEFAULT_QUEUE_TIMEOUT))]
    queue_timeout: Dur,
    /// Time from the end of the request body to the response head before 504.
    #[arg(long, value_parser = common::duration, default_value_t = Dur::from(relay::DEFAULT_RESPONSE_TIMEOUT))]
    response_timeout: Dur,
    /// How long a name whose agent left stays known (503 offline, kept for its token) before
    /// it is forgotten (404).
    #[arg(long, value_parser = common::duration, default_value_t = Dur::from(relay::DEFAULT_GRACE))]
    grace: Dur,
    /// How long requests for a name that lost its last connection are held for the agent to
    /// come back, before 503 offline at once (at most --grace).
    #[arg(long, value_parser = common::duration, default_value_t = Dur::from(relay::DEFAULT_RECONNECT_WINDOW))]
    reconnect_window: Dur,
    /// How long a long poll (agents whose Upgrade cannot pass) is held before 204.
    #[arg(long, value_parser = common::duration, default_value_t = Dur::from(relay::DEFAULT_LONG_POLL_TIMEOUT))]
    long_poll_timeout: Dur,
    /// Browser origins allowed to use long polling (CORS), comma-separated, or `*` for any
    /// (the browser agent at /.ptth/agent.js).
    #[arg(long, value_name = "LIST", default_value = "*")]
    long_poll_origins: String,
    /// Time for in-flight requests after SIGINT/SIGTERM.
    #[arg(long, value_parser = common::duration, default_value_t = Dur::from(relay::DEFAULT_DRAIN_TIMEOUT))]
    drain_timeout: Dur,
    /// Deadline for a request head (slow-loris), also the public idle timeout.
    #[arg(long, value_parser = common::duration, default_value_t = Dur::from(relay::DEFAULT_HEAD_TIMEOUT))]
    head_timeout: Dur,
    /// TCP keepalive idle time on every socket.
    #[arg(long, value_parser = common::duration, default_value_t = Dur::from(relay::DEFAULT_TCP_KEEPALIVE))]
    tcp_keepalive: Dur,
    /// Total agent connections.
    #[arg(long, default_value_t = relay::DEFAULT_MAX_AGENTS)]
    max_agents: usize,
    /// Agent connections per name.
    #[arg(long, default_value_t = relay::DEFAULT_MAX_PER_NAME)]
    max_per_name: usize,
    /// Agent connections per peer address.
    #[arg(long, default_value_t = relay::DEFAULT_MAX_PER_IP)]
    max_per_ip: usize,
    /// Public requests held per name while no connection is idle.
    #[arg(long, default_value_t = relay::DEFAULT_MAX_WAITING)]
    max_waiting: usize,
    /// Connections served at once (public clients, and agents until their switch); past it a
    /// new connection is closed at once.
    #[arg(long, default_value_t = relay::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Largest request head in bytes (431 past it).
    #[arg(long, default_value_t = ptth::limits::DEFAULT_MAX_HEAD_BYTES)]
    max_head_bytes: usize,
    /// Worker threads: 1 runs everything on one thread (fewest wakeups), 0 one per CPU.
    #[arg(long, default_value_t = usize::from(common::DEFAULT_THREADS))]
    threads: usize,
    /// Admin address for /metrics and /agents, IP:PORT or NAME:PORT (its first address); a
    /// non-loopback one needs --allow-public-admin. [default: off]
    #[arg(long, value_name = "ADDR", value_parser = common::listen_addr)]
    admin: Option<common::ListenAddr>,
    /// Serve --admin on a non-loopback address (/metrics and /agents have no authentication).
    #[arg(long)]
    allow_public_admin: bool,
    /// Write one JSON line per public request (time, name, method, path, status, bytes each
    /// way, duration, client) to FILE (appended), or to standard output with `-`. [default: off]
    #[arg(long, value_name = "FILE|-")]
    access_log: Option<PathBuf>,
    /// Address to serve HTTPS on (agents and public clients), as --listen; repeatable; needs
    /// --tls-cert and --tls-key. Runs beside --listen; alone, no plain listener is opened.
    /// [default: off]
    #[arg(long = "listen-tls", value_name = "ADDR", value_parser = common::listen_addr)]
    listen_tls: Vec<common::ListenAddr>,
    /// PEM certificate chain for the TLS listeners (leaf first).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert (PKCS#8, RSA or EC).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA whose client certificates agents must present on the TLS listeners (mutual TLS).
    /// [default: off]
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// With --client-ca: the agent's certificate must also be valid for NAME.DOMAIN.
    #[arg(long)]
    client_cert_names: bool,
    /// Join a fleet of relays that share names through Redis: redis://HOST:PORT[/DB]. Needs
    /// --advertise. [default: off]
    #[arg(long, value_name = "URL")]
    registry: Option<String>,
    /// With --registry: the URL other relays of the fleet reach this relay's peer listener
    /// at, http://HOST:PORT.
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// With --registry: where the peer listener binds (forwards from other relays; keep it off
    /// the public network). [default: the --advertise address]
    #[arg(long, value_name = "ADDR", value_parser = common::listen_addr)]
    peer_listen: Option<common::ListenAddr>,
    /// With --registry: how long a name's record lives in Redis unless this relay refreshes
    /// it (every third of it).
    #[arg(long, value_parser = common::duration, default_value_t = Dur::from(relay::DEFAULT_REGISTRY_TTL))]
    registry_ttl: Dur,
}

/// Read `--domain`: a host name, never with a port or a scheme (host mode matches
/// `NAME.DOMAIN` and takes the port from the listener, so `relay.example:8080` would match
/// nothing).
fn domain(s: &str) -> Result<String, String> {
    if s.contains("://") || s.contains('/') {
        return Err(format!(
            "{s:?} is not a domain: give the host name alone (relay.example), no scheme or path"
        ));
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        return Err(format!(
            "{s:?} has a port ({port}): give the domain alone ({host}); the port is the \
             listener's (--listen), and host-mode URLs are http://NAME.{host}:PORT/"
        ));
    }
    if s.is_empty() {
        return Err("the domain is empty".into());
    }
    Ok(s.to_ascii_lowercase())
}

impl Settings {
    /// The addresses to listen on, plain and TLS: the default plain address when neither is
    /// given. `--listen-tls` alone opens no plain listener: a relay set up for TLS does not
    /// also serve plain HTTP unless asked to.
    fn listeners(&self) -> anyhow::Result<(Vec<SocketAddr>, Vec<SocketAddr>)> {
        let all =
            |given: &[common::ListenAddr]| given.iter().flat_map(|l| l.addrs.clone()).collect();
        let mut listen: Vec<SocketAddr> = all(&self.listen);
        if listen.is_empty() && self.listen_tls.is_empty() {
            listen.push(
                DEFAULT_LISTEN
                    .parse()
                    .expect("DEFAULT_LISTEN is an address"),
            );
        }
        if !self.listen_tls.is_empty() && self.tls_cert.is_none() {
            anyhow::bail!("--listen-tls needs --tls-cert and --tls-key");
        }
        Ok((listen, all(&self.listen_tls)))
    }

    /// The fleet settings: --registry and --advertise together, the peer listener at the
    /// advertised address unless --peer-listen says otherwise.
    fn fleet(&self) -> anyhow::Result<Option<relay::FleetConfig>> {
        let (registry, advertise) = match (&self.registry, &self.advertise) {
            (None, None) => {
                if self.peer_listen.is_some() {
                    anyhow::bail!("--peer-listen needs --registry and --advertise");
                }
                return Ok(None);
            }
            (Some(r), Some(a)) => (r.clone(), a.trim_end_matches('/').to_string()),
            _ => anyhow::bail!("--registry and --advertise go together"),
        };
        let peer_listen = match &self.peer_listen {
            Some(l) => l.addrs[0],
            None => {
                let authority = advertise.strip_prefix("http://").ok_or_else(|| {
                    anyhow::anyhow!("--advertise {advertise:?} is not http://HOST:PORT")
                })?;
                common::listen_addr(authority)
                    .map_err(|e| anyhow::anyhow!("--advertise: {e}; give --peer-listen"))?
                    .addrs[0]
            }
        };
        Ok(Some(relay::FleetConfig {
            registry,
            advertise,
            peer_listen,
            ttl: self.registry_ttl.into(),
        }))
    }

    /// The admin address, refused when it is not loopback unless that is asked for: the admin
    /// endpoints have no authentication and list every name and peer.
    fn admin(&self) -> anyhow::Result<Option<SocketAddr>> {
        self.admin
            .as_ref()
            .map(|a| common::admin_addr(a, self.allow_public_admin, "/metrics and /agents"))
            .transpose()
    }

    /// The relay's configuration: the one place it is built.
    fn relay_config(&self) -> anyhow::Result<Config> {
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
        let defaults = Config::default();
        let listener = ptth::listener::ListenerConfig {
            limits: ptth::Limits {
                max_head_bytes: self.max_head_bytes,
                ..defaults.listener.limits
            },
            ..defaults.listener
        };
        Ok(Config {
            tls,
            agent_certs,
            domain: self.domain.clone(),
            tokens,
            allow_anonymous: self.allow_anonymous,
            trust_forwarded: self.trust_forwarded,
            queue_timeout: self.queue_timeout.into(),
            response_timeout: self.response_timeout.into(),
            grace: self.grace.into(),
            reconnect_window: self.reconnect_window.into(),
            long_poll_timeout: self.long_poll_timeout.into(),
            long_poll_origins: match self.long_poll_origins.trim() {
                "*" => None,
                list => Some(
                    list.split(',')
                        .map(|o| o.trim().to_string())
                        .filter(|o| !o.is_empty())
                        .collect(),
                ),
            },
            drain_timeout: self.drain_timeout.into(),
            head_timeout: self.head_timeout.into(),
            tcp_keepalive: self.tcp_keepalive.into(),
            max_agents: self.max_agents,
            max_per_name: self.max_per_name,
            max_per_ip: self.max_per_ip,
            max_waiting: self.max_waiting,
            max_connections: self.max_connections,
            listener,
            admin: self.admin()?,
            fleet: self.fleet()?,
            access_log: self.access_log.as_ref().map(|p| {
                if p.as_os_str() == "-" {
                    AccessLogTarget::Stdout
                } else {
                    AccessLogTarget::File(p.clone())
                }
            }),
        })
    }
}

fn bind_all(addrs: &[SocketAddr]) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    addrs
        .iter()
        .map(|a| ptth::relay::listen(*a).with_context(|| format!("binding {a}")))
        .collect()
}

fn main() -> ExitCode {
    tune_allocator();
    let settings: Settings = common::settings::parse();
    let result = common::runtime(settings.threads)
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(settings)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ptth-serve: {}", common::report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    common::init_tracing();
    let (listen, listen_tls) = settings.listeners()?;
    let config = settings.relay_config()?;
    let listeners = Listeners {
        plain: bind_all(&listen)?,
        tls: bind_all(&listen_tls)?,
    };
    let domain = config.domain.clone();
    let r = relay::Relay::new(listeners, config)
        .await
        .map_err(|e| match e {
            // The library names the setting; the flags that give it are ours to name.
            relay::RelayError::AnonymousNotLoopback(_) => {
                anyhow::anyhow!("{e}; give --tokens FILE or --allow-anonymous")
            }
            relay::RelayError::TlsWithoutCertificate => {
                anyhow::anyhow!("{e}; give --tls-cert and --tls-key")
            }
            e => e.into(),
        })?;
    let handle = r.handle();
    // Watched before the banner: a SIGHUP sent as soon as the relay says it listens must
    // reload, not end the process (the default action of SIGHUP).
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("watching for SIGHUP (reloads)")?;
    let plain = handle.local_addrs().iter().map(|a| ("http", a));
    for (scheme, &bound) in plain.chain(handle.tls_addrs().iter().map(|a| ("https", a))) {
        let (a, port) = (reachable(bound), bound.port());
        tracing::info!("listening on {scheme}://{bound}");
        if a != bound {
            println!(
                "note:    {bound} is every address of this host: from another machine, use \
                 its name or address instead of {}",
                a.ip()
            );
        }
        println!(
            "agents:  dial {scheme}://{a}/NAME (Upgrade: PTTH/0.9, PTTH/1.0, or ptth with ALPN h2)"
        );
        println!("public:  {scheme}://{a}/NAME/...  or  {scheme}://NAME.{domain}:{port}/...");
    }
    if let Some(bound) = handle.admin_addr() {
        let a = reachable(bound);
        println!("admin:   http://{a}/metrics  http://{a}/agents");
    }
    if let Some(f) = &settings.advertise {
        println!("fleet:   peers reach this relay at {f}");
    }
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(hup, settings, handle));
    r.run(common::shutdown_signal()).await?;
    Ok(())
}

/// On each SIGHUP, read the token file and the TLS certificate and key again and give them to
/// the running relay; connections stay as they are. A file that fails keeps the settings in
/// force, and the log says why.
#[cfg(unix)]
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    settings: Settings,
    relay: relay::RelayHandle,
) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the token file and the TLS certificate");
        if let Some(path) = &settings.tokens {
            match Tokens::load(path) {
                Ok(tokens) => {
                    relay.set_tokens(tokens);
                    tracing::info!("reloaded the tokens from {}", path.display());
                }
                Err(e) => tracing::warn!(
                    "keeping the tokens in force: reloading {} failed: {}",
                    path.display(),
                    common::report(&e)
                ),
            }
        }
        if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
            match ptth::tls::server_config(cert, key, settings.client_ca.as_deref()) {
                Ok(tls) => {
                    relay.set_tls(tls);
                    tracing::info!(
                        "reloaded the TLS certificate {} and key {}",
                        cert.display(),
                        key.display()
                    );
                }
                Err(e) => tracing::warn!(
                    "keeping the TLS certificate in force: {}",
                    common::report(&e)
                ),
            }
        }
    }
}

/// An address a client can dial to reach `bound`: the loopback address of the same family in
/// place of the unspecified one (`0.0.0.0`, `[::]`), which is no destination.
fn reachable(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, bound.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, bound.port()).into(),
        _ => bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `MI_OPTION_PURGE_DELAY` is an index into mimalloc's option enum, which a crate bump may
    /// renumber: the option there must be the purge delay, whose stock value is 1000 ms (no
    /// other option of mimalloc v3 defaults to 1000). Fails on a renumbering instead of
    /// silently tuning another option.
    #[test]
    fn the_purge_delay_index_is_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("skipped: MIMALLOC_PURGE_DELAY is set in this environment");
            return;
        }
        // SAFETY: reads an option of the allocator this binary links.
        let stock = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            stock, 1000,
            "option {MI_OPTION_PURGE_DELAY} is not the purge delay"
        );
    }

    /// Every setting left alone gives the library's own default configuration.
    #[test]
    fn no_flags_is_the_library_default() {
        let s: Settings = common::settings::parse_from(["ptth-serve"]).unwrap();
        let (c, d) = (s.relay_config().unwrap(), Config::default());
        assert_eq!(
            (
                c.queue_timeout,
                c.response_timeout,
                c.grace,
                c.reconnect_window
            ),
            (
                d.queue_timeout,
                d.response_timeout,
                d.grace,
                d.reconnect_window
            )
        );
        assert_eq!(
            (c.drain_timeout, c.head_timeout, c.tcp_keepalive),
            (d.drain_timeout, d.head_timeout, d.tcp_keepalive)
        );
        assert_eq!(
            (c.max_agents, c.max_per_name, c.max_per_ip, c.max_waiting),
            (d.max_agents, d.max_per_name, d.max_per_ip, d.max_waiting)
        );
        assert_eq!(c.max_connections, d.max_connections);
        assert_eq!(
            (&c.domain, &c.listener.limits, c.admin),
            (&d.domain, &d.listener.limits, d.admin)
        );
        assert_eq!(
            (c.listener.read_buf, &c.listener.reversed_host),
            (d.listener.read_buf, &d.listener.reversed_host)
        );
        assert_eq!(
            (c.allow_anonymous, c.trust_forwarded, c.agent_certs),
            (d.allow_anonymous, d.trust_forwarded, d.agent_certs)
        );
        assert!(c.tokens.is_none() && c.tls.is_none());
        assert_eq!(s.threads, 1);
        let (plain, tls) = s.listeners().unwrap();
        assert_eq!(plain, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert!(tls.is_empty());
    }

    /// The help prints each default from the constant the relay uses.
    #[test]
    fn help_shows_the_constants() {
        let help = Settings::command().render_help().to_string();
        for want in [
            format!("[default: {}]", Dur::from(relay::DEFAULT_QUEUE_TIMEOUT)),
            format!("[default: {}]", relay::DEFAULT_MAX_AGENTS),
            format!("[default: {}]", relay::DEFAULT_MAX_CONNECTIONS),
            format!("[default: {}]", ptth::limits::DEFAULT_MAX_HEAD_BYTES),
            format!("[default: {}]", relay::DEFAULT_DOMAIN),
            format!("[default: {DEFAULT_LISTEN}, unless --listen-tls is given]"),
        ] {
            assert!(help.contains(&want), "{want} not in\n{help}");
        }
    }
}
