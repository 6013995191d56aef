//! `ptth` (draft-kazuho-ptth-ptth) with HTTP/2 inside: both library roles against each other
//! over loopback TCP, the refusals, hostile peers, and a third-party HTTP/2 peer (the Python
//! `h2` package, tests/h2/*.py) in each role.
//!
//! Concurrency is proven without clocks: the service's `/together` requests wait on one
//! barrier, so they finish only if all of them are open on the one connection at once.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ptth::listener::{ListenerConfig, hyper_upgrade, raw};
use ptth::proto::origin::{self, Origin, Scheme};
use ptth::proto::request::OfferRules;
use ptth::{AlpnId, Error, Limits, Protocol, SwitchError, UpgradeRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;

mod support;
use support::DEADLINE;
/// Requests held open at once on one connection.
const TOGETHER: usize = 32;
/// The large body, each way.
const LARGE: usize = 8 * 1024 * 1024;

use support::{IoBody as Body, io_full as full};

/// A body of `chunks` 16 KiB chunks, then an error: hyper resets the stream mid-body.
struct FailsMidway {
    chunks: usize,
}

impl http_body::Body for FailsMidway {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.chunks == 0 {
            return Poll::Ready(Some(Err(std::io::Error::other("the backend broke off"))));
        }
        self.chunks -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'r'; 16 * 1024])))))
    }
}

/// The dialer's service: `/together` (barrier), `/echo` (body back, with its length),
/// `/large` ([`LARGE`] bytes), `/reset` (a body that fails midway), anything else `200 path`.
#[derive(Clone)]
struct Backend {
    barrier: Arc<Barrier>,
}

impl hyper::service::Service<Request<Incoming>> for Backend {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let barrier = self.barrier.clone();
        Box::pin(async move {
            let authority = req.uri().authority().map(|a| a.to_string());
            let body = match req.uri().path() {
                "/together" => {
                    barrier.wait().await;
                    full("together")
                }
                "/echo" => {
                    let got = req.into_body().collect().await.unwrap().to_bytes();
                    full(got)
                }
                "/large" => full(vec![b'L'; LARGE]),
                "/reset" => FailsMidway { chunks: 4 }.boxed(),
                path => full(format!("{path} authority={authority:?}")),
            };
            Ok(Response::new(body))
        })
    }
}

fn backend() -> Backend {
    Backend {
        barrier: Arc::new(Barrier::new(TOGETHER)),
    }
}

fn transposed_config() -> ListenerConfig {
    ListenerConfig {
        rules: OfferRules::with_transposed(),
        ..ListenerConfig::default()
    }
}

fn origins() -> Vec<Origin> {
    vec![
        Origin::new(Scheme::Http, "app.example", None).unwrap(),
        Origin::new(Scheme::Https, "api.example", Some(8443)).unwrap(),
    ]
}

/// One TCP connection on loopback: the listener's and the dialer's ends.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dial = TcpStream::connect(l.local_addr().unwrap());
    let (dialed, accepted) = tokio::join!(dial, l.accept());
    (accepted.unwrap().0, dialed.unwrap())
}

/// The dialer offers `ptth` for [`origins`], and serves [`backend`] with HTTP/2; the listener
/// accepts and starts its HTTP/2 client.
async fn h2_pair() -> (
    ptth::listener::ReversedH2Client<Body>,
    tokio::task::JoinHandle<Result<(), Error>>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let (b, a) = tcp_pair().await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let dialer = tokio::spawn(async move {
        let mut req = UpgradeRequest::transposed(HeaderValue::from_static("proxy.example"));
        req.target = origin::well_known_target(&origins());
        let flipped = ptth::dialer::handshake(a, &req, &Limits::default())
            .await
            .unwrap();
        assert!(flipped.is_h2());
        assert_eq!(flipped.protocol(), Protocol::Transposed);
        let conn = flipped.serve_h2(backend(), &Limits::default());
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = stop_rx => conn.as_mut().graceful_shutdown(),
        }
        conn.await
    });
    let cfg = transposed_config();
    let offer = raw::read_offer(b, &cfg).await.unwrap();
    assert_eq!(offer.protocol(), Protocol::Transposed);
    assert_eq!(offer.alpn(), Some(&AlpnId::h2()));
    assert_eq!(offer.origins(), origins().as_slice());
    let (client, conn) = offer.accept_h2(&cfg).await.unwrap();
    let conn = tokio::spawn(conn);
    (client, conn, stop_tx, dialer)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("host", "app.example")
        .body(full(Bytes::new()))
        .unwrap()
}

