//! Our roles against hand-written raw peers over loopback TCP (§10 #39): a dialer that
//! behaves like npm reverse-http (protocol-notes §4a) against our listener, and a hand-written
//! listener against our dialer. Every byte the raw peers see or send is checked.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use ptth::listener::ListenerConfig;
use ptth::{Limits, Protocol, UpgradeRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::DEADLINE;

/// Read one message head (through CRLFCRLF) and then `body_len(head)` bytes of body, exactly.
async fn read_message(s: &mut TcpStream, body_len: impl Fn(&str) -> BodyLen) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let body = match body_len(&head) {
        BodyLen::Exact(n) => {
            let mut v = vec![0u8; n];
            s.read_exact(&mut v).await.unwrap();
            v
        }
        BodyLen::ChunkedUntilEnd => {
            let mut v = Vec::new();
            while !v.ends_with(b"0\r\n\r\n") {
                let mut b = [0u8];
                s.read_exact(&mut b).await.unwrap();
                v.push(b[0]);
            }
            v
        }
    };
    (head, body)
}

enum BodyLen {
    Exact(usize),
    ChunkedUntilEnd,
}

fn framing(head: &str, head_request: bool) -> BodyLen {
    let lower = head.to_ascii_lowercase();
    if head_request {
        return BodyLen::Exact(0);
    }
    if lower.contains("\r\ntransfer-encoding: chunked\r\n") {
        return BodyLen::ChunkedUntilEnd;
    }
    let n = lower
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    BodyLen::Exact(n)
}

#[tokio::test]
async fn npm_style_raw_dialer_against_our_listener() {
    tokio::time::timeout(DEADLINE, async {
        let (tcp, addr) = support::bind_local().await;
        let listener = tokio::spawn(async move {
            let cfg = ListenerConfig::default();
            let offer = support::read_offer_on(&tcp).await;
            assert_eq!(offer.protocol(), Protocol::Ptth10);
            let (mut c, conn) = offer
                .accept_reversed::<http_body_util::combinators::BoxBody<Bytes, Infallible>>(&cfg)
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut out = Vec::new();
            let reqs = [
                http::Request::get("/status").body(Full::from("").boxed()).unwrap(),
                http::Request::post("/p").body(Full::from("hello").boxed()).unwrap(),
                http::Request::head("/status").body(Full::from("").boxed()).unwrap(),
                http::Request::get("/chunked").body(Full::from("").boxed()).unwrap(),
            ];
            for r in reqs {
                let res = c.send(r).await.unwrap();
                let status = res.status();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                out.push(format!("{status} {}", String::from_utf8_lossy(&body)));
            }
            out
        });
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("POST /message-queue?id=iamsam HTTP/1.1\r\nHost: {addr}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let want = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n";
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], want);
        // Serve four requests on the same connection, as Node's http.Server would.
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (head, body) = read_message(&mut s, |h| framing(h, false)).await;
            let line = head.lines().next().unwrap().to_string();
            let reply: Vec<u8> = match line.as_str() {
                "HEAD /status HTTP/1.1" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\n".to_vec(),
                "GET /chunked HTTP/1.1" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nGo\r\n2\r\nod\r\n0\r\n\r\n".to_vec(),
                _ => format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nKeep-Alive: timeout=5\r\n\r\nGood{}", 4 + body.len(), String::from_utf8_lossy(&body)).into_bytes(),
            };
            s.write_all(&reply).await.unwrap();
            seen.push((head, body));
        }
        assert_eq!(seen[0].0, "GET /status HTTP/1.1\r\nhost: \r\n\r\n");
        assert_eq!(seen[1].0, "POST /p HTTP/1.1\r\nhost: \r\ncontent-length: 5\r\n\r\n");
        assert_eq!(seen[1].1, b"hello");
        assert_eq!(seen[2].0, "HEAD /status HTTP/1.1\r\nhost: \r\n\r\n");
        assert_eq!(
            listener.await.unwrap(),
            ["200 OK Good", "200 OK Goodhello", "200 OK ", "200 OK Good"]
        );
    })
    .await
    .expect("deadline");
}

async fn echo(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let line = format!(
        "{} {} host={:?}",
        req.method(),
        req.uri(),
        req.headers().get("host")
    );
    let body = req.into_body().collect().await.unwrap().to_bytes();
    Ok(http::Response::new(Full::from(format!(
        "{line} body={}",
        String::from_utf8_lossy(&body)
    ))))
}

#[tokio::test]
async fn raw_listener_against_our_dialer() {
    tokio::time::timeout(DEADLINE, async {
        let (tcp, addr) = support::bind_local().await;
        let dialer = tokio::spawn(async move {
            let s = TcpStream::connect(addr).await.unwrap();
            let req = UpgradeRequest::new(addr.to_string().parse().unwrap());
            let f = ptth::dialer::handshake(s, &req, &Limits::default()).await.unwrap();
            f.serve(hyper::service::service_fn(echo), &Limits::default()).await
        });
        let (mut s, _) = tcp.accept().await.unwrap();
        let (head, _) = read_message(&mut s, |h| framing(h, false)).await;
        assert_eq!(head, format!("POST / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n"));
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\n").await.unwrap();
        let exchanges: [(&[u8], bool, &str); 5] = [
            (b"GET /a HTTP/1.1\r\n\r\n", false, "GET /a host=None body="),
            (b"GET /b HTTP/1.1\r\nHost: whatever\r\n\r\n", false, "GET /b host=Some(\"whatever\") body="),
            (b"POST /c HTTP/1.1\r\nHost: \r\nContent-Length: 5\r\n\r\nhello", false, "POST /c host=Some(\"\") body=hello"),
            (b"POST /d HTTP/1.1\r\nHost: \r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", false, "POST /d host=Some(\"\") body=abcde"),
            (b"HEAD /e HTTP/1.1\r\nHost: \r\n\r\n", true, ""),
        ];
        for (req, is_head, want) in exchanges {
            s.write_all(req).await.unwrap();
            let (head, body) = read_message(&mut s, |h| framing(h, is_head)).await;
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
            assert_eq!(String::from_utf8(body).unwrap(), want);
            if is_head {
                assert!(head.contains("content-length: "), "{head:?}");
            }
        }
        drop(s);
        let _ = dialer.await.unwrap();
    })
    .await
    .expect("deadline");
}
