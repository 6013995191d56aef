//! `ptth-connect`: expose a local HTTP service through a PTTH relay.
//!
//! Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 2 for bad arguments (including
//! unusable URLs), 3 when the relay refuses the credentials (401/403), 1 for anything else.

mod common;

use std::process::ExitCode;

use clap::Parser;
use ptth::Protocol;
use ptth::agent::proxy::Proxy;
use ptth::agent::{Agent, AgentError, DEFAULT_CONNECTIONS, DEFAULT_MAX_CONNECTIONS, Transport};

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
struct Args {
    /// Relay URL naming the service: `http://relay:8080/NAME` (path mode) or
    /// `http://NAME.relay-domain:8080/` (host mode).
    relay: String,

    /// Local upstream to forward requests to, e.g. `http://127.0.0.1:3000` or
    /// `https://127.0.0.1:3443` (a path is used as a prefix).
    #[arg(long)]
    to: String,

    /// Bearer token sent to the relay as `Authorization: Bearer <token>`.
    #[arg(long, env = "PTTH_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Idle parked connections to keep ready.
    #[arg(long, default_value_t = DEFAULT_CONNECTIONS)]
    connections: usize,

    /// Most connections in total (idle plus serving).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,

    /// Upgrade protocol token: PTTH/0.9 or PTTH/1.0 (Yaler, AirPlay and the 2009 draft use 1.0).
    #[arg(long, default_value = "PTTH/0.9")]
    protocol: Protocol,

    /// Method of the upgrade request.
    #[arg(long, default_value = "POST", value_parser = ["POST", "GET"])]
    method: String,

    /// Extra field for the upgrade request, as `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// For an https:// relay: trust this PEM CA instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// For an https:// relay that asks for one: PEM client certificate chain (mutual TLS).
    #[arg(long, value_name = "FILE")]
    client_cert: Option<std::path::PathBuf>,
    /// Private key for --client-cert (PEM).
    #[arg(long, value_name = "FILE")]
    client_key: Option<std::path::PathBuf>,
    /// For an https:// upstream (--to): trust this PEM CA instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    upstream_ca_cert: Option<std::path::PathBuf>,
    /// On SIGINT/SIGTERM, time for requests in flight to finish before their connections close
    /// (`30s`, `500ms`, `2m`).
    #[arg(long, default_value = "30s", value_parser = common::parse_duration)]
    drain_timeout: std::time::Duration,
    /// Runtime worker threads: 1 runs everything on one thread (a current-thread runtime).
    #[arg(long, default_value_t = DEFAULT_THREADS, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

/// The TLS settings for an `https://` relay, when any flag asks for more than the defaults.
fn transport(args: &Args) -> anyhow::Result<Option<Transport>> {
    let identity = match (&args.client_cert, &args.client_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => anyhow::bail!("--client-cert and --client-key go together"),
    };
    if args.ca_cert.is_none() && identity.is_none() {
        return Ok(None);
    }
    let config = ptth::tls::client_config(args.ca_cert.as_deref(), identity)?;
    Ok(Some(Transport::Tls(config)))
}

/// Worker threads by default (see `--threads`).
const DEFAULT_THREADS: u16 = 1;

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not `Name: value`"))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    common::init_tracing();
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ptth-connect: starting the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ptth-connect: {e:#}");
            ExitCode::from(match e.downcast_ref::<AgentError>() {
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

async fn run(args: Args) -> anyhow::Result<()> {
    let upstream_tls = match &args.upstream_ca_cert {
        Some(ca) => Some(ptth::tls::client_config(Some(ca), None)?),
        None => None,
    };
    let proxy = Proxy::with_tls(&args.to, upstream_tls)?;
    let transport = transport(&args)?;
    let mut builder = Agent::builder(args.relay)
        .connections(args.connections)
        .max_connections(args.max_connections)
        .protocol(args.protocol)
        .method(args.method.parse()?)
        .drain_timeout(args.drain_timeout);
    if let Some(token) = args.token {
        builder = builder.token(token);
    }
    if let Some(t) = transport {
        builder = builder.transport(t);
    }
    for (name, value) in args.headers {
        builder = builder.header(name, value);
    }
    let agent = builder.build()?;
    tracing::info!(relay = %agent.config().target.url(), upstream = %args.to, "starting");
    agent.serve_proxy(proxy, common::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