/// GET `path` on `c`: the response body as text.
async fn get_text(c: &mut ptth::listener::ReversedH2Client<Body>, path: &str) -> String {
    text(c.send(get(path)).await.unwrap()).await
}

async fn text(res: Response<Incoming>) -> String {
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn many_requests_at_once_on_one_connection_and_large_bodies_both_ways() {
    tokio::time::timeout(DEADLINE, async {
        let (client, conn, _stop, _dialer) = h2_pair().await;
        let mut tasks = Vec::new();
        for _ in 0..TOGETHER {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move { c.send(get("/together")).await }));
        }
        for t in tasks {
            let res = t.await.unwrap().unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(text(res).await, "together");
        }
        // Host became :authority, with the scheme http.
        let mut c = client.clone();
        assert_eq!(
            text(c.send(get("/who")).await.unwrap()).await,
            "/who authority=Some(\"app.example\")"
        );
        // Large bodies both ways, at the same time.
        let upload: Vec<u8> = (0..LARGE).map(|i| (i % 251) as u8).collect();
        let req = Request::post("/echo")
            .header("host", "app.example")
            .body(full(upload.clone()))
            .unwrap();
        let (mut c1, mut c2) = (client.clone(), client.clone());
        let (up, down) = tokio::join!(c1.send(req), c2.send(get("/large")));
        let up = up.unwrap().into_body().collect().await.unwrap().to_bytes();
        assert!(up[..] == upload[..], "echoed upload differs");
        let down = down
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(down.len(), LARGE);
        assert!(down.iter().all(|&b| b == b'L'));
        drop((client, c, c1, c2));
        // Dropping every sender ends the connection (hyper sends GOAWAY).
        conn.await.unwrap().unwrap();
    })
    .await
    .expect("deadline");
}

#[tokio::test]
async fn a_stream_reset_mid_body_fails_only_its_request() {
    tokio::time::timeout(DEADLINE, async {
        let (client, _conn, _stop, _dialer) = h2_pair().await;
        let (mut c1, mut c2) = (client.clone(), client.clone());
        let (reset, large) = tokio::join!(c1.send(get("/reset")), c2.send(get("/large")));
        // The stream is reset: before its head was read, or in its body.
        let err = match reset {
            Err(e) => format!("{e:?}"),
            Ok(res) => {
                assert_eq!(res.status(), StatusCode::OK);
                format!("{:?}", res.into_body().collect().await.unwrap_err())
            }
        };
        assert!(err.contains("INTERNAL_ERROR"), "{err}");
        // The request beside it, and the next one, are whole.
        let large = large
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(large.len(), LARGE);
        let mut c3 = client.clone();
        assert!(
            text(c3.send(get("/after")).await.unwrap())
                .await
                .starts_with("/after")
        );
    })
    .await
    .expect("deadline");
}

