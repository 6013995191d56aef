//! Hostile or unusual bytes on the *reversed* connection, after the flip, from hand-written peers:
//! interim responses and bad response framing sent by a dialer to our listener (protocol notes
//! §10 #19, #20), and hostile reversed requests sent by a listener to our dialer (#32).

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use ptth::listener::{ListenerConfig, ReversedClient, raw};
use ptth::{Limits, UpgradeRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TBody = BoxBody<Bytes, BoxError>;

mod support;
use support::DEADLINE;

const OFFER: &[u8] =
    b"POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n";

fn get(path: &str) -> Request<TBody> {
    Request::get(path)
        .body(Empty::new().map_err(|e| match e {}).boxed())
        .unwrap()
}

/// Read from `s` until `buf` ends with `end`; panics on EOF.
async fn read_until(s: &mut DuplexStream, buf: &mut Vec<u8>, end: &[u8]) {
    let mut chunk = [0u8; 1024];
    while !buf.ends_with(end) {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "EOF after {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Read everything until the peer closes (bounded by the test deadline).
async fn read_to_close(s: &mut DuplexStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ===== our listener, a hand-written dialer =====

/// Flip a raw dialer (`a`, returned) against our raw listener; hands back the reversed client
/// and the task driving its connection.
async fn listener_with_raw_dialer() -> (
    DuplexStream,
    ReversedClient<TBody>,
    tokio::task::JoinHandle<Result<(), ptth::Error>>,
) {
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    let cfg = ListenerConfig::default();
    let listener = tokio::spawn(async move {
        let offer = raw::read_offer(b, &cfg).await.unwrap();
        offer.accept_reversed::<TBody>(&cfg).await.unwrap()
    });
    a.write_all(OFFER).await.unwrap();
    let mut switch = Vec::new();
    read_until(&mut a, &mut switch, b"\r\n\r\n").await;
    assert!(switch.starts_with(b"HTTP/1.1 101 "));
    let (client, conn) = listener.await.unwrap();
    (a, client, tokio::spawn(conn))
}

type Sent = tokio::task::JoinHandle<(
    Result<Response<Incoming>, ptth::Error>,
    ReversedClient<TBody>,
)>;

/// Let the listener send `GET path` and read the request head it writes. The task hands the
/// client back with the result, for the next request.
async fn expect_request(
    a: &mut DuplexStream,
    mut client: ReversedClient<TBody>,
    path: &str,
) -> Sent {
    let p = path.to_string();
    let task = tokio::spawn(async move {
        let r = client.send(get(&p)).await;
        (r, client)
    });
    let mut head = Vec::new();
    read_until(a, &mut head, b"\r\n\r\n").await;
    let want = format!("GET {path} HTTP/1.1\r\n");
    assert!(
        head.starts_with(want.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    task
}

async fn body_text(res: Response<Incoming>) -> Result<String, hyper::Error> {
    let b = res.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// #19: `100 Continue` and `103 Early Hints` before the final response are skipped, and the
/// connection stays in step for the next request.
#[tokio::test]
async fn interim_responses_before_the_final_one_are_skipped() {
    tokio::time::timeout(DEADLINE, async {
        let (mut a, client, _conn) = listener_with_raw_dialer().await;
        let task = expect_request(&mut a, client, "/first").await;
        a.write_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
        )
        .await
        .unwrap();
        let (res, client) = task.await.unwrap();
        let res = res.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(body_text(res).await.unwrap(), "first");

        let task = expect_request(&mut a, client, "/second").await;
        a.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
            .await
            .unwrap();
        let (res, _) = task.await.unwrap();
        assert_eq!(body_text(res.unwrap()).await.unwrap(), "second");
    })
    .await
    .expect("deadline");
}

/// #20: a response with a Content-Length that is not a number, or two that differ, fails that
/// request and closes the connection: no later request can read its leftovers.
#[tokio::test]
async fn invalid_content_length_fails_the_request_and_closes() {
    tokio::time::timeout(DEADLINE, async {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 5\r\n\r\nabcde",
        ] {
            let (mut a, client, conn) = listener_with_raw_dialer().await;
            let task = expect_request(&mut a, client, "/x").await;
            a.write_all(bad).await.unwrap();
            let (res, client) = task.await.unwrap();
            assert!(
                res.is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
            let ended = conn.await.unwrap();
            assert!(client.is_closed(), "{ended:?}");
        }
    })
    .await
    .expect("deadline");
}

/// #20: a response with both Content-Length and Transfer-Encoding is framed by the chunked
/// coding and handed over without the Content-Length (RFC 9112 §6.3), and its connection is
/// retired: the dialer may disagree about where the next response starts.
#[tokio::test]
async fn content_length_beside_chunked_retires_the_connection() {
    tokio::time::timeout(DEADLINE, async {
        let (mut a, client, _conn) = listener_with_raw_dialer().await;
        let task = expect_request(&mut a, client, "/x").await;
        // Under Content-Length the body would be "2\r\nhi\r\n0\r" and the rest a new response.
        a.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        let (res, mut client) = task.await.unwrap();
        let res = res.unwrap();
        assert!(!res.headers().contains_key("content-length"));
        assert_eq!(body_text(res).await.unwrap(), "hi");
        assert!(client.is_closed());
        assert!(!client.is_ready());
        let next = client.send(get("/next")).await;
        assert!(
            matches!(next, Err(ptth::Error::Closed { .. })),
            "{next:?}"
        );
    })
    .await
    .expect("deadline");
}

// ===== our dialer, a hand-written listener =====

/// Flip our dialer against a raw listener (`b`, returned) and serve a service that answers
/// every request with its method and target.
async fn dialer_with_raw_listener() -> (
    DuplexStream,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let limits = Limits::default();
    let dialer = tokio::spawn(async move {
        let req = UpgradeRequest::new(HeaderValue::from_static("r"));
        let flipped = ptth::dialer::handshake(a, &req, &limits).await.unwrap();
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let mut text = format!("{} {}", req.method(), req.uri());
            if let Err(e) = req.into_body().collect().await {
                text = format!("body error: {e}");
            }
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(text)))
        });
        flipped.serve(svc, &limits).await
    });
    let mut head = Vec::new();
    read_until(&mut b, &mut head, b"\r\n\r\n").await;
    b.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    (b, dialer)
}

/// #32: each hostile reversed request gets a 4xx and the connection is closed; a bad head never
/// reaches the service, and a bad body reaches it only as a body error.
#[tokio::test]
async fn hostile_reversed_requests_are_refused_and_closed() {
    tokio::time::timeout(DEADLINE, async {
        let big = format!(
            "GET / HTTP/1.1\r\nHost:\r\nX-Big: {}\r\n\r\n",
            "a".repeat(40_000)
        );
        let many = format!("GET / HTTP/1.1\r\nHost:\r\n{}\r\n", "X: y\r\n".repeat(500));
        let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
            ("oversize head", big.into_bytes(), &["HTTP/1.1 431"]),
            ("too many fields", many.into_bytes(), &["HTTP/1.1 431"]),
            (
                "bad chunk size",
                b"POST / HTTP/1.1\r\nHost:\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
                // The head is fine, so the service runs and sees the body fail.
                &["HTTP/1.1 200 OK\r\ncontent-length: 48\r\n"],
            ),
            (
                "NUL in a field value",
                b"GET / HTTP/1.1\r\nHost:\r\nX: a\0b\r\n\r\n".to_vec(),
                &["HTTP/1.1 400"],
            ),
            (
                "space before the colon",
                b"GET / HTTP/1.1\r\nHost:\r\nX : y\r\n\r\n".to_vec(),
                &["HTTP/1.1 400"],
            ),
            (
                "two differing Content-Lengths",
                b"POST / HTTP/1.1\r\nHost:\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"
                    .to_vec(),
                &["HTTP/1.1 400"],
            ),
            (
                "chunked not last",
                b"POST / HTTP/1.1\r\nHost:\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
                    .to_vec(),
                &["HTTP/1.1 400"],
            ),
        ];
        for (name, bytes, want) in cases {
            let (mut b, dialer) = dialer_with_raw_listener().await;
            b.write_all(&bytes).await.unwrap();
            let got = read_to_close(&mut b).await;
            assert!(
                want.iter().any(|w| got.starts_with(w)),
                "{name}: got {got:?}"
            );
            // Nothing was served as a valid request: no response echoes a method.
            assert!(
                !got.contains("\r\n\r\nGET /") && !got.contains("\r\n\r\nPOST /"),
                "{name}: {got:?}"
            );
            assert!(got.matches("HTTP/1.1 ").count() <= 1, "{name}: {got:?}");
            if got.starts_with("HTTP/1.1 200") {
                assert!(got.ends_with("body error: error reading a body from connection"), "{name}: {got:?}");
            }
            let _ = dialer.await.unwrap();
        }
    })
    .await
    .expect("deadline");
}

/// #32: absolute-form and asterisk-form targets are valid HTTP/1.1 and are served as such.
#[tokio::test]
async fn absolute_and_asterisk_targets_are_served() {
    tokio::time::timeout(DEADLINE, async {
        let (mut b, dialer) = dialer_with_raw_listener().await;
        b.write_all(b"GET http://agent.example/x?y=1 HTTP/1.1\r\nHost: agent.example\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        read_until(&mut b, &mut got, b"GET http://agent.example/x?y=1").await;
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
        b.write_all(b"OPTIONS * HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let rest = read_to_close(&mut b).await;
        assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest:?}");
        assert!(rest.ends_with("OPTIONS *"), "{rest:?}");
        dialer.await.unwrap().unwrap();
    })
    .await
    .expect("deadline");
}

/// #32: CL together with TE in a reversed request: framed by TE and the connection closed after
/// the response (RFC 9112 §6.1), so the bytes past the chunked body never become a request.
#[tokio::test]
async fn content_length_with_chunked_request_closes_after_the_response() {
    tokio::time::timeout(DEADLINE, async {
        let (mut b, dialer) = dialer_with_raw_listener().await;
        b.write_all(
            b"POST /a HTTP/1.1\r\nHost:\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost:\r\n\r\n",
        )
        .await
        .unwrap();
        let got = read_to_close(&mut b).await;
        assert!(!got.contains("/smuggled"), "{got:?}");
        assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{got:?}");
        let _ = dialer.await.unwrap();
    })
    .await
    .expect("deadline");
}
