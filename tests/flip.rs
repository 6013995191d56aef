//! Role-flip tests: the library dialer against the library listener (raw and hyper_upgrade entry
//! points), over in-memory pipes and real loopback sockets, plus the head-timer behaviour of
//! the flipped server (src/dialer/head_clock.rs).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use ptth::listener::{ListenerConfig, ReversedClient, ReversedConnection, hyper_upgrade, raw};
use ptth::{Error, Limits, Protocol, UpgradeRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TBody = BoxBody<Bytes, BoxError>;

mod support;
use support::DEADLINE;

fn full(s: &'static str) -> TBody {
    Full::from(s).map_err(|e| match e {}).boxed()
}

fn empty() -> TBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A body of the given chunks with no known length: hyper sends it chunked.
struct Chunks(Vec<&'static str>, Option<BoxError>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.0.is_empty() {
            return Poll::Ready(self.1.take().map(Err));
        }
        let first = self.0.remove(0);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(first.as_bytes())))))
    }
    fn size_hint(&self) -> SizeHint {
        if self.1.is_some() {
            // Claims 100 bytes, then fails: the peer sees a body cut short.
            SizeHint::with_exact(100)
        } else {
            SizeHint::default()
        }
    }
}

fn chunks(c: Vec<&'static str>) -> TBody {
    Chunks(c, None).boxed()
}

/// The dialer's service. Reports what it saw of request bodies on `seen`.
fn service(
    seen: mpsc::UnboundedSender<String>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<TBody>,
    Error = Infallible,
    Future = BoxFut,
> + Clone {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let seen = seen.clone();
        let fut: BoxFut = Box::pin(async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let host = req
                .headers()
                .get("host")
                .map(|h| format!("{:?}", h.to_str().unwrap()))
                .unwrap_or_else(|| "none".into());
            let chunked = req.headers().contains_key("transfer-encoding");
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    let _ = seen.send(format!("body error: {e}"));
                    return Ok(Response::new(empty()));
                }
            };
            let text = format!(
                "{method} {path} host={host} chunked={chunked} body={}",
                String::from_utf8_lossy(&body)
            );
            let _ = seen.send(text.clone());
            let res = match path.as_str() {
                "/chunked" => Response::new(chunks(vec!["one,", "two,", "three"])),
                "/204" => {
                    let mut r = Response::new(empty());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                "/304" => {
                    let mut r = Response::new(empty());
                    *r.status_mut() = StatusCode::NOT_MODIFIED;
                    r.headers_mut()
                        .insert("etag", HeaderValue::from_static("\"v1\""));
                    r
                }
                "/broken" => Response::new(Chunks(vec!["part"], Some("boom".into())).boxed()),
                _ => Response::new(Full::from(text).map_err(|e| match e {}).boxed()),
            };
            Ok(res)
        });
        fut
    })
}

type BoxFut =
    Pin<Box<dyn std::future::Future<Output = Result<Response<TBody>, Infallible>> + Send>>;

/// A chunked request body fed from a channel.
struct ChanBody(mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Mem,
    Tcp,
}

