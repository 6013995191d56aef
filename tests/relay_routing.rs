//! Routing, pooling and the 404/503/502 paths.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use support::*;
use tokio::sync::{Notify, mpsc};

#[tokio::test]
async fn path_and_host_mode_route_to_the_agent() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let _a = start_agent(&relay, "app", 2, None, echo_handler("a")).await;
        let (s, _, body) = get(relay.addr, "/app/x/y?q=1", None).await;
        assert_eq!(s, 200);
        assert!(
            body.starts_with("a /x/y?q=1 prefix=/app xff=127.0.0.1"),
            "{body}"
        );
        assert!(body.contains("fwd=for=127.0.0.1;proto=http"), "{body}");
        let (s, _, body) = get(relay.addr, "/app/x", Some("app.localhost:8080")).await;
        assert_eq!(s, 200);
        assert!(body.starts_with("a /app/x prefix= "), "{body}");
        // Client-sent forwarding fields are not trusted.
        let req = http::Request::get("/app/")
            .header("host", "h")
            .header("x-forwarded-for", "6.6.6.6")
            .body(full(""))
            .unwrap();
        let res = send(relay.addr, req).await;
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(!String::from_utf8_lossy(&body).contains("6.6.6.6"));
    })
    .await
}

#[tokio::test]
async fn unknown_name_is_404_and_bad_name_400() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let (s, _, body) = get(relay.addr, "/nobody/", None).await;
        assert_eq!(s, 404);
        assert!(body.contains("no agent"), "{body}");
        let (s, _, _) = get(relay.addr, "/Bad_Name/", None).await;
        assert_eq!(s, 400);
        // An agent claiming an invalid name is refused with 400.
        let req = claim_request(relay.addr, "Bad_Name", None);
        let err = connect_one(relay.addr, &req, echo_handler("x"))
            .await
            .unwrap_err();
        assert_eq!(err.refusal().unwrap().status, 400);
    })
    .await
}

#[tokio::test]
async fn burst_larger_than_pool_is_held_and_spread_over_agents() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let _a = start_agent(&relay, "app", 2, None, echo_handler("a")).await;
        let _b = start_agent(&relay, "app", 2, None, echo_handler("b")).await;
        let mut tasks = Vec::new();
        for i in 0..40 {
            let addr = relay.addr;
            tasks.push(tokio::spawn(async move {
                get(addr, &format!("/app/{i}"), None).await
            }));
        }
        let mut tags = HashSet::new();
        for t in tasks {
            let (s, _, body) = t.await.unwrap();
            assert_eq!(s, 200, "{body}");
            tags.insert(body[..1].to_string());
        }
        assert_eq!(tags.len(), 2, "both agents served: {tags:?}");
        // Every connection is parked again.
        relay.handle.wait_idle("app", 4).await;
    })
    .await
}

#[tokio::test]
async fn queue_timeout_gives_503_with_retry_after() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.queue_timeout = Duration::from_millis(200);
        let relay = start_relay(cfg).await;
        let release = Arc::new(Notify::new());
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let r2 = release.clone();
        let h = handler(move |_req| {
            let release = r2.clone();
            let entered_tx = entered_tx.clone();
            async move {
                entered_tx.send(()).unwrap();
                release.notified().await;
                Response::new(full("done"))
            }
        });
        let _a = start_agent(&relay, "slow", 1, None, h).await;
        let addr = relay.addr;
        let first = tokio::spawn(async move { get(addr, "/slow/", None).await });
        entered.recv().await.unwrap();
        let (s, headers, _) = get(relay.addr, "/slow/", None).await;
        assert_eq!(s, 503);
        assert_eq!(headers["retry-after"], "1");
        release.notify_one();
        assert_eq!(first.await.unwrap().0, 200);
    })
    .await
}

#[tokio::test]
async fn agent_killed_mid_request_gives_502_and_others_still_serve() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let h = handler(move |_req| {
            let entered_tx = entered_tx.clone();
            async move {
                entered_tx.send(()).unwrap();
                std::future::pending::<()>().await;
                unreachable!()
            }
        });
        let doomed = start_agent(&relay, "app", 1, None, h).await;
        let addr = relay.addr;
        let victim = tokio::spawn(async move { get(addr, "/app/hang", None).await });
        entered.recv().await.unwrap();
        let _good = start_agent(&relay, "app", 2, None, echo_handler("g")).await;
        doomed.kill();
        let (s, _, _) = victim.await.unwrap();
        assert_eq!(s, 502);
        for _ in 0..5 {
            let (s, _, body) = get(relay.addr, "/app/ok", None).await;
            assert_eq!(s, 200);
            assert!(body.starts_with('g'));
        }
    })
    .await
}

#[tokio::test]
async fn admin_reports_agents_and_metrics() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.admin = Some("127.0.0.1:0".parse().unwrap());
        let relay = start_relay(cfg).await;
        let _a = start_agent(&relay, "app", 2, None, echo_handler("a")).await;
        assert_eq!(get(relay.addr, "/app/", None).await.0, 200);
        relay.handle.wait_idle("app", 2).await;
        let admin = relay.handle.admin_addr().unwrap();
        let (s, _, agents) = get(admin, "/agents", None).await;
        assert_eq!(s, 200);
        assert!(
            agents.contains("\"name\":\"app\",\"connections\":2"),
            "{agents}"
        );
        let (_, _, metrics) = get(admin, "/metrics", None).await;
        assert!(metrics.contains("ptth_agent_connections 2"), "{metrics}");
        assert!(
            metrics.contains("ptth_requests_total{name=\"app\",code=\"200\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("ptth_parked_connections{name=\"app\"} 2"),
            "{metrics}"
        );
    })
    .await
}

/// Issue 11 item 4: with an absolute-form target the target's authority routes, not `Host`
/// (RFC 9112 §3.2.2), for public requests and for claims; an HTTP/1.0 request without `Host`
/// is routed by its path. (Two Hosts, or none in HTTP/1.1: `relay_hostile::hostile_input_table`.)
#[tokio::test]
async fn absolute_form_authority_wins_over_host() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let _a = start_agent(&relay, "app", 1, None, echo_handler("a")).await;
        let body = |out: &str| out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        // Host mode by the target's authority; Host names nothing.
        let out = raw_exchange(
            relay.addr,
            b"GET http://app.localhost:8080/x HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&out), 200, "{out}");
        assert!(body(&out).starts_with("a /x prefix= "), "{out}");
        // Path mode by the target's authority, although Host would be host mode.
        let out = raw_exchange(
            relay.addr,
            b"GET http://127.0.0.1/app/y HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&out), 200, "{out}");
        assert!(body(&out).starts_with("a /y prefix=/app "), "{out}");
        // HTTP/1.0 needs no Host.
        let out = raw_exchange(relay.addr, b"GET /app/z HTTP/1.0\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(body(&out).starts_with("a /z prefix=/app "), "{out}");

        // A claim in absolute form claims the target's name.
        use tokio::io::AsyncWriteExt;
        let mut agent = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        agent
            .write_all(b"POST http://claimed.localhost/ HTTP/1.1\r\nHost: relay\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut agent).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        relay.handle.wait_idle("claimed", 1).await;
    })
    .await
}
