//! Limits: agents per address, per name and in total; the waiting queue bound; the head-read
//! deadline; a reconnect storm.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Response;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

/// Claim `name` once more and expect a refusal with `status` and a `Retry-After`.
async fn refused(relay: &TestRelay, name: &str, status: u16) -> String {
    let req = claim_request(relay.addr, name, None);
    let err = connect_one(relay.addr, &req, echo_handler("x"))
        .await
        .unwrap_err();
    let r = err.refusal().expect("a refusal");
    assert_eq!(r.status, status, "{name}");
    assert_eq!(r.retry_after(), Some(Duration::from_secs(1)), "{name}");
    String::from_utf8_lossy(&r.body).into_owned()
}

/// One agent-count limit: the agents that fill it, the claim it refuses, and what is left.
struct CountLimit {
    case: &'static str,
    set: fn(&mut ptth::relay::Config),
    /// (name, connections) parked before the refused claim.
    fill: &'static [(&'static str, usize)],
    refused: &'static str,
    status: u16,
    body_says: &'static str,
    /// A name with this many connections is parked afterwards: the limit is not global.
    then_parks: Option<&'static str>,
    /// (name or "" for all agents, connections the relay counts at the end).
    counted: (&'static str, usize),
}

#[tokio::test]
async fn agent_count_limits_refuse_with_429_or_503() {
    let cases = [
        // Every name counts against the one address.
        CountLimit {
            case: "per IP",
            set: |c| c.max_per_ip = 2,
            fill: &[("one", 1), ("two", 1)],
            refused: "three",
            status: 429,
            body_says: "this address",
            then_parks: None,
            counted: ("", 2),
        },
        CountLimit {
            case: "per name",
            set: |c| c.max_per_name = 2,
            fill: &[("app", 2)],
            refused: "app",
            status: 429,
            body_says: "this name",
            then_parks: Some("other"),
            counted: ("app", 2),
        },
        CountLimit {
            case: "total agents",
            set: |c| c.max_agents = 2,
            fill: &[("one", 1), ("two", 1)],
            refused: "three",
            status: 503,
            body_says: "limit of 2 agent connections",
            then_parks: None,
            counted: ("", 2),
        },
    ];
    for c in cases {
        deadline(async {
            let mut cfg = anonymous();
            (c.set)(&mut cfg);
            let relay = start_relay(cfg).await;
            let mut agents = Vec::new();
            for (name, n) in c.fill {
                agents.push(start_agent(&relay, name, *n, None, echo_handler("a")).await);
            }
            let body = refused(&relay, c.refused, c.status).await;
            assert!(body.contains(c.body_says), "{}: {body}", c.case);
            if let Some(name) = c.then_parks {
                agents.push(start_agent(&relay, name, 1, None, echo_handler("b")).await);
            }
            let counted = match c.counted.0 {
                "" => relay.handle.agents(),
                name => connections(&relay.handle, name),
            };
            assert_eq!(counted, c.counted.1, "{}", c.case);
        })
        .await
    }
}

#[tokio::test]
async fn full_waiting_queue_is_503_at_once() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.max_waiting = 2;
        let relay = start_relay(cfg).await;
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let release = Arc::new(Semaphore::new(0));
        let r2 = release.clone();
        let h = handler(move |_req| {
            let entered_tx = entered_tx.clone();
            let release = r2.clone();
            async move {
                entered_tx.send(()).unwrap();
                release.acquire().await.unwrap().forget();
                Response::new(full("done"))
            }
        });
        let _a = start_agent(&relay, "app", 1, None, h).await;
        let addr = relay.addr;
        let mut held = Vec::new();
        // One request takes the only connection, two more wait.
        held.push(tokio::spawn(async move { get(addr, "/app/0", None).await }));
        entered.recv().await.unwrap();
        for i in 1..=2 {
            held.push(tokio::spawn(async move {
                get(addr, &format!("/app/{i}"), None).await
            }));
        }
        relay
            .handle
            .wait_until(|h| h.stats().iter().any(|s| s.name == "app" && s.waiting == 2))
            .await;
        // The queue is full: refused at once, well before the 10 s queue timeout.
        let t0 = Instant::now();
        let (s, headers, body) = get(addr, "/app/over", None).await;
        assert_eq!(s, 503, "{body}");
        assert!(body.contains("too many requests waiting"), "{body}");
        assert_eq!(headers.get("retry-after").unwrap(), "1");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        // Let the held requests through.
        release.add_permits(3);
        for t in held {
            let (s, _, body) = t.await.unwrap();
            assert_eq!(s, 200, "{body}");
            assert_eq!(body, "done");
        }
    })
    .await
}