#[derive(Clone, Copy, Debug)]
enum Entry {
    Raw,
    Hyper,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A connected pair of streams: (dialer side, listener side).
async fn pipe(t: Transport) -> (Box<dyn Stream>, Box<dyn Stream>) {
    match t {
        Transport::Mem => {
            let (a, b) = tokio::io::duplex(64 * 1024);
            (Box::new(a), Box::new(b))
        }
        Transport::Tcp => {
            let (l, addr) = support::bind_local().await;
            let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
            (Box::new(a.unwrap()), Box::new(b.unwrap().0))
        }
    }
}

struct Flip {
    client: ReversedClient<TBody>,
    conn: JoinHandle<Result<(), Error>>,
    dialer: JoinHandle<Result<(), hyper::Error>>,
    seen: mpsc::UnboundedReceiver<String>,
}

/// Run the listener side on `io` and return its reversed client and connection.
async fn listen(
    io: Box<dyn Stream>,
    entry: Entry,
    cfg: ListenerConfig,
) -> (ReversedClient<TBody>, ReversedConnection) {
    match entry {
        Entry::Raw => {
            let offer = raw::read_offer(io, &cfg).await.unwrap();
            offer.accept_reversed::<TBody>(&cfg).await.unwrap()
        }
        Entry::Hyper => {
            let (tx, rx) = oneshot::channel();
            let tx = std::sync::Mutex::new(Some(tx));
            let cfg2 = cfg.clone();
            let handler = hyper::service::service_fn(move |req: Request<Incoming>| {
                let cfg = cfg2.clone();
                let tx = tx.lock().unwrap().take();
                async move {
                    match hyper_upgrade::offer(req, &cfg).await {
                        Ok(offer) => {
                            let res = offer.switching_response::<Full<Bytes>>();
                            tokio::spawn(async move {
                                let r = offer.reverse::<TBody>(&cfg).await.unwrap();
                                let _ = tx.unwrap().send(r);
                            });
                            Ok::<_, Infallible>(res)
                        }
                        Err(rej) => Ok(rej.into_response()),
                    }
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .title_case_headers(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(io), handler)
                    .with_upgrades(),
            );
            rx.await.unwrap()
        }
    }
}

async fn flip(t: Transport, entry: Entry, limits: Limits) -> Flip {
    let (a, b) = pipe(t).await;
    let (tx, seen) = mpsc::unbounded_channel();
    let dl = limits.clone();
    let dialer = tokio::spawn(async move {
        let mut req = UpgradeRequest::new(HeaderValue::from_static("relay.test"));
        req.protocols = vec![Protocol::Ptth10];
        let flipped = ptth::dialer::handshake(a, &req, &dl).await.unwrap();
        assert_eq!(flipped.protocol(), Protocol::Ptth10);
        flipped.serve(service(tx), &dl).await
    });
    let cfg = ListenerConfig {
        limits,
        ..Default::default()
    };
    let (client, conn) = listen(b, entry, cfg).await;
    Flip {
        client,
        conn: tokio::spawn(conn),
        dialer,
        seen,
    }
}

async fn text(res: Response<Incoming>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

const COMBOS: [(Transport, Entry); 4] = [
    (Transport::Mem, Entry::Raw),
    (Transport::Mem, Entry::Hyper),
    (Transport::Tcp, Entry::Raw),
    (Transport::Tcp, Entry::Hyper),
];

/// #19/#21/#33/#34/#35 and #39 (our A <-> our B): every kind of exchange on one keep-alive
/// connection, ending with `Connection: close`, for both entry points and both transports.
#[tokio::test]
async fn round_trips_on_one_connection_all_entries_and_transports() {
    tokio::time::timeout(DEADLINE, async {
        for (t, e) in COMBOS {
            let ctx = format!("{t:?}/{e:?}");
            let mut f = flip(t, e, Limits::default()).await;
            let c = &mut f.client;

            // GET, default (empty) Host filled by the client.
            let res = c
                .send(Request::get("/echo").body(empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{ctx}");
            assert_eq!(
                text(res).await,
                "GET /echo host=\"\" chunked=false body=",
                "{ctx}"
            );

            // Any Host is served.
            let res = c
                .send(
                    Request::get("/echo")
                        .header("host", "whatever.example")
                        .body(empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(
                text(res).await,
                "GET /echo host=\"whatever.example\" chunked=false body=",
                "{ctx}"
            );

            // POST with a Content-Length body.
            let res = c
                .send(Request::post("/echo").body(full("hello body")).unwrap())
                .await
                .unwrap();
            assert_eq!(
                text(res).await,
                "POST /echo host=\"\" chunked=false body=hello body",
                "{ctx}"
            );

            // Chunked both ways.
            let res = c
                .send(
                    Request::post("/chunked")
                        .body(chunks(vec!["a", "bc", "def"]))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(res.headers()["transfer-encoding"], "chunked", "{ctx}");
            assert_eq!(text(res).await, "one,two,three", "{ctx}");
            assert_eq!(
                f.seen.recv().await.unwrap(),
                "GET /echo host=\"\" chunked=false body="
            );
            let _ = f.seen.recv().await;
            let _ = f.seen.recv().await;
            assert_eq!(
                f.seen.recv().await.unwrap(),
                "POST /chunked host=\"\" chunked=true body=abcdef",
                "{ctx}"
            );

            // HEAD: Content-Length of the GET, no body, and the next exchange is not desynced.
            let res = c
                .send(Request::head("/echo").body(empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{ctx}");
            assert!(res.headers().contains_key("content-length"), "{ctx}");
            assert_eq!(text(res).await, "", "{ctx}");

            // 204 and 304: no body.
            let res = c
                .send(Request::get("/204").body(empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), 204, "{ctx}");
            assert_eq!(text(res).await, "", "{ctx}");
            let res = c
                .send(Request::get("/304").body(empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), 304, "{ctx}");
            assert_eq!(res.headers()["etag"], "\"v1\"", "{ctx}");
            assert_eq!(text(res).await, "", "{ctx}");

            // A reversed request carrying Upgrade: PTTH/1.0 is answered as plain HTTP (#34).
            let res = c
                .send(
                    Request::get("/echo")
                        .header("upgrade", "PTTH/1.0")
                        .header("connection", "upgrade")
                        .body(empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{ctx}");
            assert!(res.headers().get("upgrade").is_none(), "{ctx}");
            assert_eq!(
                text(res).await,
                "GET /echo host=\"\" chunked=false body=",
                "{ctx}"
            );

            // Still the same connection: keep-alive held over all of the above (9 requests).
            let res = c
                .send(
                    Request::get("/last")
                        .header("connection", "close")
                        .body(empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(res.headers()["connection"], "close", "{ctx}");
            assert_eq!(
                text(res).await,
                "GET /last host=\"\" chunked=false body=",
                "{ctx}"
            );

            // Connection: close: the dialer closes after responding (#35).
            f.dialer.await.unwrap().unwrap();
            f.conn.await.unwrap().unwrap();
        }
    })
    .await
    .expect("deadline");
}

/// #22: the dialer's response body breaks off mid-way: a clean error at the listener, no hang.
#[tokio::test]
async fn dialer_vanishing_mid_body_is_a_clean_error() {
    tokio::time::timeout(DEADLINE, async {
        for (t, e) in COMBOS {
            let mut f = flip(t, e, Limits::default()).await;
            // hyper may fail the exchange before or after the head reached the listener.
            match f
                .client
                .send(Request::get("/broken").body(empty()).unwrap())
                .await
            {
                Ok(res) => {
                    assert_eq!(res.headers()["content-length"], "100");
                    let err = res.into_body().collect().await.unwrap_err();
                    assert!(!err.to_string().is_empty(), "{t:?}/{e:?}");
                }
                Err(err) => assert!(matches!(err, Error::Hyper { .. }), "{t:?}/{e:?}: {err:?}"),
            }
            // Both sides finish.
            let _ = f.dialer.await.unwrap();
            let _ = f.conn.await.unwrap();
            assert!(f.client.is_closed() || f.client.ready().await.is_err());
        }
    })
    .await
    .expect("deadline");
}

/// The listener goes away while sending a request body: the dialer's service sees a body
/// error and the dialer's connection ends, no hang.
#[tokio::test]
async fn listener_vanishing_mid_body_is_a_clean_error() {
    tokio::time::timeout(DEADLINE, async {
        for (t, e) in COMBOS {
            let mut f = flip(t, e, Limits::default()).await;
            let (tx, rx) = mpsc::channel(1);
            let body = ChanBody(rx);
            let client = f.client;
            let send = tokio::spawn(async move {
                let mut client = client;
                let _ = client
                    .send(Request::post("/slurp").body(body.boxed()).unwrap())
                    .await;
            });
            tx.send(Bytes::from_static(b"part")).await.unwrap();
            // Wait until the dialer is inside the request (its service is reading the body)...
            tokio::task::yield_now().await;
            // ...then the listener vanishes: its connection task and client are gone.
            f.conn.abort();
            send.abort();
            drop(tx);
            let seen = f.seen.recv().await.expect("service reported");
            assert!(seen.starts_with("body error"), "{t:?}/{e:?}: {seen}");
            let _ = f.dialer.await.unwrap();
        }
    })
    .await
    .expect("deadline");
}

/// #12 after the switch: bytes from the dialer before the first reversed request are an
/// unsolicited response; the listener's connection fails.
#[tokio::test]
async fn unsolicited_bytes_before_the_first_request_fail_the_listener() {
    tokio::time::timeout(DEADLINE, async {
        for t in [Transport::Mem, Transport::Tcp] {
            let (mut a, b) = pipe(t).await;
            let listener = tokio::spawn(async move {
                let (client, conn) = listen(b, Entry::Raw, ListenerConfig::default()).await;
                (client, conn.await)
            });
            a.write_all(b"POST / HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            let mut switch = [0u8; 76];
            a.read_exact(&mut switch).await.unwrap();
            assert!(switch.starts_with(b"HTTP/1.1 101 "));
            a.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
            let (client, result) = listener.await.unwrap();
            assert!(result.is_err(), "{t:?}: {result:?}");
            assert!(client.is_closed(), "{t:?}");
        }
    })
    .await
    .expect("deadline");
}

/// The exact `101` hyper writes for `hyper_upgrade`, with `title_case_headers(true)`.
#[tokio::test]
async fn hyper_upgrade_exact_101_bytes() {
    tokio::time::timeout(DEADLINE, async {
        for t in [Transport::Mem, Transport::Tcp] {
            let (mut a, b) = pipe(t).await;
            let listener = tokio::spawn(listen(b, Entry::Hyper, ListenerConfig::default()));
            a.write_all(b"POST /q HTTP/1.1\r\nHost: r\r\nupgrade: ptth/0.9\r\nConnection: keep-alive, Upgrade\r\nContent-Length: 4\r\n\r\nauth")
                .await
                .unwrap();
            let (mut client, conn) = listener.await.unwrap();
            tokio::spawn(conn);
            let sender = tokio::spawn(async move {
                client.send(Request::get("/x").body(empty()).unwrap()).await.map(|r| r.status())
            });
            let mut got = Vec::new();
            let mut chunk = [0u8; 512];
            while !got.ends_with(b"GET /x HTTP/1.1\r\nhost: \r\n\r\n") {
                let n = a.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&chunk[..n]);
            }
            let text = String::from_utf8(got).unwrap();
            let (head, rest) = text.split_once("\r\n\r\n").unwrap();
            let lines: Vec<&str> = head.split("\r\n").collect();
            assert_eq!(lines[0], "HTTP/1.1 101 Switching Protocols", "{text:?}");
            assert_eq!(lines[1], "Upgrade: ptth/0.9", "{text:?}");
            assert_eq!(lines[2], "Connection: Upgrade", "{text:?}");
            // hyper adds `Date:` (title-cased); nothing else.
            assert_eq!(lines.len(), 4, "{text:?}");
            assert!(lines[3].starts_with("Date: "), "{text:?}");
            assert_eq!(rest, "GET /x HTTP/1.1\r\nhost: \r\n\r\n");
            a.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
            assert_eq!(sender.await.unwrap().unwrap(), 200);
        }
    })
    .await
    .expect("deadline");
}

/// The dialer side of the flip with a hand-driven raw listener, for the timer tests.
async fn dialer_with_raw_listener(
    limits: Limits,
) -> (
    tokio::io::DuplexStream,
    JoinHandle<Result<(), hyper::Error>>,
) {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let dialer = tokio::spawn(async move {
        let req = UpgradeRequest::new(HeaderValue::from_static("r"));
        let flipped = ptth::dialer::handshake(a, &req, &limits).await.unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        flipped.serve(service(tx), &limits).await
    });
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        b.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    b.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    (b, dialer)
}

fn short_head() -> Limits {
    Limits {
        head_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

async fn read_response(b: &mut tokio::io::DuplexStream, end: &str) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    while !got.ends_with(end.as_bytes()) {
        let n = b.read(&mut chunk).await.unwrap();
        assert!(n > 0, "EOF: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// #36, idle part: with `idle_timeout: None` a parked connection outlives `head_timeout`.
#[tokio::test(start_paused = true)]
async fn idle_connection_outlives_head_timeout() {
    tokio::time::timeout(Duration::from_secs(3600), async {
        let (mut b, dialer) = dialer_with_raw_listener(short_head()).await;
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!dialer.is_finished());
        b.write_all(b"GET /late HTTP/1.1\r\n\r\n").await.unwrap();
        let res = read_response(&mut b, "body=").await;
        assert!(res.starts_with("HTTP/1.1 200 OK\r\n"), "{res:?}");
        // A body split over writes, chunked or not, is not mistaken for the next head.
        b.write_all(b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        b.write_all(b"lo").await.unwrap();
        let res = read_response(&mut b, "body=hello").await;
        assert!(res.starts_with("HTTP/1.1 200 OK\r\n"), "{res:?}");
        b.write_all(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut b, "body=hi").await;
        // And again after these exchanges: the idle wait is not a head wait either.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!dialer.is_finished());
        b.write_all(b"GET /later HTTP/1.1\r\n\r\n").await.unwrap();
        let res = read_response(&mut b, "body=").await;
        assert!(res.contains("GET /later"), "{res:?}");
    })
    .await
    .expect("deadline");
}

/// #36, slow-loris part: half a head, then silence: closed `head_timeout` after its first byte.
#[tokio::test(start_paused = true)]
async fn half_a_head_is_closed_after_head_timeout() {
    tokio::time::timeout(Duration::from_secs(3600), async {
        let (mut b, dialer) = dialer_with_raw_listener(short_head()).await;
        tokio::time::sleep(Duration::from_secs(100)).await;
        let start = tokio::time::Instant::now();
        b.write_all(b"GET /slow HTTP/1.1\r\nHo").await.unwrap();
        let result = dialer.await.unwrap();
        let waited = start.elapsed();
        assert!(result.is_err(), "{result:?}");
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    })
    .await
    .expect("deadline");
}

/// Slow-loris variant: a complete request and the start of the next head in one write, then
/// silence. The half head must be timed from its first byte too, although that byte arrived
/// before the server started waiting for the head.
#[tokio::test(start_paused = true)]
async fn half_a_head_behind_a_request_is_closed_after_head_timeout() {
    tokio::time::timeout(Duration::from_secs(3600), async {
        let (mut b, dialer) = dialer_with_raw_listener(short_head()).await;
        let start = tokio::time::Instant::now();
        b.write_all(b"GET /one HTTP/1.1\r\n\r\nGET /two HTTP/1.1\r\nHo")
            .await
            .unwrap();
        let res = read_response(&mut b, "body=").await;
        assert!(res.contains("GET /one"), "{res:?}");
        let result = dialer.await.unwrap();
        let waited = start.elapsed();
        assert!(result.is_err(), "{result:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    })
    .await
    .expect("deadline");
}

/// `idle_timeout: Some(d)` closes a connection that sits idle for `d`.
#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_an_idle_connection() {
    tokio::time::timeout(Duration::from_secs(3600), async {
        let limits = Limits {
            idle_timeout: Some(Duration::from_secs(30)),
            ..short_head()
        };
        let (mut b, dialer) = dialer_with_raw_listener(limits).await;
        // One exchange first; the idle clock starts again after it.
        tokio::time::sleep(Duration::from_secs(20)).await;
        b.write_all(b"GET /one HTTP/1.1\r\n\r\n").await.unwrap();
        read_response(&mut b, "body=").await;
        let start = tokio::time::Instant::now();
        let _ = dialer.await.unwrap();
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
            "{waited:?}"
        );
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    })
    .await
    .expect("deadline");
}
