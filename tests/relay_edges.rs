//! Hostile public input, agent authentication, streaming, upgrades and graceful drain.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ptth::relay::Tokens;
use std::task::{Context, Poll};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn hostile_public_input() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.head_timeout = Duration::from_millis(300);
        let relay = start_relay(cfg).await;
        let big = format!(
            "GET /app/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(40_000)
        );
        assert!(
            raw(relay.addr, big.as_bytes())
                .await
                .starts_with("HTTP/1.1 431")
        );
        let bare_cr = b"GET /app/ HTTP/1.1\r\nHost: x\rX: y\r\n\r\n";
        assert!(raw(relay.addr, bare_cr).await.starts_with("HTTP/1.1 400"));
        // Slow loris: half a head, then nothing; the relay closes.
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        s.write_all(b"GET /app/ HTTP/1.1\r\nHost:").await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
    })
    .await
}

#[tokio::test]
async fn auth_accepts_refuses_and_blocks_takeover() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.tokens = Some(Tokens::parse("app good\nother rival\n* master\n* master2\n").unwrap());
        let relay = start_relay(cfg).await;
        for token in [None, Some("wrong")] {
            let req = claim_request(relay.addr, "app", token);
            let err = connect_one(relay.addr, &req, echo_handler("x"))
                .await
                .unwrap_err();
            let refusal = err.refusal().unwrap();
            assert_eq!(refusal.status, StatusCode::UNAUTHORIZED);
            assert_eq!(refusal.www_authenticate(), Some("Bearer"));
        }
        // A valid token for another name: understood, and not enough (decisions D28).
        let (status, body) = claim_refused(&relay, "app", "rival").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("may not claim the name \"app\""), "{body}");
        let _a = start_agent(&relay, "app", 1, Some("good"), echo_handler("a")).await;
        // `master` may claim any name without a line of its own, but not one held by another
        // token.
        let _m = start_agent(&relay, "free", 1, Some("master"), echo_handler("m")).await;
        let (status, body) = claim_refused(&relay, "free", "master2").await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let (s, _, body) = get(relay.addr, "/app/", None).await;
        assert_eq!(s, 200);
        assert!(body.starts_with('a'));
        let (s, _, body) = get(relay.addr, "/free/", None).await;
        assert_eq!(s, 200);
        assert!(body.starts_with('m'));
    })
    .await
}

/// Claim `name` with `token` and return the refusal's status (panics if the claim succeeds).
async fn claim_refused(relay: &TestRelay, name: &str, token: &str) -> (StatusCode, String) {
    let req = claim_request(relay.addr, name, Some(token));
    let err = connect_one(relay.addr, &req, echo_handler("x"))
        .await
        .err()
        .unwrap_or_else(|| panic!("{token} could claim {name}"));
    let r = err.refusal().expect("a refusal, not a transport error");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

#[tokio::test]
async fn a_name_with_its_own_line_is_never_taken_by_a_star_token() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.tokens = Some(Tokens::parse("alpha t1\n* t2\n").unwrap());
        let relay = start_relay(cfg).await;
        // Nobody holds alpha yet, and still the `*` token may not claim it.
        let (status, body) = claim_refused(&relay, "alpha", "t2").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let a = start_agent(&relay, "alpha", 1, Some("t1"), echo_handler("a1")).await;
        a.kill();
        relay
            .handle
            .wait_until(|h| connections(h, "alpha") == 0)
            .await;
        // Its agent is gone (within the grace): still not for `*`.
        let (status, body) = claim_refused(&relay, "alpha", "t2").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        // The owner comes back and gets its name.
        let _a = start_agent(&relay, "alpha", 1, Some("t1"), echo_handler("a1")).await;
        let (s, _, body) = get(relay.addr, "/alpha/", None).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.starts_with("a1 "), "{body}");
        // `*` still claims names that have no line of their own.
        let _b = start_agent(&relay, "beta", 1, Some("t2"), echo_handler("b")).await;
    })
    .await
}

#[tokio::test]
async fn a_name_stays_its_tokens_through_the_grace() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.tokens = Some(Tokens::parse("* t2\n* t3\n").unwrap());
        cfg.grace = Duration::from_secs(2);
        cfg.reconnect_window = Duration::from_millis(100);
        let relay = start_relay(cfg).await;
        let a = start_agent(&relay, "beta", 1, Some("t2"), echo_handler("t2")).await;
        a.kill();
        relay
            .handle
            .wait_until(|h| connections(h, "beta") == 0)
            .await;
        // Within the grace another token is refused: the holder may be restarting.
        let (status, body) = claim_refused(&relay, "beta", "t3").await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        // The holder's token gets it back.
        let a = start_agent(&relay, "beta", 1, Some("t2"), echo_handler("t2")).await;
        let (s, _, body) = get(relay.addr, "/beta/", None).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.starts_with("t2 "), "{body}");
        a.kill();
        // Once the grace has passed the name is free for anyone.
        relay
            .handle
            .wait_until(|h| h.stats().iter().all(|s| s.name != "beta"))
            .await;
        let _b = start_agent(&relay, "beta", 1, Some("t3"), echo_handler("t3")).await;
        let (s, _, body) = get(relay.addr, "/beta/", None).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.starts_with("t3 "), "{body}");
    })
    .await
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Bytes>();
        let ev_rx = Arc::new(tokio::sync::Mutex::new(Some(ev_rx)));
        let h = handler(move |_req| {
            let ev_rx = ev_rx.clone();
            async move {
                let rx = ev_rx.lock().await.take().unwrap();
                let stream = futures_stream(rx);
                let mut res = Response::new(stream.boxed());
                res.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                res
            }
        });
        let _a = start_agent(&relay, "sse", 1, None, h).await;
        ev_tx.send(Bytes::from_static(b"data: one\n\n")).unwrap();
        let req = Request::get("/sse/")
            .header("host", "x")
            .body(full(""))
            .unwrap();
        let mut body = send(relay.addr, req).await.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"data: one\n\n");
        // The second event is only sent now, after the first was received.
        ev_tx.send(Bytes::from_static(b"data: two\n\n")).unwrap();
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&second[..], b"data: two\n\n");
        drop(ev_tx);
    })
    .await
}

