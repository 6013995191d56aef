//! What both binaries do the same way around the library: log setup, the stop signal, the
//! runtime, error reports, duration values ([`duration`]), listen addresses ([`listen_addr`]),
//! the `--admin` address guard ([`admin_addr`]) and layered settings ([`settings`]).
//!
//! Cargo builds only `src/bin/*.rs` and `src/bin/*/main.rs` as binaries, so this folder is a
//! plain module that each binary includes with `mod common;`.

pub mod settings;

use std::net::{SocketAddr, ToSocketAddrs};

/// A duration as the flags and the settings file take it: what `humantime` reads (`500ms`,
/// `30s`, `2m`, `1h`, `1h 30m`, `2days`), or a bare number of seconds, which the flags always
/// took. `--help` prints defaults in humantime's form (`30s`, `1m`, `15m`), which reads back.
pub fn duration(s: &str) -> Result<humantime::Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let secs = s
            .parse()
            .map_err(|_| format!("duration {s:?} is too long"))?;
        return Ok(std::time::Duration::from_secs(secs).into());
    }
    s.parse()
        .map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Worker threads by default (`--threads`): 1, a current-thread runtime. Both binaries mostly
/// wait on sockets; one thread has the fewest wakeups and cross-thread hand-offs (see `bench/`
/// for the measurement behind it).
pub const DEFAULT_THREADS: u16 = 1;

/// Log to stderr (stdout stays free for scripts), filtered by `RUST_LOG`, `info` by default;
/// colours only on a terminal.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The async runtime for `threads` workers: 1 is a current-thread runtime, 0 one worker per
/// CPU, any other number that many workers.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b
    };
    builder.enable_all().build()
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what `kill`, systemd and container runtimes send).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// An error and its sources on one line, each once: the library's errors end with their
/// source's words already, and repeating them would only make the line longer.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = inner.source();
    }
    line
}

/// A listen address as given (`IP:PORT` or `NAME:PORT`) and the addresses it resolved to.
#[derive(Debug, Clone)]
pub struct ListenAddr {
    /// Every address it names, each once, in the resolver's order.
    pub addrs: Vec<SocketAddr>,
}

/// Read a listen address: `IP:PORT`, `[IPv6]:PORT`, or `NAME:PORT`, resolved now (once, at
/// start) so that a name that does not resolve is a usage error naming the flag.
pub fn listen_addr(s: &str) -> Result<ListenAddr, String> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    if let Ok(a) = s.parse::<SocketAddr>() {
        addrs.push(a);
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} has no port: give HOST:PORT"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("{s:?} is not HOST:PORT"));
        }
        for a in s
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
    }
    if addrs.is_empty() {
        return Err(format!("{s:?} resolves to no address"));
    }
    Ok(ListenAddr { addrs })
}

/// The address of `--admin` (its first address): refused when it is not loopback unless
/// `--allow-public-admin` is given, since the admin pages (`pages`) have no authentication.
pub fn admin_addr(
    given: &ListenAddr,
    allow_public: bool,
    pages: &str,
) -> anyhow::Result<SocketAddr> {
    let admin = given.addrs[0];
    if !admin.ip().is_loopback() && !allow_public {
        anyhow::bail!(
            "--admin {admin} is not a loopback address: {pages} have no authentication; add \
             --allow-public-admin if they are meant to be reachable from the network"
        );
    }
    Ok(admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Terse(#[source] std::io::Error);

    #[test]
    fn durations_read_humantime_and_bare_seconds_and_print_as_they_read() {
        use std::time::Duration;
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("30", Duration::from_secs(30)),
            (" 2m ", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1h 30m", Duration::from_secs(5400)),
            ("2days", Duration::from_secs(2 * 86_400)),
            ("0", Duration::ZERO),
        ] {
            assert_eq!(duration(text).map(Duration::from), Ok(want), "{text}");
        }
        for bad in [
            "",
            "s",
            "-1s",
            "10x",
            "99999999999999999999",
            "99999999999999999999h",
        ] {
            let e = duration(bad).unwrap_err();
            assert!(e.contains(&format!("{:?}", bad.trim())), "{bad}: {e}");
        }
        for d in [30, 60, 90, 900, 7200].map(Duration::from_secs) {
            let text = humantime::Duration::from(d).to_string();
            assert_eq!(duration(&text).map(Duration::from), Ok(d), "{text}");
        }
        assert_eq!(
            humantime::Duration::from(Duration::from_secs(60)).to_string(),
            "1m"
        );
    }

    #[test]
    fn reports_name_each_source_once() {
        let io = || std::io::Error::other("inner");
        assert_eq!(report(&Quoting(io())), "outer: inner");
        assert_eq!(report(&Terse(io())), "outer: inner");
    }
}
