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
    ]
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
            // Answered and closed: the raw exchange read to the end.
        }
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
        let mut agent = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        agent
            .write_all(b"POST /cte HTTP/1.1\r\nHost: relay\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        assert!(read_head(&mut agent).await.starts_with("HTTP/1.1 101 "));
        while relay.handle.idle("cte") == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
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
