//! `ptth-connect`: expose a local HTTP service through a PTTH relay.
//!
//! Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 2 for bad arguments (including
//! unusable URLs), 3 when the relay refuses the credentials (401/403), 1 for anything else.
//!
//! The library's errors say what failed; this binary adds which of its flags fixes it
//! ([`hint`]), next to the error when it exits and next to the log line of a failure the agent
//! retries.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use humantime::Duration as Dur;
use ptth::Protocol;
use ptth::agent::inspect::{self, InspectConfig, Inspector, TIMING_FIELD, TIMING_QUEUE_WAIT};
use ptth::agent::{
    self, Agent, AgentError, ConfigError, HostHeader, NoProxy, Proxy, ProxyError, ProxyOrigin,
    ProxySettings, Transport, UrlError, Wire,
};
use ptth::tls::TlsFailure;

/// Exit status when the relay answers 401 or 403.
const EXIT_UNAUTHORIZED: u8 = 3;
/// Exit status for any other failure.
const EXIT_FAILURE: u8 = 1;
/// Exit status for bad arguments (clap uses it too).
const EXIT_USAGE: u8 = 2;

/// Expose a local HTTP service through a PTTH (Reverse HTTP) relay, from behind NAT.
///
/// Exit status: 0 after SIGINT/SIGTERM, 2 for bad arguments, 3 when the relay refuses the
/// token (401/403), 1 otherwise.
#[derive(Debug, Parser)]
#[command(name = "ptth-connect", version, about)]
struct Settings {
    /// Relay URL naming the service: `http://relay:8080/NAME` (path mode) or
    /// `http://NAME.relay-domain:8080/` (host mode).
    relay: String,

    /// Local upstream to forward requests to, e.g. `http://127.0.0.1:3000` or
    /// `https://127.0.0.1:3443` (a path is used as a prefix).
    #[arg(long, value_name = "URL")]
    to: String,

    /// The Host the upstream sees: `upstream` (--to's host and port) or `keep` (the public
    /// client's, as the relay passed it).
    #[arg(long, value_name = "WHICH", default_value = "upstream", value_parser = ["upstream", "keep"])]
    host_header: String,

    /// Bearer token sent to the relay as `Authorization: Bearer <token>`. Best given in the
    /// environment or with --token-file: `ps` shows the command line.
    #[arg(long, env = "PTTH_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// File holding the bearer token (its content, with surrounding white space trimmed);
    /// wins over --token and PTTH_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Idle parked connections to keep ready.
    #[arg(long, value_name = "N", default_value_t = agent::DEFAULT_CONNECTIONS)]
    connections: usize,

    /// Most connections in total (idle plus serving).
    #[arg(long, value_name = "M", default_value_t = agent::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,

    /// Upgrade protocol token: PTTH/0.9 or PTTH/1.0 (Yaler, AirPlay and the 2009 draft use 1.0),
    /// or ptth (draft-kazuho-ptth-ptth: a GET offering ALPN h2, http%2F1.1; with h2 each
    /// connection carries many requests at once).
    #[arg(long, default_value_t = agent::DEFAULT_PROTOCOL)]
    protocol: Protocol,

    /// With --protocol ptth, when the relay chooses HTTP/2: connections to keep (replaces
    /// --connections and --max-connections, which apply when it chooses HTTP/1.1).
    #[arg(long, value_name = "N", default_value_t = agent::DEFAULT_H2_CONNECTIONS)]
    h2_connections: usize,

