//! Failure paths: response timeout (504), dead parked connections (retry on another, dropped
//! from the pool, never handed a request).

mod support;

use std::time::{Duration, Instant};

use support::*;

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
