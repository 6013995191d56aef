//! Message framing end to end through the relay: HEAD, 204, 304, chunked bodies with trailers
//! both ways, and `Expect: 100-continue`.

mod support;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One agent serving every framing case, by path.
fn framing_handler() -> Handler {
    handler(|req: Request<Incoming>| async move {
        match req.uri().path() {
            "/head" => {
                // hyper drops the body of a HEAD answer but keeps the declared length.
                let mut res = Response::new(full("hello"));
                res.headers_mut()
                    .insert("content-length", HeaderValue::from_static("5"));
                res
            }
            "/204" => {
                let mut res = Response::new(full(""));
                *res.status_mut() = StatusCode::NO_CONTENT;
                res
            }
            "/304" => {
                let mut res = Response::new(full(""));
                *res.status_mut() = StatusCode::NOT_MODIFIED;
                res.headers_mut()
                    .insert("etag", HeaderValue::from_static("\"v1\""));
                res
            }
            "/trailers" => {
                let mut body = req.into_body();
                let mut data = Vec::new();
                let mut sum = String::from("none");
                while let Some(f) = body.frame().await {
                    let f = f.unwrap();
                    match f.into_data() {
                        Ok(d) => data.extend_from_slice(&d),
                        Err(f) => {
                            if let Ok(t) = f.into_trailers() {
                                sum = t
                                    .get("x-req-sum")
                                    .map_or("missing".into(), |v| v.to_str().unwrap().into());
                            }
                        }
                    }
                }
                let mut t = HeaderMap::new();
                t.insert("x-resp-sum", HeaderValue::from_static("7"));
                // Data frames are 'static: report what was received in a header instead.
                let body = FramesBody::new(&["resp-", "chunks"], Some(t));
                let mut res = Response::new(body.boxed());
                res.headers_mut()
                    .insert("trailer", HeaderValue::from_static("x-resp-sum"));
                res.headers_mut().insert(
                    "x-got",
                    HeaderValue::from_str(&format!("{}|{sum}", String::from_utf8_lossy(&data)))
                        .unwrap(),
                );
                res
            }
            _ => {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                Response::new(full(body))
            }
        }
    })
}

/// Send `first` on a raw connection, read its head, then a `Connection: close` GET on the
/// same connection and read to the end: a body wrongly sent after `first`'s head would show up
/// before the second status line.
async fn then_get(addr: std::net::SocketAddr, first: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(first.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    s.write_all(b"GET /app/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    (head, String::from_utf8_lossy(&rest).into_owned())
}

#[tokio::test]
async fn head_204_304_have_no_body() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let _a = start_agent(&relay, "app", 1, None, framing_handler()).await;

        let (head, rest) = then_get(relay.addr, "HEAD /app/head HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("content-length: 5\r\n"),
            "HEAD keeps the length: {head}"
        );
        assert!(rest.starts_with("HTTP/1.1 200"), "HEAD sent a body: {rest}");

        let (head, rest) = then_get(relay.addr, "GET /app/204 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 204"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(
            !lower.contains("transfer-encoding") && !lower.contains("content-length"),
            "{head}"
        );
        assert!(rest.starts_with("HTTP/1.1 200"), "204 sent a body: {rest}");

        let (head, rest) = then_get(relay.addr, "GET /app/304 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 304"), "{head}");
        assert!(head.to_ascii_lowercase().contains("etag: \"v1\""), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "{head}"
        );
        assert!(rest.starts_with("HTTP/1.1 200"), "304 sent a body: {rest}");
    })
    .await
}

#[tokio::test]
async fn chunked_bodies_and_trailers_pass_both_ways() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let _a = start_agent(&relay, "app", 1, None, framing_handler()).await;
        let mut t = HeaderMap::new();
        t.insert("x-req-sum", HeaderValue::from_static("42"));
        let body = FramesBody::new(&["abc", "def"], Some(t));
        let req = Request::post("/app/trailers")
            .header("host", "x")
            .header("trailer", "x-req-sum")
            .header("te", "trailers")
            .body(body.boxed())
            .unwrap();
        let res = send(relay.addr, req).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers().get("x-got").unwrap(),
            "abcdef|42",
            "the agent got the chunked body and its trailers"
        );
        assert!(res.headers().get("content-length").is_none());
        let mut body = res.into_body();
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(f) = body.frame().await {
            let f = f.unwrap();
            if let Some(d) = f.data_ref() {
                data.extend_from_slice(d);
            } else if let Some(t) = f.trailers_ref() {
                trailers = Some(t.clone());
            }
        }
        assert_eq!(data, b"resp-chunks");
        let trailers = trailers.expect("the response trailers reached the public client");
        assert_eq!(trailers.get("x-resp-sum").unwrap(), "7");
    })
    .await
}

#[tokio::test]
async fn expect_100_continue_end_to_end() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let _a = start_agent(&relay, "app", 1, None, framing_handler()).await;
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        s.write_all(
            b"POST /app/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        // The body is only sent once the interim answer came.
        let interim = read_head(&mut s).await;
        assert!(
            interim.starts_with("HTTP/1.1 100 Continue\r\n"),
            "{interim}"
        );
        s.write_all(b"hello").await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
        assert!(rest.ends_with("\r\n\r\nhello"), "{rest}");
    })
    .await
}

/// Refusals the relay makes itself (here: no agent for the name) never send `100 Continue`:
/// the client that waits for it gets the final status instead, and keeps its body.
#[tokio::test]
async fn relay_made_refusals_send_no_100() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let raw = raw_exchange(
            relay.addr,
            b"POST /nobody/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&raw), 404, "{raw}");
        assert!(!raw.contains("100 Continue"), "{raw}");
    })
    .await
}

/// A dialer that answers in HTTP/1.0: the relay answers the public client in its own version,
/// HTTP/1.1 (RFC 9110 §6.2), framing the body itself.
#[tokio::test]
async fn an_http_1_0_answer_reaches_the_public_as_http_1_1() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let old = handler(|_req: Request<Incoming>| async move {
            let mut res = Response::new(full("from 1.0"));
            *res.version_mut() = http::Version::HTTP_10;
            res
        });
        let _a = start_agent(&relay, "app", 1, None, old).await;
        let raw = raw_exchange(
            relay.addr,
            b"GET /app/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
        assert!(raw.ends_with("\r\n\r\nfrom 1.0"), "{raw}");
    })
    .await
}