#[tokio::test]
async fn the_dialers_goaway_lets_open_streams_finish_and_refuses_new_ones() {
    tokio::time::timeout(DEADLINE, async {
        let (client, conn, stop, dialer) = h2_pair().await;
        // An upload whose body is not complete yet: the stream stays open across the GOAWAY.
        let (tx, body) = body_channel();
        let req = Request::post("/echo")
            .header("host", "app.example")
            .body(body.boxed())
            .unwrap();
        let mut c = client.clone();
        let open = tokio::spawn(async move { c.send(req).await });
        tx.send(Bytes::from_static(b"first half, ")).await.unwrap();
        // Make sure the stream is open at the dialer before the GOAWAY: a full round trip on
        // another stream after the upload's HEADERS were written.
        let mut probe = client.clone();
        text(probe.send(get("/probe")).await.unwrap()).await;
        stop.send(()).unwrap();
        tx.send(Bytes::from_static(b"second half")).await.unwrap();
        drop(tx);
        let res = open.await.unwrap().unwrap();
        assert_eq!(text(res).await, "first half, second half");
        // The dialer's connection ends cleanly; the listener's too, and new requests fail.
        dialer.await.unwrap().unwrap();
        conn.await.unwrap().unwrap();
        let mut late = client.clone();
        assert!(late.send(get("/late")).await.is_err());
        assert!(late.is_closed());
    })
    .await
    .expect("deadline");
}

/// A request body fed from a channel, so a test decides when it ends.
fn body_channel() -> (tokio::sync::mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, ChannelBody(rx))
}

struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// A `ptth` offer with `http/1.1` inside is today's reversed HTTP/1.1; the wrong reversed
/// client for the chosen protocol is a typed error before anything is written.
#[tokio::test]
async fn ptth_with_http11_inside_is_reversed_http11() {
    tokio::time::timeout(DEADLINE, async {
        let (b, a) = tcp_pair().await;
        let dialer = tokio::spawn(async move {
            let mut req = UpgradeRequest::transposed(HeaderValue::from_static("proxy.example"));
            req.alpn = vec![AlpnId::http11()];
            let flipped = ptth::dialer::handshake(a, &req, &Limits::default())
                .await
                .unwrap();
            assert_eq!(flipped.alpn(), Some(&AlpnId::http11()));
            assert!(!flipped.is_h2());
            flipped.serve(backend(), &Limits::default()).await
        });
        let cfg = transposed_config();
        let offer = raw::read_offer(b, &cfg).await.unwrap();
        assert_eq!(offer.alpn(), Some(&AlpnId::http11()));
        assert!(offer.origins().is_empty(), "target / names no origins");
        let (mut client, conn) = offer.accept_reversed::<Body>(&cfg).await.unwrap();
        tokio::spawn(conn);
        let res = client.send(get("/h1")).await.unwrap();
        assert!(text(res).await.starts_with("/h1"));
        drop(client);
        dialer.await.unwrap().unwrap();

        // accept_h2 on an http/1.1 choice (and the reverse) is refused before the 101.
        let (b, mut a) = tokio::io::duplex(4096);
        let mut req = UpgradeRequest::transposed(HeaderValue::from_static("p"));
        req.alpn = vec![AlpnId::http11()];
        a.write_all(&req.encode()).await.unwrap();
        let offer = raw::read_offer(b, &cfg).await.unwrap();
        let Err(err) = offer.accept_h2::<Body>(&cfg).await else {
            panic!("accept_h2 on an http/1.1 offer");
        };
        assert!(matches!(err, Error::InnerProtocol { .. }), "{err}");
    })
    .await
    .expect("deadline");
}

