//! Failure paths: response timeout (504), dead parked connections (retry on another, dropped
//! from the pool, never handed a request), and a name whose agent is gone (held for the
//! reconnect window, then 503 offline at once, then 404 after the grace).

mod support;

use std::time::{Duration, Instant};

use http::Response;
use ptth::relay::NameState;
use support::*;
use tokio::sync::mpsc;

#[tokio::test]
async fn no_response_head_in_time_is_504() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.response_timeout = Duration::from_millis(300);
        let relay = start_relay(cfg).await;
        // An agent that takes the request and never answers.
        let h = handler(|_req| std::future::pending());
        let _a = start_agent(&relay, "slow", 1, None, h).await;
        let t0 = Instant::now();
        let (s, _, body) = get(relay.addr, "/slow/", None).await;
        let took = t0.elapsed();
        assert_eq!(s, 504, "{body}");
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        // The connection is half-way through an exchange: it is closed, not parked again.
        relay
            .handle
            .wait_until(|h| connections(h, "slow") == 0)
            .await;
    })
    .await
}

#[tokio::test]
async fn dead_parked_connection_is_skipped_and_the_request_served_by_another() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        for i in 0..10 {
            let name = format!("retry{i}");
            // The doomed connection is parked first, so it is the first one handed out.
            let doomed = flip_one(relay.addr, &claim_request(relay.addr, &name, None))
                .await
                .unwrap();
            relay.handle.wait_idle(&name, 1).await;
            let _healthy = start_agent(&relay, &name, 1, None, echo_handler("ok")).await;
            assert_eq!(connections(&relay.handle, &name), 2);
            // The agent side closes it; the public request comes right after.
            drop(doomed);
            let (s, _, body) = get(relay.addr, &format!("/{name}/x"), None).await;
            assert_eq!(s, 200, "round {i}: {body}");
            assert!(body.starts_with("ok /x"), "{body}");
            relay
                .handle
                .wait_until(|h| connections(h, &name) == 1)
                .await;
        }
    })
    .await
}

#[tokio::test]
async fn dead_parked_connection_is_dropped_and_never_handed_a_request() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let doomed = flip_one(relay.addr, &claim_request(relay.addr, "app", None))
            .await
            .unwrap();
        relay.handle.wait_idle("app", 1).await;
        let _healthy = start_agent(&relay, "app", 1, None, echo_handler("ok")).await;
        assert_eq!(connections(&relay.handle, "app"), 2);
        drop(doomed);
        relay
            .handle
            .wait_until(|h| connections(h, "app") == 1 && h.idle("app") == 1)
            .await;
        assert_eq!(relay.handle.agents(), 1);
        for i in 0..5 {
            let (s, _, body) = get(relay.addr, &format!("/app/{i}"), None).await;
            assert_eq!(s, 200, "{body}");
            assert!(body.starts_with(&format!("ok /{i}")), "{body}");
        }
        let stats = relay.handle.stats();
        let app = stats.iter().find(|s| s.name == "app").unwrap();
        assert_eq!((app.connections, app.idle, app.busy), (1, 1, 0));
    })
    .await
}

/// Far longer than any test waits: a request answered well before it was not held for it.
const LONG_QUEUE: Duration = Duration::from_secs(20);
/// "At once", loosely: far below `LONG_QUEUE`, generous for a loaded machine.
const AT_ONCE: Duration = Duration::from_secs(3);
/// A reconnect window short enough for a test, long enough to see a request held in it.
const WINDOW: Duration = Duration::from_secs(1);

fn assert_offline(status: u16, headers: &http::HeaderMap, body: &str) {
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("offline"), "{body}");
    assert!(!body.contains("free in time"), "{body}");
    assert_eq!(headers.get("retry-after").unwrap(), "1");
}

/// An agent whose requests never finish; each request's arrival is sent on the channel.
fn stuck_handler() -> (Handler, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let h = handler(move |_req| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(());
            std::future::pending::<Response<TestBody>>().await
        }
    });
    (h, rx)
}

#[tokio::test]
async fn a_name_without_connections_holds_requests_for_the_window_then_is_offline_at_once() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.queue_timeout = LONG_QUEUE;
        cfg.reconnect_window = WINDOW;
        let relay = start_relay(cfg).await;
        let a = start_agent(&relay, "gone", 1, None, echo_handler("x")).await;
        assert_eq!(state(&relay.handle, "gone"), Some(NameState::Connected));
        a.kill();
        relay
            .handle
            .wait_until(|h| connections(h, "gone") == 0)
            .await;
        // Within the reconnect window the request is held...
        let t0 = Instant::now();
        let addr = relay.addr;
        let held = tokio::spawn(async move { get(addr, "/gone/", None).await });
        relay
            .handle
            .wait_until(|h| h.stats().iter().any(|s| s.name == "gone" && s.waiting == 1))
            .await;
        // ...until the window ends, not for the queue timeout.
        let (s, headers, body) = held.await.unwrap();
        assert_offline(s, &headers, &body);
        assert!(t0.elapsed() < LONG_QUEUE / 2, "{:?}", t0.elapsed());
        assert_eq!(state(&relay.handle, "gone"), Some(NameState::Offline));
        // Past the window, within the grace: 503 offline at once.
        let t1 = Instant::now();
        let (s, headers, body) = get(relay.addr, "/gone/", None).await;
        assert_offline(s, &headers, &body);
        assert!(t1.elapsed() < AT_ONCE, "{:?}", t1.elapsed());
    })
    .await
}