    /// With --protocol ptth and HTTP/2: most upstream connections open at once, shared by all
    /// requests (more requests wait for one).
    #[arg(long, value_name = "N", default_value_t = agent::DEFAULT_UPSTREAM_CONNECTIONS,
          value_parser = at_least_one)]
    upstream_connections: usize,

    /// How connections reach the relay: auto (the upgrade; long polling when the answer shows
    /// it cannot pass, as behind an nginx without Upgrade pass-through), upgrade, or long-poll.
    #[arg(long, default_value = "auto", value_parser = ["auto", "upgrade", "long-poll"])]
    transport: String,

    /// Method of the upgrade request (ptth is always GET).
    #[arg(long, default_value_t = agent::DEFAULT_METHOD.to_string(), value_parser = ["POST", "GET"])]
    method: String,

    /// Extra field for the upgrade request, as `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Forward proxy (HTTP CONNECT) for the connections to the relay, as
    /// `http://[USER:PASSWORD@]HOST[:PORT]` (port 1080 by default; user and password
    /// percent-encoded); `""` for none. Wins over https_proxy, http_proxy and ALL_PROXY, which
    /// are read as curl reads them. The upstream (--to) is always reached directly.
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// Relay hosts reached without the proxy, as curl reads NO_PROXY: names (with the names
    /// under them), IP addresses, CIDR networks, or `*`; `""` for none. Wins over
    /// no_proxy/NO_PROXY.
    #[arg(long, value_name = "LIST")]
    no_proxy: Option<String>,
    /// For an https:// relay: trust this PEM CA instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// For an https:// relay that asks for one: PEM client certificate chain (mutual TLS).
    #[arg(long, value_name = "FILE")]
    client_cert: Option<PathBuf>,
    /// Private key for --client-cert (PEM).
    #[arg(long, value_name = "FILE")]
    client_key: Option<PathBuf>,
    /// For an https:// upstream (--to): trust this PEM CA instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    upstream_ca_cert: Option<PathBuf>,
    /// On SIGINT/SIGTERM, time for requests in flight to finish before their connections close
    /// (`30s`, `500ms`, `2m`, `1h`).
    #[arg(long, value_parser = common::duration, default_value_t = Dur::from(agent::DEFAULT_DRAIN_TIMEOUT))]
    drain_timeout: Dur,
    /// Runtime worker threads: 1 runs everything on one thread (a current-thread runtime).
    #[arg(long, value_name = "N", default_value_t = common::DEFAULT_THREADS,
          value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// Serve the request inspector (a page and ngrok's agent API, with replay) on ADDR;
    /// `--inspect` alone means 127.0.0.1:4040. Loopback only unless --allow-public-inspect.
    /// [default: off]
    #[arg(long, value_name = "ADDR", num_args = 0..=1,
          default_missing_value = agent::DEFAULT_INSPECT_ADDR)]
    inspect: Option<SocketAddr>,
    /// Allow --inspect on a non-loopback address (the inspector has no authentication and can
    /// replay requests; otherwise the agent refuses to start). [default: off]
    #[arg(long)]
    allow_public_inspect: bool,
    /// KiB of each request and response body the inspector keeps (the rest is counted).
    #[arg(long, value_name = "KIB", default_value_t = agent::DEFAULT_INSPECT_BODY_LIMIT / 1024)]
    inspect_body_kib: usize,
    /// Most requests the inspector keeps; the oldest goes first.
    #[arg(long, value_name = "N", default_value_t = agent::DEFAULT_INSPECT_MAX_REQUESTS)]
    inspect_max_requests: usize,
    /// Most MiB the inspector keeps in all (heads and kept bodies); the oldest goes first.
    #[arg(long, value_name = "MIB", default_value_t = agent::DEFAULT_INSPECT_MAX_BYTES >> 20)]
    inspect_max_mib: usize,
    /// Show Authorization, Cookie, Set-Cookie and Proxy-Authorization values in the inspector
    /// (they are shown as [redacted] otherwise). [default: off]
    #[arg(long)]
    inspect_show_credentials: bool,
    /// Admin address for /metrics (connections by state, responses by status, upstream
    /// latency, reconnects), IP:PORT or NAME:PORT (its first address); a non-loopback one needs
    /// --allow-public-admin. [default: off]
    #[arg(long, value_name = "ADDR", value_parser = common::listen_addr)]
    admin: Option<common::ListenAddr>,
    /// Serve --admin on a non-loopback address (/metrics has no authentication).
    #[arg(long)]
    allow_public_admin: bool,
}

/// A `--token-file` that holds no usable token.
#[derive(Debug, thiserror::Error)]
enum TokenFileError {
    #[error("--token-file {}: cannot read it", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--token-file {}: {what}; it should hold the token alone", path.display())]
    Content { path: PathBuf, what: &'static str },
}

/// The token: the content of `--token-file`, trimmed, else `--token` / `PTTH_TOKEN`.
fn token(settings: &Settings) -> Result<Option<String>, TokenFileError> {
    let Some(path) = &settings.token_file else {
        return Ok(settings.token.clone());
    };
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.clone(),
        source,
    })?;
    let content = |what| TokenFileError::Content {
        path: path.clone(),
        what,
    };
    match text.trim() {
        "" => Err(content("it is empty")),
        t if t.contains(['\r', '\n']) => Err(content("it holds more than one line")),
        t => Ok(Some(t.to_string())),
    }
}