/// Offers the listener must refuse, at both entry points, with the status and a body that
/// says why.
#[tokio::test]
async fn refusals_table() {
    struct Case {
        name: &'static str,
        head: &'static str,
        config: fn() -> ListenerConfig,
        status: u16,
        says: &'static str,
    }
    let cases = [
        Case {
            name: "ptth without ALPN",
            head: "GET / HTTP/1.1\r\nHost: p\r\nUpgrade: ptth\r\nConnection: Upgrade\r\n",
            config: transposed_config,
            status: 400,
            says: "needs an ALPN field",
        },
        Case {
            name: "ALPN naming only h3qx",
            head: "GET / HTTP/1.1\r\nHost: p\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h3qx\r\n",
            config: transposed_config,
            status: 400,
            says: "ALPN offers h3qx, none of which this listener runs (it runs h2, http%2F1.1)",
        },
        Case {
            name: "ALPN of a listener that runs only http/1.1",
            head: "GET / HTTP/1.1\r\nHost: p\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h2\r\n",
            config: || {
                let mut c = transposed_config();
                c.rules.alpn = vec![AlpnId::http11()];
                c
            },
            status: 400,
            says: "it runs http%2F1.1",
        },
        Case {
            name: "ALPN member not percent-encoded",
            head: "GET / HTTP/1.1\r\nHost: p\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: http/1.1\r\n",
            config: transposed_config,
            status: 400,
            says: "percent-encode it",
        },
        Case {
            name: "empty ALPN",
            head: "GET / HTTP/1.1\r\nHost: p\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: ,\r\n",
            config: transposed_config,
            status: 400,
            says: "ALPN lists no protocol",
        },
        Case {
            name: "origin template without its final slash",
            head: "GET /.well-known/ptth/http%3A%2F%2Fa.example HTTP/1.1\r\nHost: p\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h2\r\n",
            config: transposed_config,
            status: 400,
            says: "expected /.well-known/ptth/{serialized_origin}/",
        },
        Case {
            name: "null origin",
            head: "GET /.well-known/ptth/null/ HTTP/1.1\r\nHost: p\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h2\r\n",
            config: transposed_config,
            status: 400,
            says: "null origin",
        },
        Case {
            name: "origin not canonical",
            head: "GET /.well-known/ptth/https%3A%2F%2FA.example%3A443/ HTTP/1.1\r\nHost: p\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h2\r\n",
            config: transposed_config,
            status: 400,
            says: "not in RFC 6454 serialized form",
        },
        Case {
            name: "origin with a path",
            head: "GET /.well-known/ptth/http%3A%2F%2Fa.example%2Fx/ HTTP/1.1\r\nHost: p\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h2\r\n",
            config: transposed_config,
            status: 400,
            says: "scheme://host[:port]",
        },
        Case {
            name: "ptth by POST (the draft: SHALL be GET)",
            head: "POST / HTTP/1.1\r\nHost: p\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h2\r\nContent-Length: 0\r\n",
            config: transposed_config,
            status: 405,
            says: "method",
        },
        Case {
            name: "ptth at a listener that does not run it: 426 as before",
            head: "GET / HTTP/1.1\r\nHost: p\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h2\r\n",
            config: ListenerConfig::default,
            status: 426,
            says: "no accepted PTTH protocol",
        },
    ];
    for case in cases {
        let config = (case.config)();
        // The raw listener.
        let (b, mut a) = tokio::io::duplex(64 * 1024);
        a.write_all(format!("{}\r\n", case.head).as_bytes())
            .await
            .unwrap();
        let err = tokio::time::timeout(DEADLINE, raw::read_offer(b, &config))
            .await
            .expect("deadline")
            .expect_err(case.name);
        assert!(matches!(err, Error::Offer(_)), "{}: {err}", case.name);
        let mut out = String::new();
        a.read_to_string(&mut out).await.unwrap();
        let want = format!("HTTP/1.1 {} ", case.status);
        assert!(out.starts_with(&want), "{}: {out}", case.name);
        assert!(out.contains(case.says), "{}: {out}", case.name);
        assert!(!out.contains("101"), "{}: {out}", case.name);
        // The hyper entry point judges the same.
        let raw_head = case.head.as_bytes();
        let (parts, _) =
            ptth::proto::request::parse(&[raw_head, b"\r\n"].concat(), &Limits::default())
                .unwrap()
                .unwrap();
        let req = Request::from_parts(parts, ());
        let rej = hyper_upgrade::check(&req, &config).expect_err(case.name);
        assert_eq!(rej.status.as_u16(), case.status, "{}", case.name);
        assert!(
            rej.reason.contains(case.says),
            "{}: {}",
            case.name,
            rej.reason
        );
    }
}

