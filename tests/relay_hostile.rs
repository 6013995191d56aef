//! Hostile public input over raw TCP: the RFC 9112 cases, each with its exact answer, and no
//! request smuggled past the relay to the agent.

mod support;

use http::Request;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;
use tokio::sync::mpsc;

/// An agent that reports every request it sees (path and body) and echoes the body.
fn recording_agent() -> (Handler, mpsc::UnboundedReceiver<(String, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let h = handler(move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            tx.send((path, body.clone())).unwrap();
            Response::new(full(body))
        }
    });
    (h, rx)
}

fn table() -> Vec<(&'static str, Vec<u8>, u16)> {
    let head =
        |fields: &str| format!("GET /app/x HTTP/1.1\r\nHost: x\r\n{fields}\r\n").into_bytes();
    let many: String = (0..10_000).map(|i| format!("X-{i}: y\r\n")).collect();
    let long_line = format!(
        "GET /app/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let few: String = (0..150).map(|i| format!("X-{i}: y\r\n")).collect();
    vec![
        (
            "oversize head",
            head(&format!("X-Big: {}\r\n", "a".repeat(40_000))),
            431,
        ),
        // Over the 16 KiB head cap long before the count matters.
        ("10,000 tiny headers", head(&many), 431),
        // Under the byte cap but over `max_headers` (100): hyper says 431 too.
        ("150 tiny headers", head(&few), 431),
        (
            "16 KiB request line",
            long_line.into_bytes(),
            // The 16 KiB head cap is hit before hyper's URI length check (414).
            431,
        ),
        ("bare CR", b"GET /app/x HTTP/1.1\r\nHost: x\rX: y\r\n\r\n".to_vec(), 400),
        ("whitespace before colon", head("X-A : b\r\n"), 400),
        ("obs-fold", head("X-A: b\r\n c\r\n"), 400),
        ("NUL in a value", head("X-A: b\0c\r\n"), 400),
        (
            "two different Content-Lengths",
            b"POST /app/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
                .to_vec(),
            400,
        ),
        (
            "Transfer-Encoding: gzip",
            b"POST /app/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            "chunked not last",
            b"POST /app/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        // RFC 9112 §3.2 (issue 11 item 4): one Host, and HTTP/1.1 needs one.
        ("two Host fields", head("Host: y\r\n"), 400),
        ("HTTP/1.1 without Host", b"GET /app/x HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("invalid Host value", b"GET /app/x HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(), 400),
        // Agent offers framed ambiguously (issue 11 item 2, protocol-notes §10 #13): 400 and a
        // close, never a 101.
        ("offer CL + TE", offer("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), 400),
        ("offer TE + CL", offer("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"), 400),
        ("offer two differing CL", offer("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), 400),
        ("offer invalid CL", offer("Content-Length: 0x5\r\n", "hello"), 400),
        ("offer TE chunked, gzip", offer("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"), 400),
        ("offer TE gzip, chunked", offer("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"), 501),
        ("offer TE chunked (CL invisible through hyper)", offer("Transfer-Encoding: chunked\r\n", "0\r\n\r\n"), 400),
        ("offer two Host fields", offer("Host: y\r\nContent-Length: 0\r\n", ""), 400),
        (
            "offer without Host",
            b"POST /smug HTTP/1.1\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n".to_vec(),
            400,
        ),
    ]
}

/// An agent's upgrade request for the name `smug`, with `fields` (ending in CRLF) and `body`.
fn offer(fields: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /smug HTTP/1.1\r\nHost: x\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n{fields}\r\n{body}"
    )
    .into_bytes()
}

#[tokio::test]
async fn hostile_input_table() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let (h, mut seen) = recording_agent();
        let _a = start_agent(&relay, "app", 1, None, h).await;
        for (what, bytes, want) in table() {
            let out = raw_exchange(relay.addr, &bytes).await;
            assert_eq!(status_of(&out), want, "{what}: {:?}", out.lines().next());
            assert!(!out.contains(" 101 "), "{what}: {out:?}");
            // Answered and closed: the raw exchange read to the end.
        }
        // No offer was switched.
        assert_eq!(connections(&relay.handle, "smug"), 0);
        // None of them reached the agent: the next thing it sees is this request.
        let (s, _, _) = get(relay.addr, "/app/sentinel", None).await;
        assert_eq!(s, 200);
        assert_eq!(seen.recv().await.unwrap().0, "/sentinel");
        assert!(seen.try_recv().is_err());
    })
    .await
}

#[tokio::test]
async fn content_length_with_chunked_is_framed_by_chunked_and_closed() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let (h, mut seen) = recording_agent();
        let _a = start_agent(&relay, "app", 1, None, h).await;
        // By Content-Length the body would be "3\r\na" and the rest a second request; by
        // chunked framing the body is "abc" and a smuggled request follows.
        let attack = b"POST /app/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
                       Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                       GET /app/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let out = raw_exchange(relay.addr, attack).await;
        assert_eq!(status_of(&out), 200, "{out}");
        let lower = out.to_ascii_lowercase();
        // Exactly one response, and the relay closed the connection after it (read_to_end
        // returned), saying so.
        assert_eq!(lower.matches("http/1.1 ").count(), 1, "{out}");
        assert!(lower.contains("\r\nconnection: close\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nabc"), "{out}");
        let (s, _, _) = get(relay.addr, "/app/sentinel", None).await;
        assert_eq!(s, 200);
        assert_eq!(
            seen.recv().await.unwrap(),
            ("/echo".to_string(), "abc".to_string())
        );
        assert_eq!(seen.recv().await.unwrap().0, "/sentinel");
        assert!(
            seen.try_recv().is_err(),
            "the smuggled request reached the agent"
        );
    })
    .await
}

