//! The agent against hand-written relay answers: 204, 307, 429 + Retry-After, 401 (library
//! error and binary exit status), and a relay that closes every connection at once.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use ptth::agent::Backoff;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

fn not_found() -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<http_body_util::Full<bytes::Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ Sync
+ 'static {
    hyper::service::service_fn(ptth::dialer::not_found)
}

#[tokio::test]
async fn no_content_resends_the_upgrade_on_the_same_connection() {
    deadline(async {
        let (relay, addr) = support::bind_local().await;
        let agent = spawn_agent(builder(addr, "demo").connections(1), not_found());
        let (mut tcp, _) = relay.accept().await.unwrap();
        let first = read_head(&mut tcp).await;
        assert!(first.starts_with("POST /demo HTTP/1.1\r\n"), "{first}");
        write(&mut tcp, b"HTTP/1.1 204 \r\n\r\n").await;
        let second = read_head(&mut tcp).await;
        assert_eq!(first, second);
        write(&mut tcp, SWITCH_09).await;
        write(&mut tcp, b"GET /x HTTP/1.1\r\nHost: \r\n\r\n").await;
        let res = read_head(&mut tcp).await;
        assert!(res.starts_with("HTTP/1.1 404 Not Found\r\n"), "{res}");
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn temporary_redirect_moves_the_next_dial() {
    deadline(async {
        let relay1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr1 = relay1.local_addr().unwrap();
        let addr2 = relay2.local_addr().unwrap();
        let agent = spawn_agent(builder(addr1, "demo").connections(1), not_found());
        let (mut tcp, _) = relay1.accept().await.unwrap();
        read_head(&mut tcp).await;
        let redirect = format!("HTTP/1.1 307 \r\nLocation: http://{addr2}/moved\r\n\r\n");
        write(&mut tcp, redirect.as_bytes()).await;
        drop(tcp);
        let (head, mut client) = accept_parked(&relay2).await;
        assert_eq!(head.uri, "/moved");
        assert_eq!(head.headers["host"], addr2.to_string().as_str());
        let res = client.send(get_request("/moved/x")).await.unwrap();
        assert_eq!(res.status(), 404);
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    deadline(async {
        let (relay, addr) = support::bind_local().await;
        let agent = spawn_agent(builder(addr, "demo").connections(1), not_found());
        let (mut tcp, _) = relay.accept().await.unwrap();
        read_head(&mut tcp).await;
        write(
            &mut tcp,
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 9\r\n\r\nslow down",
        )
        .await;
        let refused_at = Instant::now();
        let (_head, _client) = accept_parked(&relay).await;
        let waited = refused_at.elapsed();
        assert!(waited >= Duration::from_millis(995), "redialled after {waited:?}");
        agent.shutdown().await.unwrap();
    })
    .await;
}

const UNAUTHORIZED: &[u8] =
    b"HTTP/1.1 401 \r\nWWW-Authenticate: Bearer\r\nContent-Length: 10\r\n\r\nbad token\n";

#[tokio::test]
async fn unauthorized_stops_the_agent_with_a_distinct_error() {
    deadline(async {
        let (relay, addr) = support::bind_local().await;
        let agent = spawn_agent(
            builder(addr, "demo").connections(1).token("wrong"),
            not_found(),
        );
        let (mut tcp, _) = relay.accept().await.unwrap();
        read_head(&mut tcp).await;
        write(&mut tcp, UNAUTHORIZED).await;
        let err = agent.task.await.unwrap().unwrap_err();
        assert!(err.is_unauthorized(), "{err}");
        assert!(err.to_string().contains("401"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn ptth_connect_exits_3_on_unauthorized_without_printing_the_token() {
    deadline(async {
        let (relay, addr) = support::bind_local().await;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ptth-connect"))
            .arg(format!("http://{addr}/demo"))
            .args(["--to", "http://127.0.0.1:9", "--connections", "1"])
            .env("PTTH_TOKEN", "supersecret")
            .env("RUST_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (mut tcp, _) = relay.accept().await.unwrap();
        let head = read_head(&mut tcp).await;
        assert!(
            head.contains("authorization: Bearer supersecret\r\n"),
            "{head}"
        );
        write(&mut tcp, UNAUTHORIZED).await;
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(out.status.code(), Some(3));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stderr.contains("401"), "{stderr}");
        assert!(!stderr.contains("supersecret") && !stdout.contains("supersecret"));
    })
    .await;
}

#[tokio::test]
async fn a_relay_that_closes_at_once_meets_growing_backoff() {
    deadline(async {
        let (relay, addr) = support::bind_local().await;
        let backoff = Backoff {
            base: Duration::from_millis(40),
            cap: Duration::from_secs(1),
            healthy_period: Duration::from_secs(30),
            ..Backoff::default()
        };
        let agent = spawn_agent(
            builder(addr, "demo").connections(1).backoff(backoff),
            not_found(),
        );
        let mut closed_at: Option<Instant> = None;
        for attempt in 0..5u32 {
            let (mut tcp, _) = relay.accept().await.unwrap();
            if let Some(t) = closed_at {
                // `attempt` failures so far: the wait is at least half the step.
                let waited = t.elapsed();
                let floor = backoff.step(attempt) / 2;
                assert!(waited >= floor, "attempt {attempt}: {waited:?} < {floor:?}");
            }
            read_head(&mut tcp).await;
            write(&mut tcp, SWITCH_09).await;
            drop(tcp);
            closed_at = Some(Instant::now());
        }
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_request_in_the_same_write_as_the_101_is_served() {
    // A relay that sends the first reversed request in the same write as the 101.
    deadline(async {
        let (relay, addr) = support::bind_local().await;
        let agent = spawn_agent(builder(addr, "demo").connections(1), not_found());
        let (mut tcp, _) = relay.accept().await.unwrap();
        read_head(&mut tcp).await;
        let mut both = SWITCH_09.to_vec();
        both.extend_from_slice(b"GET /first HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n");
        write(&mut tcp, &both).await;
        let mut res = String::new();
        tcp.read_to_string(&mut res).await.unwrap();
        assert!(res.starts_with("HTTP/1.1 404 Not Found\r\n"), "{res}");
        agent.shutdown().await.unwrap();
    })
    .await;
}

/// A relay restart closes every parked connection at once: that is one failure for the pool, not
/// one per connection, so the redial waits one backoff step, not four (paused time: exact).
#[tokio::test(start_paused = true)]
async fn connections_closed_together_are_one_failure() {
    deadline(async {
        let (relay, addr) = support::bind_local().await;
        let backoff = Backoff::default();
        let agent = spawn_agent(
            builder(addr, "demo").connections(4).backoff(backoff),
            not_found(),
        );
        let mut parked = Vec::new();
        for _ in 0..4 {
            parked.push(accept_parked(&relay).await);
        }
        // Closed young and unserved: each would count as a failure on its own (QUICK_CLOSE).
        drop(parked);
        let closed_at = tokio::time::Instant::now();
        let (_, _again) = accept_parked(&relay).await;
        let waited = closed_at.elapsed();
        let one = backoff.step(1);
        assert!(
            waited <= one,
            "redialled {waited:?} after the close: more than one failure's step ({one:?})"
        );
        agent.shutdown().await.unwrap();
    })
    .await;
}