/// A `101` the dialer must not take: no `ALPN`, or one it did not offer (the -01 figure's
/// `h3qx`), or a list.
#[tokio::test]
async fn the_dialer_checks_the_alpn_of_the_101() {
    let cases: [(&str, SwitchError); 3] = [
        ("", SwitchError::MissingAlpn),
        (
            "ALPN: h3qx\r\n",
            SwitchError::AlpnNotOffered { got: "h3qx".into() },
        ),
        (
            "ALPN: h2, http%2F1.1\r\n",
            SwitchError::AlpnNotOffered {
                got: "h2, http%2F1.1".into(),
            },
        ),
    ];
    for (alpn, want) in cases {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let listener = tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            let _ = b.read(&mut buf).await.unwrap();
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: ptth\r\nConnection: Upgrade\r\n{alpn}\r\n"
            );
            b.write_all(answer.as_bytes()).await.unwrap();
            b
        });
        let req = UpgradeRequest::transposed(HeaderValue::from_static("p"));
        let got = tokio::time::timeout(
            DEADLINE,
            ptth::dialer::handshake(a, &req, &Limits::default()),
        )
        .await
        .expect("deadline");
        match got {
            Err(Error::Switch(e)) => assert_eq!(e, want),
            other => panic!("{alpn:?}: {:?}", other.map(|f| f.alpn().cloned())),
        }
        drop(listener.await.unwrap());
    }
}