/// An agent's response with both Content-Length and Transfer-Encoding: the relay frames it by
/// the chunked coding, forwards it without the Content-Length (RFC 9112 §6.3, an intermediary
/// MUST remove it), and closes that agent connection instead of parking it again.
#[tokio::test]
async fn agent_response_with_content_length_and_chunked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let mut agent = raw_agent(&relay, "cte").await;
        let addr = relay.addr;
        let public = tokio::spawn(async move { raw_exchange(addr, b"GET /cte/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await });
        assert!(read_head(&mut agent).await.starts_with("GET /x HTTP/1.1\r\n"));
        agent
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
            .await
            .unwrap();
        let out = public.await.unwrap();
        let lower = out.to_ascii_lowercase();
        assert_eq!(status_of(&out), 200, "{out}");
        assert!(!lower.contains("content-length: 10"), "{out}");
        assert!(out.ends_with("\r\n\r\nhi") || out.ends_with("2\r\nhi\r\n0\r\n\r\n"), "{out}");
        // The relay closes the agent connection rather than parking it again.
        let mut rest = Vec::new();
        let _ = agent.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        assert_eq!(relay.handle.idle("cte"), 0);
    })
    .await
}

/// A hand-written agent: one raw TCP connection that claims `name` and is parked.
async fn raw_agent(relay: &TestRelay, name: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let before = relay.handle.idle(name);
    let mut agent = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    agent
        .write_all(format!("POST /{name} HTTP/1.1\r\nHost: relay\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut agent).await.starts_with("HTTP/1.1 101 "));
    relay.handle.wait_idle(name, before + 1).await;
    agent
}

/// Issue 11 item 5: a `101` to a request that did not ask to upgrade is a 502, never passed
/// on, and that agent connection is closed.
#[tokio::test]
async fn agent_answering_101_unasked_is_502() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    deadline(async {
        let relay = start_relay(anonymous()).await;
        for answer in [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ] {
            let mut agent = raw_agent(&relay, "sw").await;
            let addr = relay.addr;
            let public = tokio::spawn(async move {
                raw_exchange(
                    addr,
                    b"GET /sw/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .await
            });
            assert!(
                read_head(&mut agent)
                    .await
                    .starts_with("GET /x HTTP/1.1\r\n")
            );
            agent.write_all(answer.as_bytes()).await.unwrap();
            let out = public.await.unwrap();
            assert_eq!(status_of(&out), 502, "{answer:?}: {out}");
            assert!(!out.contains(" 101 "), "{answer:?}: {out}");
            let mut rest = Vec::new();
            let _ = agent.read_to_end(&mut rest).await;
            assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
            relay.handle.wait_until(|h| connections(h, "sw") == 0).await;
        }
    })
    .await
}

/// Issue 11 item 6: a public client's own bad body (a malformed chunk; a body shorter than its
/// Content-Length, then a half-close) is a 400, counted as a client error, never
/// a 502 "the agent went away"; the agent keeps serving.
#[tokio::test]
async fn clients_bad_body_is_a_client_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    deadline(async {
        let mut cfg = anonymous();
        cfg.admin = Some("127.0.0.1:0".parse().unwrap());
        let relay = start_relay(cfg).await;
        let (tx, mut body_errors) = mpsc::unbounded_channel();
        let h = handler(move |req: Request<Incoming>| {
            let tx = tx.clone();
            async move {
                match req.into_body().collect().await {
                    Ok(b) => Response::new(full(b.to_bytes())),
                    Err(e) => {
                        tx.send(e.to_string()).unwrap();
                        Response::new(full("unreachable"))
                    }
                }
            }
        });
        // Each bad body costs the agent connection it was on (cut mid-request): three connections.
        let _a = start_agent(&relay, "app", 3, None, h).await;
        let bad_chunk = b"POST /app/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n";
        let out = raw_exchange(relay.addr, bad_chunk).await;
        assert_eq!(status_of(&out), 400, "{out}");
        body_errors.recv().await.unwrap();

        let mut s = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        s.write_all(b"POST /app/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let out = String::from_utf8_lossy(&out);
        assert_eq!(status_of(&out), 400, "{out}");
        body_errors.recv().await.unwrap();

        let (s, _, body) = get(relay.addr, "/app/echo", None).await;
        assert_eq!((s, body.as_str()), (200, ""));
        let (_, _, metrics) = get(relay.handle.admin_addr().unwrap(), "/metrics", None).await;
        assert!(!metrics.contains(",code=\"5"), "{metrics}");
        assert!(
            metrics.contains("ptth_requests_total{name=\"app\",code=\"400\"} 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("ptth_requests_total{name=\"app\",code=\"200\"} 1"),
            "{metrics}"
        );
    })
    .await
}