/// A body from a channel.
fn futures_stream(
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) -> FnBody<impl FnMut(&mut Context<'_>) -> Poll<Option<Bytes>> + Unpin> {
    FnBody(move |cx: &mut Context<'_>| rx.poll_recv(cx))
}

/// A body whose frames come from a closure.
struct FnBody<F>(F);

impl<F: FnMut(&mut Context<'_>) -> Poll<Option<Bytes>> + Unpin> http_body::Body for FnBody<F> {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        (self.0)(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn large_upload_streams_through() {
    const TOTAL: u64 = 64 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let h = handler(|req: Request<Incoming>| async move {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(f) = body.frame().await {
                if let Ok(d) = f.unwrap().into_data() {
                    n += d.len() as u64;
                }
            }
            Response::new(full(n.to_string()))
        });
        let _a = start_agent(&relay, "up", 1, None, h).await;
        let sent = Arc::new(AtomicU64::new(0));
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        let s2 = sent.clone();
        let stream = FnBody(move |_cx: &mut Context<'_>| {
            let done = s2.fetch_add(CHUNK as u64, Ordering::Relaxed);
            Poll::Ready((done < TOTAL).then(|| chunk.clone()))
        });
        let req = Request::post("/up/")
            .header("host", "x")
            .body(stream.boxed())
            .unwrap();
        let res = send(relay.addr, req).await;
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, TOTAL.to_string());
    })
    .await
}

/// An agent named `ws` whose service accepts any upgrade and echoes the tunnel's bytes.
async fn echo_tunnel_agent(relay: &TestRelay) -> Agent {
    let h = handler(|mut req: Request<Incoming>| async move {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = hyper_util::rt::TokioIo::new(on.await.unwrap());
            let mut buf = [0u8; 64];
            loop {
                let n = io.read(&mut buf).await.unwrap_or(0);
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut res = Response::new(full(""));
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        res.headers_mut().insert("upgrade", "echo".parse().unwrap());
        res.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        res
    });
    start_agent(relay, "ws", 1, None, h).await
}

/// Open a public upgrade to `ws` and check that bytes come back through the tunnel.
async fn open_tunnel(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ws/ HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_echo(&mut s, b"ping").await;
    s
}

async fn assert_echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

#[tokio::test]
async fn upgrade_passes_through_as_a_tunnel() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let _a = echo_tunnel_agent(&relay).await;
        let mut s = open_tunnel(relay.addr).await;
        assert_echo(&mut s, b"pong").await;
    })
    .await
}

#[tokio::test]
async fn drain_lets_open_tunnels_run_until_the_drain_timeout() {
    deadline(async {
        let (_logs_on, logs) = capture_logs();
        let mut cfg = anonymous();
        cfg.drain_timeout = Duration::from_millis(800);
        let mut relay = start_relay(cfg).await;
        let _a = echo_tunnel_agent(&relay).await;
        let mut s = open_tunnel(relay.addr).await;
        relay.shutdown();
        // The relay says when it has stopped accepting and begun the drain.
        logs.wait_for("shutting down: no new connections").await;
        // Draining: the tunnel still carries bytes and the relay has not stopped.
        assert_echo(&mut s, b"still here").await;
        assert!(
            !relay.task.is_finished(),
            "the drain did not wait for the tunnel"
        );
        // At the drain timeout the relay stops and cuts the tunnel.
        (&mut relay.task).await.unwrap();
        let mut rest = Vec::new();
        let cut = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(cut.is_ok(), "the tunnel outlived the relay");
    })
    .await
}

#[tokio::test]
async fn graceful_drain_finishes_in_flight_requests() {
    deadline(async {
        let mut relay = start_relay(anonymous()).await;
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
        let h = handler(move |_req| {
            let entered_tx = entered_tx.clone();
            let release_rx = release_rx.clone();
            async move {
                entered_tx.send(()).unwrap();
                let rx = release_rx.lock().await.take().unwrap();
                let _ = rx.await;
                Response::new(full("finished"))
            }
        });
        let _a = start_agent(&relay, "app", 1, None, h).await;
        let addr = relay.addr;
        let inflight = tokio::spawn(async move { get(addr, "/app/", None).await });
        entered.recv().await.unwrap();
        relay.shutdown();
        release_tx.send(()).unwrap();
        let (s, _, body) = inflight.await.unwrap();
        assert_eq!(s, 200);
        assert_eq!(body, "finished");
        (&mut relay.task).await.unwrap();
        // No longer accepting.
        assert!(TcpStream::connect(addr).await.is_err());
    })
    .await
}
