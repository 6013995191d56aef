//! The agent's metrics (`ptth-connect --admin`, issue 19): connections by state, responses by
//! exact status code, the upstream latency histogram, connects, reconnects and failures,
//! `process_*` and `ptth_build_info`, with real requests through a real relay (and a relay
//! stand-in for the outage), on both of the agent's engines (the proxy's, and hyper for a
//! user's service); the binary's `--admin` and its loopback guard.
//!
//! Counts are taken when an exchange ends, which may be just after the public client has its
//! response: the tests scrape until the numbers they wait for are there (bounded), never sleep
//! a fixed time.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use ptth::agent::{Agent, Proxy};
use ptth::relay::Config;
use support::*;
use tokio::net::TcpListener;

/// An upstream that answers `/status/NNN` with that status, and `/hold` only when `release`
/// gets a message.
async fn status_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedSender<()>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
    let addr = http_server(move || {
        let rx = rx.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let rx = rx.clone();
            async move {
                let path = req.uri().path().to_string();
                if path == "/hold" {
                    rx.lock().await.recv().await;
                }
                let code = path
                    .strip_prefix("/status/")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(200);
                let mut res = Response::new(full("ok"));
                *res.status_mut() = StatusCode::from_u16(code).unwrap();
                Ok::<_, Infallible>(res)
            }
        })
    })
    .await;
    (addr, tx)
}

/// Serve `agent`'s admin pages on 127.0.0.1:0; the address.
async fn admin(agent: &Agent) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let agent = agent.clone();
    tokio::spawn(async move { agent.serve_admin(l, std::future::pending()).await });
    addr
}

