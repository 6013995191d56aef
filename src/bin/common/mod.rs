//! What both binaries do the same way around the library: log setup, the stop signal, the
//! runtime, error reports, duration values ([`duration`]) and layered settings ([`settings`]).
//!
//! Cargo builds only `src/bin/*.rs` and `src/bin/*/main.rs` as binaries, so this folder is a
//! plain module that each binary includes with `mod common;`.

pub mod duration;
pub mod settings;

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
    fn reports_name_each_source_once() {
        let io = || std::io::Error::other("inner");
        assert_eq!(report(&Quoting(io())), "outer: inner");
        assert_eq!(report(&Terse(io())), "outer: inner");
    }
}