#[tokio::test]
async fn requests_waiting_when_the_last_connection_leaves_are_answered_offline() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.queue_timeout = LONG_QUEUE;
        cfg.reconnect_window = WINDOW;
        let relay = start_relay(cfg).await;
        let (h, mut entered) = stuck_handler();
        let a = start_agent(&relay, "app", 1, None, h).await;
        let addr = relay.addr;
        let first = tokio::spawn(async move { get(addr, "/app/1", None).await });
        entered.recv().await.unwrap();
        let second = tokio::spawn(async move { get(addr, "/app/2", None).await });
        relay
            .handle
            .wait_until(|h| h.stats().iter().any(|s| s.name == "app" && s.waiting == 1))
            .await;
        let t0 = Instant::now();
        a.kill();
        let (s, _, body) = first.await.unwrap();
        assert_eq!(s, 502, "{body}");
        let (s, headers, body) = second.await.unwrap();
        assert_offline(s, &headers, &body);
        assert!(t0.elapsed() < LONG_QUEUE / 2, "{:?}", t0.elapsed());
    })
    .await
}

#[tokio::test]
async fn an_agent_back_within_the_window_serves_the_held_request() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.queue_timeout = LONG_QUEUE;
        // Long enough that the agent is surely back before it ends.
        cfg.reconnect_window = LONG_QUEUE / 2;
        let relay = start_relay(cfg).await;
        let a = start_agent(&relay, "app", 1, None, echo_handler("old")).await;
        a.kill();
        relay
            .handle
            .wait_until(|h| connections(h, "app") == 0)
            .await;
        let addr = relay.addr;
        let held = tokio::spawn(async move { get(addr, "/app/x", None).await });
        relay
            .handle
            .wait_until(|h| h.stats().iter().any(|s| s.name == "app" && s.waiting == 1))
            .await;
        assert_eq!(state(&relay.handle, "app"), Some(NameState::Reconnecting));
        // The agent restarts.
        let _a = start_agent(&relay, "app", 1, None, echo_handler("new")).await;
        let (s, _, body) = held.await.unwrap();
        assert_eq!(s, 200, "{body}");
        assert!(body.starts_with("new /x"), "{body}");
    })
    .await
}

#[tokio::test]
async fn past_the_grace_a_name_is_404() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.queue_timeout = LONG_QUEUE;
        cfg.grace = Duration::from_millis(500);
        cfg.reconnect_window = Duration::from_millis(100);
        let relay = start_relay(cfg).await;
        let a = start_agent(&relay, "app", 1, None, echo_handler("x")).await;
        a.kill();
        let forgotten = tokio::time::timeout(
            Duration::from_secs(10),
            relay
                .handle
                .wait_until(|h| h.stats().iter().all(|s| s.name != "app")),
        )
        .await;
        assert!(forgotten.is_ok(), "the name outlived its grace");
        assert_eq!(state(&relay.handle, "app"), None);
        let t0 = Instant::now();
        let (s, _, body) = get(relay.addr, "/app/", None).await;
        assert_eq!(s, 404, "{body}");
        assert!(t0.elapsed() < AT_ONCE, "{:?}", t0.elapsed());
    })
    .await
}

#[tokio::test]
async fn a_busy_name_keeps_the_queue_timeout() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.queue_timeout = Duration::from_secs(1);
        // Shorter than the queue timeout: it must not apply to a name that has a connection.
        cfg.reconnect_window = Duration::from_millis(200);
        let relay = start_relay(cfg).await;
        let (h, mut entered) = stuck_handler();
        let _a = start_agent(&relay, "app", 1, None, h).await;
        let addr = relay.addr;
        let _first = tokio::spawn(async move { get(addr, "/app/1", None).await });
        entered.recv().await.unwrap();
        let t0 = Instant::now();
        let (s, headers, body) = get(addr, "/app/2", None).await;
        assert_eq!(s, 503, "{body}");
        assert!(body.contains("became free in time"), "{body}");
        assert_eq!(headers.get("retry-after").unwrap(), "1");
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
    })
    .await
}