/// The value of the series `series` (name and labels, exactly as written) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Scrape `/metrics` until `ok` holds for it (bounded); the last scrape.
async fn scrape_until(admin: SocketAddr, ok: impl Fn(&str) -> bool) -> String {
    let mut tries = 0;
    loop {
        let (status, headers, text) = get(admin, "/metrics", None).await;
        assert_eq!(status, 200);
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
                || headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/plain"),
            "{headers:?}"
        );
        if ok(&text) {
            return text;
        }
        tries += 1;
        assert!(tries < 1000, "never true; last scrape:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A public request through the relay: its status.
async fn public(relay: SocketAddr, path: &str) -> u16 {
    get(relay, path, None).await.0
}

#[tokio::test]
async fn the_proxy_agent_counts_connections_by_state_responses_by_code_and_latency() {
    deadline(async {
        let (up, release) = status_upstream().await;
        let relay = start_relay(Config::default()).await;
        let agent = builder(relay.addr, "app").connections(2).build().unwrap();
        let admin = admin(&agent).await;
        let proxy = Proxy::new(&format!("http://{up}")).unwrap();
        let running = run_proxy(agent, proxy);
        relay.handle.wait_idle("app", 2).await;

        let text = scrape_until(admin, |t| {
            value(t, r#"ptth_agent_relay_connections{state="parked"}"#) == Some(2.0)
        })
        .await;
        assert_eq!(
            value(&text, r#"ptth_agent_relay_connections{state="connecting"}"#),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"ptth_agent_relay_connections{state="busy"}"#),
            Some(0.0)
        );
        assert_eq!(value(&text, "ptth_agent_relay_connects_total"), Some(2.0));
        assert_eq!(value(&text, "ptth_agent_reconnects_total"), Some(0.0));
        assert_eq!(value(&text, "ptth_agent_relay_failures_total"), Some(0.0));
        assert_eq!(value(&text, "ptth_agent_upstream_seconds_count"), Some(0.0));
        let version = format!(
            r#"ptth_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&text, &version), Some(1.0), "{text}");
        for process in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(value(&text, process).is_some(), "{process} in\n{text}");
        }

        // Exact codes, as the upstream sent them.
        for (path, want) in [
            ("/app/status/200", 200),
            ("/app/x", 200),
            ("/app/status/404", 404),
            ("/app/status/503", 503),
            ("/app/status/504", 504),
        ] {
            assert_eq!(public(relay.addr, path).await, want, "{path}");
        }
        let text = scrape_until(admin, |t| {
            value(t, "ptth_agent_upstream_seconds_count") == Some(5.0)
        })
        .await;
        for (code, n) in [("200", 2.0), ("404", 1.0), ("503", 1.0), ("504", 1.0)] {
            let series = format!(r#"ptth_agent_requests_total{{code="{code}"}}"#);
            assert_eq!(value(&text, &series), Some(n), "{series} in\n{text}");
        }
        assert!(value(&text, "ptth_agent_upstream_seconds_sum").unwrap() > 0.0);
        assert_eq!(
            value(&text, r#"ptth_agent_upstream_seconds_bucket{le="+Inf"}"#),
            Some(5.0)
        );

        // A request in flight makes its connection busy (the relay sees it so too).
        let held = tokio::spawn(public(relay.addr, "/app/hold"));
        let text = scrape_until(admin, |t| {
            value(t, r#"ptth_agent_relay_connections{state="busy"}"#) == Some(1.0)
        })
        .await;
        assert!(
            value(&text, r#"ptth_agent_relay_connections{state="parked"}"#).unwrap() >= 1.0,
            "{text}"
        );
        release.send(()).unwrap();
        assert_eq!(held.await.unwrap(), 200);
        scrape_until(admin, |t| {
            value(t, r#"ptth_agent_relay_connections{state="busy"}"#) == Some(0.0)
                && value(t, r#"ptth_agent_requests_total{code="200"}"#) == Some(3.0)
        })
        .await;

        // Other paths name the one page there is.
        let (status, _, text) = get(admin, "/agents", None).await;
        assert_eq!((status, text.as_str()), (404, "try /metrics\n"));
        running.shutdown().await.unwrap();
    })
    .await;
}

/// The agent's own answers are counted by their code too: a `502` for an upstream that is
/// not there.
#[tokio::test]
async fn an_unreachable_upstream_is_counted_as_502() {
    deadline(async {
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone_addr = gone.local_addr().unwrap();
        drop(gone);
        let relay = start_relay(Config::default()).await;
        let agent = builder(relay.addr, "app").connections(1).build().unwrap();
        let admin = admin(&agent).await;
        let proxy = Proxy::new(&format!("http://{gone_addr}")).unwrap();
        let running = run_proxy(agent, proxy);
        relay.handle.wait_idle("app", 1).await;
        assert_eq!(public(relay.addr, "/app/x").await, 502);
        scrape_until(admin, |t| {
            value(t, r#"ptth_agent_requests_total{code="502"}"#) == Some(1.0)
        })
        .await;
        running.shutdown().await.unwrap();
    })
    .await;
}

/// A user's hyper service (`Agent::serve`) is counted the same way.
#[tokio::test]
async fn a_user_service_is_counted_by_code() {
    deadline(async {
        let relay = start_relay(Config::default()).await;
        let agent = builder(relay.addr, "app").connections(1).build().unwrap();
        let admin = admin(&agent).await;
        let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let mut res = Response::new(full("hi"));
            if req.uri().path().ends_with("/teapot") {
                *res.status_mut() = StatusCode::IM_A_TEAPOT;
            }
            Ok::<_, Infallible>(res)
        });
        let running = run_agent(agent, service);
        relay.handle.wait_idle("app", 1).await;
        assert_eq!(public(relay.addr, "/app/teapot").await, 418);
        assert_eq!(public(relay.addr, "/app/x").await, 200);
        let text = scrape_until(admin, |t| {
            value(t, "ptth_agent_upstream_seconds_count") == Some(2.0)
        })
        .await;
        assert_eq!(
            value(&text, r#"ptth_agent_requests_total{code="418"}"#),
            Some(1.0),
            "{text}"
        );
        running.shutdown().await.unwrap();
    })
    .await;
}

/// An outage: the relay drops the parked connection and cuts the next dial (one failure
/// counted), then takes a park again (one reconnect).
#[tokio::test]
async fn an_outage_counts_one_failure_and_one_reconnect() {
    deadline(async {
        let (relay, agent) = stand_in("demo").await;
        let admin = admin(&agent).await;
        let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(full("hi")))
        });
        let running = run_agent(agent, service);
        let (_, first) = accept_parked(&relay).await;
        scrape_until(admin, |t| {
            value(t, "ptth_agent_relay_connects_total") == Some(1.0)
        })
        .await;
        outage(&relay, first).await;
        let (_, _back) = accept_parked(&relay).await;
        let text = scrape_until(admin, |t| {
            value(t, "ptth_agent_reconnects_total") == Some(1.0)
        })
        .await;
        assert_eq!(value(&text, "ptth_agent_relay_connects_total"), Some(2.0));
        assert!(
            value(&text, "ptth_agent_relay_failures_total").unwrap() >= 1.0,
            "{text}"
        );
        running.shutdown().await.unwrap();
    })
    .await;
}

/// `ptth-connect --admin`: serves `/metrics`, says where in its log, and refuses a
/// non-loopback address unless `--allow-public-admin`.
#[tokio::test]
async fn the_binary_serves_admin_on_loopback_only_unless_asked() {
    deadline(async {
        let (code, _, err) = bins::run(
            env!("CARGO_BIN_EXE_ptth-connect"),
            &[
                "http://127.0.0.1:1/app",
                "--to",
                "http://127.0.0.1:2",
                "--admin",
                "0.0.0.0:0",
            ],
        )
        .await;
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("--admin 0.0.0.0:0 is not a loopback address")
                && err.contains("--allow-public-admin"),
            "{err}"
        );

        let relay = start_relay(Config::default()).await;
        let (up, _release) = status_upstream().await;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ptth-connect"))
            .args([
                &format!("http://{}/app", relay.addr),
                "--to",
                &format!("http://{up}"),
                "--connections",
                "1",
                "--admin",
                "127.0.0.1:0",
            ])
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap());
        let line = bins::line_with(&mut lines, "metrics on http://")
            .await
            .unwrap();
        let after = line.split("metrics on http://").nth(1).unwrap();
        let addr: SocketAddr = after.split('/').next().unwrap().parse().unwrap();
        assert!(addr.ip().is_loopback(), "{line}");
        relay.handle.wait_idle("app", 1).await;
        assert_eq!(public(relay.addr, "/app/status/201").await, 201);
        scrape_until(addr, |t| {
            value(t, r#"ptth_agent_requests_total{code="201"}"#) == Some(1.0)
        })
        .await;
        child.start_kill().unwrap();
        let _ = child.wait().await;
    })
    .await;
}
