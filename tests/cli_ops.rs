//! The binaries as an operator runs them (issue 19): an agent stopped with SIGTERM says nothing
//! alarming, an agent refused for want of a client certificate is told that, once, and
//! `examples/axum_agent.rs` shows its connection at the default log level.

mod support;

use std::process::Stdio;

use support::deadline;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::process::Command;

use support::bins::{self, agent_addr, banner, line_with, serve, upstream};

use support::pki::Pki;

#[tokio::test]
async fn an_agent_stopped_with_sigterm_logs_no_warning() {
    deadline(async {
        let (_relay, _, _out, addr) =
            bins::serve_ready(&["--listen", "127.0.0.1:0"], "agents:").await;
        let to = upstream().await;
        let mut agent = bins::connect(&[&format!("http://{addr}/demo"), "--to", &to], None);
        let mut err = BufReader::new(agent.stderr.take().unwrap());
        let connected = line_with(&mut err, "connected to the relay").await;
        assert!(connected.is_ok(), "{connected:?}");
        // A request served, so that connections are busy and parked again before the stop.
        let res = bins::get(addr, &addr.to_string(), "/demo/").await;
        assert!(res.starts_with("HTTP/1.1 200"), "{res}");
        let pid = agent.id().unwrap().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().await;
        assert!(kill.unwrap().success());
        let mut rest = String::new();
        err.read_to_string(&mut rest).await.unwrap();
        let status = agent.wait().await.unwrap();
        assert_eq!(status.code(), Some(0), "{rest}");
        assert!(rest.contains("shutting down"), "{rest}");
        for level in [" WARN ", " ERROR "] {
            assert!(!rest.contains(level), "{level} after SIGTERM:\n{rest}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_missing_client_certificate_is_named_once_and_not_blamed_on_the_token() {
    deadline(async {
        let (pki, cert, key) = Pki::localhost_relay();
        let ca = pki.ca_file();
        let (cert, key, ca) = (cert.as_str(), key.as_str(), ca.to_str().unwrap());
        let mut relay = serve(&[
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--client-ca",
            ca,
        ]);
        let (text, _out) = banner(&mut relay, "agents:").await;
        let port = agent_addr(&text, "https").port();
        let out = Command::new(env!("CARGO_BIN_EXE_ptth-connect"))
            .args([
                &format!("https://localhost:{port}/demo"),
                "--to",
                "http://127.0.0.1:9",
            ])
            .args(["--ca-cert", ca, "--connections", "1"])
            .env_remove("PTTH_TOKEN")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        let error = stderr
            .lines()
            .find(|l| l.starts_with("ptth-connect: ") && !l.contains("hint:"))
            .unwrap_or_else(|| panic!("no error line: {stderr}"));
        assert_eq!(error.matches("client certificate").count(), 1, "{error}");
        let hint = stderr
            .lines()
            .find(|l| l.starts_with("ptth-connect: hint: "))
            .unwrap_or_else(|| panic!("no hint: {stderr}"));
        assert!(
            hint.contains("--client-cert FILE --client-key FILE"),
            "{hint}"
        );
        assert!(!stderr.contains("--token"), "{stderr}");
    })
    .await;
}

/// An example built beside the test binaries: a plain `cargo test` builds the examples first
/// (`cargo test --test cli_ops` alone does not, and may find an older build).
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(|deps| deps.parent()).unwrap();
    debug.join("examples").join(name)
}

#[tokio::test]
async fn the_axum_example_shows_its_connection_at_the_default_level() {
    let bin = example("axum_agent");
    if !bin.exists() {
        println!(
            "SKIPPED: {} is not built (cargo test builds it)",
            bin.display()
        );
        return;
    }
    deadline(async {
        let (_relay, _, _out, addr) =
            bins::serve_ready(&["--listen", "127.0.0.1:0"], "agents:").await;
        let mut app = Command::new(bin)
            .arg(format!("http://{addr}/demo"))
            .env_remove("PTTH_TOKEN")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // tracing's fmt layer writes to stdout.
        let mut out = BufReader::new(app.stdout.take().unwrap());
        let line = line_with(&mut out, "connected to the relay").await;
        let line = line.unwrap_or_else(|seen| panic!("no connection line in: {seen}"));
        assert!(line.contains(&format!("http://{addr}/demo/")), "{line}");
        let res = bins::get(addr, &addr.to_string(), "/demo/").await;
        assert!(res.ends_with("hello from axum, via PTTH\n"), "{res}");
    })
    .await;
}