#[tokio::test]
async fn slow_loris_is_closed_within_head_timeout() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.head_timeout = Duration::from_millis(500);
        let relay = start_relay(cfg).await;
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        let t0 = Instant::now();
        s.write_all(b"GET /app/ HTTP/1.1\r\nHost: x\r\nX-Slow:")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took <= Duration::from_secs(3),
            "closed after {took:?}"
        );
        let out = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out}");
    })
    .await
}

/// The head timeout also bounds the idle time between keep-alive requests, counted afresh after
/// each answer: requests spaced at 60% of it keep the connection, then silence closes it.
#[tokio::test]
async fn keep_alive_idle_is_closed_within_head_timeout_counted_from_the_last_answer() {
    deadline(async {
        let timeout = Duration::from_millis(500);
        let mut cfg = anonymous();
        cfg.head_timeout = timeout;
        let relay = start_relay(cfg).await;
        let _agent = start_agent(&relay, "app", 1, None, echo_handler("app")).await;
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        for i in 0..3 {
            if i > 0 {
                tokio::time::sleep(timeout * 6 / 10).await;
            }
            s.write_all(b"GET /app/ping HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let n = s.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        }
        let t0 = Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        let took = t0.elapsed();
        assert!(
            took >= timeout * 8 / 10 && took <= Duration::from_secs(3),
            "closed after {took:?}"
        );
    })
    .await
}

#[tokio::test]
async fn reconnect_storm_is_refused_quickly_without_leaks() {
    const ATTEMPTS: usize = 200;
    const PER_NAME: usize = 16;
    deadline(async {
        let mut cfg = anonymous();
        cfg.max_per_name = PER_NAME;
        let relay = start_relay(cfg).await;
        let addr = relay.addr;
        let _steady = start_agent(&relay, "steady", 1, None, echo_handler("steady")).await;
        let mut attempts = Vec::new();
        for _ in 0..ATTEMPTS {
            attempts.push(tokio::spawn(async move {
                let req = claim_request(addr, "storm", None);
                let t0 = Instant::now();
                let r = connect_one(addr, &req, echo_handler("s")).await;
                (r, t0.elapsed())
            }));
        }
        // The relay keeps serving while the storm runs.
        let t0 = Instant::now();
        let (s, _, body) = get(addr, "/steady/ping", None).await;
        assert_eq!(s, 200, "{body}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        let mut accepted = Vec::new();
        let mut refused = 0;
        for a in attempts {
            let (r, took) = a.await.unwrap();
            match r {
                Ok(conn) => accepted.push(conn),
                Err(e) => {
                    let r = e.refusal().unwrap_or_else(|| panic!("not a refusal: {e}"));
                    assert_eq!(r.status, 429);
                    assert!(r.retry_after().is_some());
                    assert!(took < Duration::from_secs(5), "refused after {took:?}");
                    refused += 1;
                }
            }
        }
        assert_eq!(accepted.len(), PER_NAME);
        assert_eq!(refused, ATTEMPTS - PER_NAME);
        relay.handle.wait_idle("storm", PER_NAME).await;
        let t0 = Instant::now();
        let (s, _, body) = get(addr, "/storm/after", None).await;
        assert_eq!(s, 200, "{body}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        // Every agent goes away: nothing is left counted.
        for c in &accepted {
            c.abort();
        }
        relay
            .handle
            .wait_until(|h| connections(h, "storm") == 0 && h.agents() == 1)
            .await;
    })
    .await
}

#[tokio::test]
async fn names_are_forgotten_on_time_without_any_request() {
    const ROUNDS: usize = 3;
    const OFFERS: usize = 100;
    const GRACE: Duration = Duration::from_millis(200);
    deadline(async {
        let mut cfg = anonymous();
        cfg.grace = GRACE;
        cfg.reconnect_window = GRACE / 2;
        cfg.admin = Some("127.0.0.1:0".parse().unwrap());
        let relay = start_relay(cfg).await;
        let admin = relay.handle.admin_addr().unwrap();
        let _steady = start_agent(&relay, "steady", 1, None, echo_handler("steady")).await;
        for round in 0..ROUNDS {
            // One-shot offers: each agent claims its own name, parks, and goes away.
            let mut flipped = Vec::new();
            for i in 0..OFFERS {
                let req = claim_request(relay.addr, &format!("oneshot-{round}-{i}"), None);
                flipped.push(flip_one(relay.addr, &req).await.unwrap());
            }
            relay
                .handle
                .wait_until(|h| h.stats().len() == OFFERS + 1)
                .await;
            drop(flipped);
            let t0 = Instant::now();
            // No public request: the relay forgets them by itself once the grace has passed.
            let forgotten = tokio::time::timeout(
                Duration::from_secs(10),
                relay.handle.wait_until(|h| h.stats().len() == 1),
            )
            .await;
            assert!(
                forgotten.is_ok(),
                "round {round}: {} names still known",
                relay.handle.stats().len()
            );
            assert!(
                t0.elapsed() < GRACE + Duration::from_secs(3),
                "{:?}",
                t0.elapsed()
            );
            let (_, _, agents) = get(admin, "/agents", None).await;
            assert!(!agents.contains("oneshot"), "{agents}");
            assert!(agents.contains("\"steady\""), "{agents}");
            let (_, _, metrics) = get(admin, "/metrics", None).await;
            assert!(!metrics.contains("oneshot"), "{metrics}");
            assert!(metrics.contains("name=\"steady\""), "{metrics}");
        }
        assert_eq!(relay.handle.agents(), 1);
        let (s, _, body) = get(relay.addr, "/steady/x", None).await;
        assert_eq!(s, 200, "{body}");
    })
    .await
}

/// Decisions D35: with `max_connections` served, a new connection is closed at accept,
/// before a byte is read or written; once one closes, the next is served.
#[tokio::test]
async fn connections_over_the_cap_are_closed_and_the_next_is_served() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.max_connections = 1;
        let relay = start_relay(cfg).await;
        let _agent = start_agent(&relay, "app", 1, None, echo_handler("a")).await;
        // The agent's claim held the one permit until its switch.
        relay.handle.wait_until(|h| h.connections() == 0).await;
        let request = b"GET /app/x HTTP/1.1\r\nHost: relay\r\n\r\n";

        let mut first = TcpStream::connect(relay.addr).await.unwrap();
        first.write_all(request).await.unwrap();
        let head = read_head(&mut first).await;
        assert_eq!(status_of(&head), 200, "{head}");
        assert_eq!(relay.handle.connections(), 1);

        // Over the cap: closed with nothing written (a reset is as good as a FIN here).
        let out = raw_exchange(relay.addr, request).await;
        assert_eq!(out, "", "a connection over the cap got an answer");
        assert_eq!(relay.handle.connections(), 1);

        drop(first);
        relay.handle.wait_until(|h| h.connections() == 0).await;
        let out = raw_exchange(
            relay.addr,
            b"GET /app/x HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&out), 200, "{out}");
    })
    .await
}