/// The connection preface of an HTTP/2 client (RFC 9113 §3.4), then an empty SETTINGS frame.
const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Read HTTP/2 frames until one of `kind` with `flags` arrives; returns the frames' types seen.
async fn read_frames_until(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    kind: u8,
    flags: u8,
) -> Vec<(u8, u8, u32)> {
    let mut seen = Vec::new();
    loop {
        let mut head = [0u8; 9];
        io.read_exact(&mut head)
            .await
            .expect("a whole frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        io.read_exact(&mut payload).await.unwrap();
        seen.push((head[3], head[4], stream));
        if head[3] == kind && head[4] & flags == flags {
            return seen;
        }
    }
}

/// The listener's `101` choosing HTTP/2 inside `ptth`.
const SWITCH_H2: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h2\r\n\r\n";

/// A dialer on one end of an in-memory pipe: it offers `ptth` and, once switched, serves
/// [`backend`] on HTTP/2 with `limits`. The other end (the listener's side, the offer read),
/// the offer's text, and the dialer's task (how its connection ended).
async fn h2_dialer(
    limits: Limits,
) -> (
    tokio::io::DuplexStream,
    String,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let dialer = tokio::spawn(async move {
        let req = UpgradeRequest::transposed(HeaderValue::from_static("p"));
        let flipped = ptth::dialer::handshake(a, &req, &limits).await.unwrap();
        flipped.serve_h2(backend(), &limits).await
    });
    let mut buf = vec![0; 4096];
    let n = b.read(&mut buf).await.unwrap();
    (b, String::from_utf8_lossy(&buf[..n]).into_owned(), dialer)
}

/// The listener's preface in the same segment as the `101`: the dialer keeps those bytes and
/// answers them (its SETTINGS, the ACK of ours, then a response on stream 1).
#[tokio::test]
async fn the_preface_in_the_101s_segment_is_kept() {
    tokio::time::timeout(DEADLINE, async {
        let (mut b, offer, dialer) = h2_dialer(Limits::default()).await;
        assert!(offer.contains("ALPN: h2, http%2F1.1\r\n"));
        // One write: the 101, the preface, SETTINGS, and a GET / on stream 1 (HPACK static
        // table: :method GET, :scheme http, :path /; END_STREAM | END_HEADERS).
        let mut segment = SWITCH_H2.to_vec();
        segment.extend_from_slice(PREFACE_AND_SETTINGS);
        segment.extend_from_slice(b"\x00\x00\x03\x01\x05\x00\x00\x00\x01\x82\x86\x84");
        b.write_all(&segment).await.unwrap();
        let frames = read_frames_until(&mut b, 1, 0).await;
        assert_eq!(
            frames[0].0, 4,
            "the server's SETTINGS come first: {frames:?}"
        );
        assert!(
            frames.contains(&(4, 1, 0)),
            "our SETTINGS acknowledged: {frames:?}"
        );
        assert_eq!(
            frames.last().unwrap().2,
            1,
            "a response HEADERS on stream 1"
        );
        drop(b);
        let _ = dialer.await.unwrap();
    })
    .await
    .expect("deadline");
}

/// Hostile: an HTTP/2 *client* preface sent from the dialer's side (the wrong side: the
/// listener is the h2 client). The listener's connection fails, its requests fail, no hang.
#[tokio::test]
async fn a_client_preface_from_the_dialers_side_fails_the_connection() {
    tokio::time::timeout(DEADLINE, async {
        let (b, mut a) = tokio::io::duplex(64 * 1024);
        let cfg = transposed_config();
        let req = UpgradeRequest::transposed(HeaderValue::from_static("p"));
        a.write_all(&req.encode()).await.unwrap();
        let offer = raw::read_offer(b, &cfg).await.unwrap();
        let (mut client, conn) = offer.accept_h2::<Body>(&cfg).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut head = vec![0; 4096];
        let _ = a.read(&mut head).await.unwrap();
        a.write_all(PREFACE_AND_SETTINGS).await.unwrap();
        assert!(conn.await.unwrap().is_err());
        assert!(client.send(get("/")).await.is_err());
    })
    .await
    .expect("deadline");
}

/// Hostile: a listener that acts as the h2 *server* (sends SETTINGS without the preface):
/// the dialer's connection fails.
#[tokio::test]
async fn no_preface_from_the_listeners_side_fails_the_dialers_connection() {
    tokio::time::timeout(DEADLINE, async {
        let (mut b, _, dialer) = h2_dialer(Limits::default()).await;
        // SETTINGS without the preface.
        let segment = [SWITCH_H2, b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"].concat();
        b.write_all(&segment).await.unwrap();
        assert!(dialer.await.unwrap().is_err());
    })
    .await
    .expect("deadline");
}

/// Hostile: headers past the dialer's limit. A little past it: `431` for that request alone,
/// and the connection carries the next one. Far past it (the h2 crate's abuse limit, 4x): the
/// dialer ends the connection with GOAWAY `ENHANCE_YOUR_CALM`, and every later request fails
/// at once instead of hanging.
#[tokio::test]
async fn headers_past_the_limit() {
    tokio::time::timeout(DEADLINE, async {
        let (client, conn, _stop, _dialer) = h2_pair().await;
        let over = |size: usize| {
            Request::get("/big-headers")
                .header("host", "app.example")
                .header("x-big", "b".repeat(size))
                .body(full(Bytes::new()))
                .unwrap()
        };
        let limit = Limits::default().max_head_bytes;
        let mut c = client.clone();
        let res = c.send(over(limit + 1024)).await.unwrap();
        assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(get_text(&mut c, "/next").await.starts_with("/next"));
        let err = c.send(over(limit * 5)).await.unwrap_err();
        assert!(format!("{err:?}").contains("ENHANCE_YOUR_CALM"), "{err:?}");
        assert!(c.send(get("/after")).await.is_err());
        assert!(
            conn.await.unwrap().is_err(),
            "the connection ended with an error"
        );
    })
    .await
    .expect("deadline");
}

/// Hostile: a listener that never reads one response body. That stream's flow-control
/// window fills and the dialer stops sending on it, but the other streams still move (their
/// own windows, and the connection window the stalled stream holds only part of), a large
/// download beside it included; read at last, the stalled body is whole.
#[tokio::test]
async fn a_stream_that_is_never_read_holds_back_only_itself() {
    tokio::time::timeout(DEADLINE, async {
        let (client, _conn, _stop, _dialer) = h2_pair().await;
        let mut c = client.clone();
        let stalled = c.send(get("/large")).await.unwrap();
        for i in 0..16 {
            let path = format!("/beside/{i}");
            assert!(get_text(&mut c, &path).await.starts_with(&path));
        }
        let beside = c.send(get("/large")).await.unwrap();
        let beside = beside.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(beside.len(), LARGE);
        let late = stalled.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(late.len(), LARGE);
        assert!(late.iter().all(|&b| b == b'L'));
    })
    .await
    .expect("deadline");
}

/// Hostile: a SETTINGS flood from a listener that reads nothing back (CVE-2019-9515's shape).
/// The dialer answers SETTINGS only as fast as it can write the ACKs, so the flood costs no
/// memory; once it can write nothing, its writes time out (`H2Limits::write_timeout`, short
/// here) and the connection ends with an error instead of hanging. (Without that deadline it
/// hangs: hyper answers the missed PING with a GOAWAY it then waits forever to write.)
#[tokio::test]
async fn a_settings_flood_ends_the_connection_instead_of_hanging() {
    tokio::time::timeout(DEADLINE, async {
        let limits = Limits {
            h2: ptth::H2Limits {
                keep_alive_interval: Some(Duration::from_millis(200)),
                keep_alive_timeout: Duration::from_millis(200),
                write_timeout: Duration::from_millis(500),
                ..ptth::H2Limits::default()
            },
            ..Limits::default()
        };
        let (mut b, _, dialer) = h2_dialer(limits).await;
        let mut flood = SWITCH_H2.to_vec();
        flood.extend_from_slice(PREFACE_AND_SETTINGS);
        // SETTINGS_INITIAL_WINDOW_SIZE = 65535, again and again: 15 bytes a frame.
        const SETTINGS: &[u8] = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x00\x00\xff\xff";
        let writer = tokio::spawn(async move {
            b.write_all(&flood).await?;
            let burst = SETTINGS.repeat(1024);
            // Bounded: 100 000 frames at most; the dialer closing ends it sooner.
            for _ in 0..100 {
                b.write_all(&burst).await?;
            }
            Ok::<_, std::io::Error>(b)
        });
        let res = dialer.await.unwrap();
        assert!(res.is_err(), "the flooded connection ends with an error");
        // The writer is unblocked (its peer is gone) or finished: no hang on either side.
        let _ = writer.await.unwrap();
    })
    .await
    .expect("deadline");
}

fn python(script: &str, args: &[String]) -> tokio::process::Child {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2");
    tokio::process::Command::new("python3")
        .arg(format!("{dir}/{script}"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs")
}

/// The summary line a Python peer printed, and its exit status.
async fn python_result(child: tokio::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python peer failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a JSON summary")
}

/// Our LISTENER against a third-party backend (Python `h2`): it dials with the ptth offer and
/// serves HTTP/2; we send many requests at once, a large body each way, a request it resets,
/// and end with GOAWAY.
#[tokio::test]
async fn third_party_backend_against_our_listener() {
    if let Err(why) = support::python_h2() {
        println!("SKIPPED third_party_backend_against_our_listener: {why}");
        return;
    }
    tokio::time::timeout(DEADLINE, async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let child = python(
            "backend.py",
            &[port.to_string(), TOGETHER.to_string(), LARGE.to_string()],
        );
        let (tcp, _) = l.accept().await.unwrap();
        let cfg = transposed_config();
        let offer = raw::read_offer(tcp, &cfg).await.unwrap();
        assert_eq!(offer.alpn(), Some(&AlpnId::h2()));
        assert_eq!(
            offer.origins(),
            [Origin::new(Scheme::Http, "py.example", None).unwrap()]
        );
        let (client, conn) = offer.accept_h2::<Body>(&cfg).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut tasks = Vec::new();
        for _ in 0..TOGETHER {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move { c.send(get("/together")).await }));
        }
        for t in tasks {
            assert_eq!(text(t.await.unwrap().unwrap()).await, "together");
        }
        let upload: Vec<u8> = (0..LARGE).map(|i| (i % 251) as u8).collect();
        let echo = Request::post("/echo")
            .header("host", "py.example")
            .body(full(upload.clone()))
            .unwrap();
        let (mut c1, mut c2, mut c3) = (client.clone(), client.clone(), client.clone());
        let (up, down, reset) = tokio::join!(
            c1.send(echo),
            c2.send(get("/large")),
            c3.send(get("/reset"))
        );
        let up = up.unwrap().into_body().collect().await.unwrap().to_bytes();
        assert!(up[..] == upload[..], "echoed upload differs");
        let down = down
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(down.len(), LARGE);
        let err = match reset {
            Err(e) => format!("{e:?}"),
            Ok(res) => format!("{:?}", res.into_body().collect().await.unwrap_err()),
        };
        assert!(err.contains("INTERNAL_ERROR"), "{err}");
        assert_eq!(
            text(c1.send(get("/after")).await.unwrap()).await,
            "/after from python"
        );
        drop((client, c1, c2, c3));
        conn.await.unwrap().unwrap();
        let summary = python_result(child).await;
        assert_eq!(summary["requests"], TOGETHER as u64 + 4, "{summary}");
        // hyper's client ends the connection with GOAWAY(NO_ERROR) when its senders are gone.
        assert_eq!(summary["goaway"], 0, "{summary}");
    })
    .await
    .expect("deadline");
}

/// Our DIALER against a third-party reverse proxy (Python `h2`): it answers our offer with a
/// `101` and its HTTP/2 preface in one segment, sends many requests at once, a large body
/// each way, gets one stream reset, and ends with GOAWAY; our connection then ends cleanly.
#[tokio::test]
async fn third_party_proxy_against_our_dialer() {
    if let Err(why) = support::python_h2() {
        println!("SKIPPED third_party_proxy_against_our_dialer: {why}");
        return;
    }
    tokio::time::timeout(DEADLINE, async {
        let upload = 4 * 1024 * 1024;
        let mut child = python(
            "proxy.py",
            &[TOGETHER.to_string(), upload.to_string(), LARGE.to_string()],
        );
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line)
            .await
            .unwrap();
        let port: u16 = line.trim().parse().expect("the proxy's port");
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut req = UpgradeRequest::transposed(HeaderValue::from_static("proxy.example"));
        req.target = origin::well_known_target(&origins());
        let flipped = ptth::dialer::handshake(tcp, &req, &Limits::default())
            .await
            .unwrap();
        assert!(flipped.is_h2());
        flipped
            .serve_h2(backend(), &Limits::default())
            .await
            .expect("the connection ends cleanly after the proxy's GOAWAY");
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).await.unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "python proxy failed: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value =
            serde_json::from_str(rest.lines().last().unwrap_or("")).expect("a JSON summary");
        assert_eq!(summary["together"], TOGETHER as u64, "{summary}");
        assert_eq!(summary["echo_ok"], true, "{summary}");
        assert_eq!(summary["large"], LARGE as u64, "{summary}");
        assert_eq!(
            summary["reset"], 2,
            "INTERNAL_ERROR on /reset only: {summary}"
        );
        assert_eq!(
            summary["after"], "/after authority=Some(\"py.example\")",
            "{summary}"
        );
    })
    .await
    .expect("deadline");
}