/// The TLS settings for an `https://` relay, when any flag asks for more than the defaults.
fn transport(settings: &Settings) -> anyhow::Result<Option<Transport>> {
    let identity = match (&settings.client_cert, &settings.client_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => anyhow::bail!("--client-cert and --client-key go together"),
    };
    if settings.ca_cert.is_none() && identity.is_none() {
        return Ok(None);
    }
    let config = ptth::tls::client_config(settings.ca_cert.as_deref(), identity)?;
    Ok(Some(Transport::Tls(config)))
}

/// The forward proxy settings: `--proxy` (with the environment's no-proxy list, as curl
/// does) or the environment, then `--no-proxy` over either list.
fn proxy_settings(settings: &Settings) -> Result<ProxySettings, AgentError> {
    let proxy = match settings.proxy.as_deref() {
        Some("") => ProxySettings::direct(),
        Some(url) => ProxySettings::from_url(url)
            .map_err(|e| AgentError::BadConfig(ConfigError::Proxy(e)))?
            .no_proxy(NoProxy::from_env()),
        None => ProxySettings::from_env(),
    };
    Ok(match settings.no_proxy.as_deref() {
        Some(list) => proxy.no_proxy(NoProxy::parse(list)),
        None => proxy,
    })
}

/// A count that must be at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not `Name: value`"))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

/// Which flag fixes an agent error, when one does.
fn hint(e: &AgentError) -> Option<&'static str> {
    match e {
        AgentError::Tls { source, .. } => match source.kind() {
            TlsFailure::UnknownIssuer => {
                Some("pass the CA that signed the relay's certificate with --ca-cert FILE")
            }
            TlsFailure::NoCertificate => {
                Some("the relay wants a client certificate: --client-cert FILE --client-key FILE")
            }
            _ => None,
        },
        // The relay's 401 says which credential it missed (its claim refusal's text).
        AgentError::Unauthorized { detail, .. } if detail.contains("client certificate") => Some(
            "the relay wants a TLS client certificate from its client CA: \
             --client-cert FILE --client-key FILE",
        ),
        AgentError::Unauthorized { .. } => Some("check --token-file / --token / PTTH_TOKEN"),
        AgentError::Proxy(ProxyError::Refused { user: None, .. }) if is_proxy_auth(e) => Some(
            "the proxy wants a user and password: give them in its URL, \
             http://USER:PASSWORD@HOST:PORT (--proxy, or https_proxy / http_proxy / ALL_PROXY)",
        ),
        AgentError::Proxy(ProxyError::Refused { .. }) if is_proxy_auth(e) => Some(
            "the proxy rejected the user and password in its URL (--proxy, or https_proxy / \
             http_proxy / ALL_PROXY); percent-encode any @ : % in them",
        ),
        AgentError::Proxy(ProxyError::Connect { .. }) => Some(
            "check the proxy URL (--proxy, or https_proxy / http_proxy / ALL_PROXY), \
             or reach the relay directly with --no-proxy HOST or --proxy \"\"",
        ),
        AgentError::BadConfig(ConfigError::Proxy(bad)) => Some(match bad.origin {
            ProxyOrigin::Env(_) => {
                "fix or unset that variable, or override it with --proxy URL \
                 (--proxy \"\" for none)"
            }
            _ => "--proxy takes http://[USER:PASSWORD@]HOST[:PORT]",
        }),
        AgentError::BadRelayUrl {
            reason: UrlError::UserInfo,
            ..
        } => Some("give the token with --token or PTTH_TOKEN, not in the URL"),
        _ => None,
    }
}

fn is_proxy_auth(e: &AgentError) -> bool {
    matches!(e, AgentError::Proxy(p) if p.is_proxy_auth())
}

fn main() -> ExitCode {
    let settings: Settings = common::settings::parse();
    common::init_tracing();
    let runtime = match common::runtime(usize::from(settings.threads)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ptth-connect: starting the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ptth-connect: {}", common::report(e.as_ref()));
            let agent_error = e.downcast_ref::<AgentError>();
            if let Some(h) = agent_error.and_then(hint) {
                eprintln!("ptth-connect: hint: {h}");
            }
            if e.downcast_ref::<TokenFileError>().is_some() {
                return ExitCode::from(EXIT_USAGE);
            }
            ExitCode::from(match agent_error {
                Some(AgentError::Unauthorized { .. }) => EXIT_UNAUTHORIZED,
                Some(
                    AgentError::BadRelayUrl { .. }
                    | AgentError::BadUpstreamUrl { .. }
                    | AgentError::BadConfig(_),
                ) => EXIT_USAGE,
                _ => EXIT_FAILURE,
            })
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let upstream_tls = match &settings.upstream_ca_cert {
        Some(ca) => Some(ptth::tls::client_config(Some(ca), None)?),
        None => None,
    };
    let host_header = match settings.host_header.as_str() {
        "keep" => HostHeader::Keep,
        _ => HostHeader::Upstream,
    };
    let mut proxy = Proxy::with_tls(&settings.to, upstream_tls)?
        .upstream_connections(settings.upstream_connections)
        .host_header(host_header);
    let admin = match &settings.admin {
        Some(given) => {
            let addr = common::admin_addr(given, settings.allow_public_admin, "/metrics")?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("--admin {addr}: cannot listen: {e}"))?;
            Some(listener)
        }
        None => None,
    };
    let transport = transport(&settings)?;
    let forward_proxy = proxy_settings(&settings)?;
    let token = token(&settings)?;
    let mut builder = Agent::builder(settings.relay)
        .connections(settings.connections)
        .max_connections(settings.max_connections)
        .protocol(settings.protocol)
        .h2_connections(settings.h2_connections)
        .method(settings.method.parse()?)
        .drain_timeout(settings.drain_timeout.into())
        .proxy(forward_proxy)
        .wire(match settings.transport.as_str() {
            "upgrade" => Wire::Upgrade,
            "long-poll" => Wire::LongPoll,
            _ => Wire::Auto,
        })
        .on_failure(|e| {
            if let Some(h) = hint(e) {
                tracing::warn!("hint: {h}");
            }
        });
    if let Some(token) = token {
        builder = builder.token(token);
    }
    if let Some(t) = transport {
        builder = builder.transport(t);
    }
    for (name, value) in settings.headers {
        builder = builder.header(name, value);
    }
    if settings.inspect.is_some() {
        // The relay then says how long each request waited for this agent (decision D66).
        builder = builder.header(TIMING_FIELD, TIMING_QUEUE_WAIT);
    }
    let agent = builder.build()?;
    let inspector = match settings.inspect {
        Some(addr) => {
            if !addr.ip().is_loopback() && !settings.allow_public_inspect {
                anyhow::bail!(
                    "--inspect {addr} is not a loopback address: the inspector has no \
                     authentication and replays requests; add --allow-public-inspect if it is \
                     meant to be reachable from other hosts"
                );
            }
            let inspector = Inspector::new(InspectConfig {
                body_limit: settings.inspect_body_kib.saturating_mul(1024),
                max_requests: settings.inspect_max_requests,
                max_bytes: settings.inspect_max_mib.saturating_mul(1 << 20),
                redact: !settings.inspect_show_credentials,
                // Copy-as-curl and the HAR name the URL the public used.
                public_url: Some(agent.public_url().to_string()),
            });
            proxy = proxy.inspect(inspector.clone());
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("--inspect {addr}: cannot listen: {e}"))?;
            Some((listener, inspector))
        }
        None => None,
    };
    tracing::info!(relay = %agent.config().target.url(), upstream = %settings.to, "starting");
    let config = agent.config();
    if let Ok(Some((proxy, origin))) = config.proxy.proxy_for(&config.target.endpoint) {
        tracing::info!(%proxy, "relay connections go through the forward proxy {proxy} ({origin})");
    } else if settings.proxy.is_none() && !config.target.endpoint.tls && ignored_http_proxy() {
        tracing::warn!(
            "HTTP_PROXY is ignored for an http:// relay, as curl ignores it (a CGI request can \
             set it); set http_proxy or --proxy to use a proxy"
        );
    }
    if let Some((listener, inspector)) = inspector {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "inspector on http://{addr}/");
        tokio::spawn(inspect::serve(
            listener,
            inspector,
            proxy.clone(),
            settings.allow_public_inspect,
        ));
    }
    if let Some(listener) = admin {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
        let agent = agent.clone();
        // Served until the process ends, like the inspector.
        tokio::spawn(async move {
            agent
                .serve_admin(listener, std::future::pending::<()>())
                .await
        });
    }
    agent.serve_proxy(proxy, common::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Whether `HTTP_PROXY` is set where `http_proxy` is not: curl reads only the lower-case name.
fn ignored_http_proxy() -> bool {
    let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    set("HTTP_PROXY") && !set("http_proxy")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn help_shows_the_constants() {
        let help = Settings::command().render_help().to_string();
        for want in [
            format!("[default: {}]", agent::DEFAULT_CONNECTIONS),
            format!("[default: {}]", agent::DEFAULT_MAX_CONNECTIONS),
            format!("[default: {}]", agent::DEFAULT_H2_CONNECTIONS),
            format!("[default: {}]", agent::DEFAULT_UPSTREAM_CONNECTIONS),
            format!("[default: {}]", agent::DEFAULT_PROTOCOL),
            format!("[default: {}]", agent::DEFAULT_METHOD),
            format!("[default: {}]", Dur::from(agent::DEFAULT_DRAIN_TIMEOUT)),
            format!("[default: {}]", common::DEFAULT_THREADS),
            "[env: PTTH_TOKEN]".to_string(),
        ] {
            assert!(help.contains(&want), "{want} not in\n{help}");
        }
    }

    #[test]
    fn methods_are_post_or_get() {
        let parse = |m: &str| {
            common::settings::parse_from::<Settings>([
                "ptth-connect",
                "http://127.0.0.1:1/x",
                "--to",
                "http://127.0.0.1:2",
                "--method",
                m,
            ])
        };
        assert_eq!(parse("GET").unwrap().method, "GET");
        assert!(parse("PUT").is_err());
        let s = common::settings::parse_from::<Settings>([
            "ptth-connect",
            "http://127.0.0.1:1/x",
            "--to",
            "http://127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(s.method, "POST");
        assert_eq!(
            s.drain_timeout,
            Dur::from(std::time::Duration::from_secs(30))
        );
    }

    #[test]
    fn inspect_takes_an_optional_address() {
        let parse = |extra: &[&str]| {
            let mut args = vec![
                "ptth-connect",
                "http://127.0.0.1:1/x",
                "--to",
                "http://127.0.0.1:2",
            ];
            args.extend_from_slice(extra);
            common::settings::parse_from::<Settings>(args)
        };
        assert_eq!(parse(&[]).unwrap().inspect, None);
        let default: SocketAddr = agent::DEFAULT_INSPECT_ADDR.parse().unwrap();
        assert_eq!(parse(&["--inspect"]).unwrap().inspect, Some(default));
        let s = parse(&["--inspect", "127.0.0.1:5000", "--inspect-body-kib", "8"]).unwrap();
        assert_eq!(s.inspect, Some("127.0.0.1:5000".parse().unwrap()));
        assert_eq!(s.inspect_body_kib, 8);
        assert!(parse(&["--inspect", "not-an-address"]).is_err());
    }

    /// `--proxy` and `--no-proxy` over the environment: `""` turns each off.
    #[test]
    fn proxy_flags_win_over_the_environment() {
        let settings = |extra: &[&str]| {
            let mut args = vec![
                "ptth-connect",
                "http://relay.test:1/x",
                "--to",
                "http://127.0.0.1:2",
            ];
            args.extend_from_slice(extra);
            let s = common::settings::parse_from::<Settings>(args).unwrap();
            proxy_settings(&s)
        };
        let relay = ptth::agent::Endpoint::parse("http://relay.test:1/x").unwrap();
        let chosen = |s: &ProxySettings| s.proxy_for(&relay).unwrap().map(|(p, _)| p.to_string());
        let s = settings(&["--proxy", "http://p:3128"]).unwrap();
        assert_eq!(chosen(&s).as_deref(), Some("http://p:3128"));
        let s = settings(&["--proxy", "http://p:3128", "--no-proxy", "relay.test"]).unwrap();
        assert_eq!(chosen(&s), None);
        let s = settings(&["--proxy", ""]).unwrap();
        assert_eq!(s, ProxySettings::direct());
        assert!(matches!(
            settings(&["--proxy", "socks5://p"]),
            Err(AgentError::BadConfig(ConfigError::Proxy(_)))
        ));
    }
}
