//! Raw-byte tests of the DIALER handshake (`ptth::dialer::handshake`), table-driven.
//!
//! Each case runs the library dialer against a scripted raw listener over an in-memory pipe: the
//! script checks the exact upgrade-request bytes, writes exact answer bytes (whole, or one byte
//! per write while the dialer reads one byte at a time), and then, for a switch, checks that the
//! reversed requests already sent are answered. Case numbers refer to protocol-notes §10.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use ptth::{Error, Limits, Protocol, SwitchError, UpgradeRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

mod support;
use support::DEADLINE;

/// A stream that returns at most one byte per read, to split every head at every byte.
struct OneByte<T> {
    inner: T,
    on: bool,
}

impl<T: AsyncRead + Unpin> AsyncRead for OneByte<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.on || buf.remaining() == 0 {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let mut one = [0u8; 1];
        let mut small = ReadBuf::new(&mut one);
        match Pin::new(&mut self.inner).poll_read(cx, &mut small) {
            Poll::Ready(Ok(())) => {
                buf.put_slice(small.filled());
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for OneByte<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One step of the scripted listener.
enum Step {
    /// Read exactly the case's expected upgrade request.
    ExpectRequest,
    /// Write these bytes in one write.
    Write(&'static [u8]),
    /// Write these bytes one byte per write.
    WriteBytewise(&'static [u8]),
    /// Read until the bytes read end with this text (a reversed response), then check its start.
    ExpectResponse(&'static str),
}

enum Want {
    /// The switch succeeds to this protocol.
    Switch(Protocol),
    /// The handshake fails like this.
    Fail(fn(&Error) -> bool),
}

struct Case {
    name: &'static str,
    request: UpgradeRequest,
    /// The exact bytes the dialer must send.
    wire: &'static [u8],
    limits: Limits,
    one_byte_reads: bool,
    script: Vec<Step>,
    want: Want,
}

const DEFAULT_WIRE: &[u8] =
    b"POST / HTTP/1.1\r\nHost: relay\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n";
const OK_09: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\n";

fn default_request() -> UpgradeRequest {
    UpgradeRequest::new(HeaderValue::from_static("relay"))
}

fn refused(status: u16) -> fn(&Error) -> bool {
    match status {
        200 => |e| {
            e.refusal()
                .is_some_and(|r| r.status == 200 && &r.body[..] == b"fallback")
        },
        404 => |e| {
            e.refusal()
                .is_some_and(|r| r.status == 404 && &r.body[..] == b"nope, not here")
        },
        401 => |e| {
            e.refusal().is_some_and(|r| {
                r.status == 401 && r.www_authenticate() == Some("Bearer") && r.body.is_empty()
            })
        },
        _ => unreachable!(),
    }
}

async fn hello(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(http::Response::new(Full::from(format!(
        "hello {path} {}|",
        String::from_utf8_lossy(&body)
    ))))
}

/// The scripted raw listener.
async fn listener<S: AsyncRead + AsyncWrite + Unpin>(
    mut peer: S,
    wire: &'static [u8],
    script: Vec<Step>,
) {
    let mut seen = Vec::new();
    let mut cursor = 0;
    for step in script {
        match step {
            Step::ExpectRequest => {
                let mut got = vec![0u8; wire.len()];
                peer.read_exact(&mut got).await.expect("upgrade request");
                assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(wire));
            }
            Step::Write(bytes) => peer.write_all(bytes).await.unwrap(),
            Step::WriteBytewise(bytes) => {
                for &b in bytes {
                    peer.write_all(&[b]).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
            Step::ExpectResponse(end) => {
                // Responses may arrive together: find each one after the previous one.
                let mut chunk = [0u8; 1024];
                let found = loop {
                    if let Some(pos) = find(&seen[cursor..], end.as_bytes()) {
                        break cursor + pos + end.len();
                    }
                    let n = peer.read(&mut chunk).await.unwrap();
                    assert!(
                        n > 0,
                        "EOF before {end:?}; got {:?}",
                        String::from_utf8_lossy(&seen)
                    );
                    seen.extend_from_slice(&chunk[..n]);
                };
                let text = String::from_utf8_lossy(&seen[cursor..found]);
                assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
                cursor = found;
            }
        }
    }
}

fn cases() -> Vec<Case> {
    let base = |name, script, want| Case {
        name,
        request: default_request(),
        wire: DEFAULT_WIRE,
        limits: Limits::default(),
        one_byte_reads: false,
        script,
        want,
    };
    use Step::*;
    vec![
        base(
            "24 101 and first reversed request in one write: served, no byte lost",
            vec![
                ExpectRequest,
                Write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\nGET /a HTTP/1.1\r\nHost: \r\n\r\n"),
                ExpectResponse("hello /a |"),
            ],
            Want::Switch(Protocol::Ptth09),
        ),
        base(
            "24b 101 and two pipelined requests (one with a body) in one write",
            vec![
                ExpectRequest,
                Write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\nGET /a HTTP/1.1\r\nHost: \r\n\r\nPOST /b HTTP/1.1\r\nHost: \r\nContent-Length: 3\r\n\r\nxyz"),
                ExpectResponse("hello /a |"),
                ExpectResponse("hello /b xyz|"),
            ],
            Want::Switch(Protocol::Ptth09),
        ),
        Case {
            one_byte_reads: true,
            ..base(
                "25 101 split into 1-byte writes and 1-byte reads (CRLFCRLF split too)",
                vec![
                    ExpectRequest,
                    WriteBytewise(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\nGET /split HTTP/1.1\r\n\r\n"),
                    ExpectResponse("hello /split |"),
                ],
                Want::Switch(Protocol::Ptth09),
            )
        },
        base(
            "26a 200 instead of 101 -> Refused with body",
            vec![ExpectRequest, Write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nfallback")],
            Want::Fail(refused(200)),
        ),
        base(
            "26b 404 with a chunked body -> Refused with decoded body",
            vec![
                ExpectRequest,
                Write(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\na\r\n, not here\r\n0\r\n\r\n"),
            ],
            Want::Fail(refused(404)),
        ),
        base(
            "26c 401 with WWW-Authenticate: Bearer (Yaler, empty reason)",
            vec![ExpectRequest, Write(b"HTTP/1.1 401 \r\nWWW-Authenticate: Bearer\r\n\r\n")],
            Want::Fail(refused(401)),
        ),
        base(
            "26d 429 with Retry-After: 2",
            vec![ExpectRequest, Write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n")],
            Want::Fail(|e| e.refusal().is_some_and(|r| r.status == 429 && r.retry_after() == Some(Duration::from_secs(2)))),
        ),
        base(
            "26e 307 with Location (Yaler redirect)",
            vec![ExpectRequest, Write(b"HTTP/1.1 307 \r\nLocation: http://127.0.0.1:9/dom\r\n\r\n")],
            Want::Fail(|e| e.refusal().is_some_and(|r| r.status == 307 && r.location() == Some("http://127.0.0.1:9/dom"))),
        ),
        base(
            "26f 504 with a body delimited by close",
            vec![ExpectRequest, Write(b"HTTP/1.1 504 \r\n\r\nno device")],
            Want::Fail(|e| e.refusal().is_some_and(|r| r.status == 504 && &r.body[..] == b"no device")),
        ),
        Case {
            limits: Limits { max_refusal_body: 4, ..Limits::default() },
            ..base(
                "26g refusal body cut at max_refusal_body",
                vec![ExpectRequest, Write(b"HTTP/1.1 503 Busy\r\nContent-Length: 10\r\n\r\n0123456789")],
                Want::Fail(|e| e.refusal().is_some_and(|r| r.status == 503 && &r.body[..] == b"0123" && r.body_truncated)),
            )
        },
        base(
            "27a 101 without Upgrade -> Switch(MissingUpgrade)",
            vec![ExpectRequest, Write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n")],
            Want::Fail(|e| matches!(e, Error::Switch(SwitchError::MissingUpgrade))),
        ),
        base(
            "27b 101 with Upgrade: websocket -> Switch(NotOffered)",
            vec![ExpectRequest, Write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")],
            Want::Fail(|e| matches!(e, Error::Switch(SwitchError::NotOffered { .. }))),
        ),
        Case {
            request: UpgradeRequest { protocols: vec![Protocol::Ptth10], ..default_request() },
            wire: b"POST / HTTP/1.1\r\nHost: relay\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n",
            ..base(
                "27c 101 with PTTH/0.9 when only PTTH/1.0 was offered -> Switch(NotOffered)",
                vec![ExpectRequest, Write(OK_09)],
                Want::Fail(|e| matches!(e, Error::Switch(SwitchError::NotOffered { got }) if got == "PTTH/0.9")),
            )
        },
        base(
            "27d 101 with PTTH/1.0 when only PTTH/0.9 (default) was offered -> Switch(NotOffered)",
            vec![ExpectRequest, Write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n")],
            Want::Fail(|e| matches!(e, Error::Switch(SwitchError::NotOffered { .. }))),
        ),
        base(
            "28 101 without Connection: upgrade -> Switch(MissingConnection)",
            vec![ExpectRequest, Write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\n\r\n")],
            Want::Fail(|e| matches!(e, Error::Switch(SwitchError::MissingConnection))),
        ),
        base(
            "29 100 Continue and 102 Processing before the 101 are skipped",
            vec![
                ExpectRequest,
                Write(b"HTTP/1.1 100 Continue\r\n\r\n"),
                Write(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\n"),
                Write(b"GET /after-1xx HTTP/1.1\r\n\r\n"),
                ExpectResponse("hello /after-1xx |"),
            ],
            Want::Switch(Protocol::Ptth09),
        ),
        base(
            "30 101 with Content-Length: 5, then a request: CL ignored",
            vec![
                ExpectRequest,
                Write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\nContent-Length: 5\r\n\r\nGET /cl HTTP/1.1\r\nHost: \r\n\r\n"),
                ExpectResponse("hello /cl |"),
            ],
            Want::Switch(Protocol::Ptth09),
        ),
        base(
            "31a HTTP/1.1 101 with no SP and no reason: accepted leniently",
            vec![
                ExpectRequest,
                Write(b"HTTP/1.1 101\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\nGET /nosp HTTP/1.1\r\n\r\n"),
                ExpectResponse("hello /nosp |"),
            ],
            Want::Switch(Protocol::Ptth09),
        ),
        base(
            "31b HTTP/1.0 101 -> Switch(NotHttp11)",
            vec![ExpectRequest, Write(b"HTTP/1.0 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\n")],
            Want::Fail(|e| matches!(e, Error::Switch(SwitchError::NotHttp11))),
        ),
        base(
            "37a 204 -> same request re-sent on the same connection -> 101",
            vec![ExpectRequest, Write(b"HTTP/1.1 204 \r\n\r\n"), ExpectRequest, Write(OK_09)],
            Want::Switch(Protocol::Ptth09),
        ),
        base(
            "37b 204 -> 204 -> 101 (Yaler renewal)",
            vec![
                ExpectRequest,
                Write(b"HTTP/1.1 204 \r\n\r\n"),
                ExpectRequest,
                Write(b"HTTP/1.1 204 No Content\r\n\r\n"),
                ExpectRequest,
                Write(OK_09),
            ],
            Want::Switch(Protocol::Ptth09),
        ),
        base(
            "37c 204 with bytes after it -> reported, not re-sent",
            vec![ExpectRequest, Write(b"HTTP/1.1 204 \r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n")],
            Want::Fail(|e| e.refusal().is_some_and(|r| r.status == StatusCode::NO_CONTENT)),
        ),
        Case {
            request: UpgradeRequest { method: Method::GET, target: "/dev/name".into(), ..default_request() },
            wire: b"GET /dev/name HTTP/1.1\r\nHost: relay\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n",
            ..base("req-a GET selectable, exact bytes", vec![ExpectRequest, Write(OK_09)], Want::Switch(Protocol::Ptth09))
        },
        Case {
            request: UpgradeRequest { protocols: vec![Protocol::Ptth09, Protocol::Ptth10], ..default_request() },
            wire: b"POST / HTTP/1.1\r\nHost: relay\r\nUpgrade: PTTH/0.9, PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n",
            ..base(
                "req-b both tokens offered; listener picks PTTH/1.0",
                vec![ExpectRequest, Write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n")],
                Want::Switch(Protocol::Ptth10),
            )
        },
        Case {
            request: {
                let mut r = default_request();
                r.headers.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
                r.headers.insert("connection", HeaderValue::from_static("close"));
                r.body = Bytes::from_static(b"id=iamsam");
                r
            },
            wire: b"POST / HTTP/1.1\r\nHost: relay\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\nauthorization: Bearer s3cret\r\nContent-Length: 9\r\n\r\nid=iamsam",
            ..base(
                "req-c Authorization and a body with Content-Length; handshake fields not overridable",
                vec![ExpectRequest, Write(OK_09)],
                Want::Switch(Protocol::Ptth09),
            )
        },
        base(
            "hostile: garbage instead of a status line -> Head(Malformed)",
            vec![ExpectRequest, Write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")],
            Want::Fail(|e| matches!(e, Error::Head(ptth::HeadError::Malformed(_)))),
        ),
        base(
            "hostile: 101 with 10,000 headers -> Head(TooManyHeaders)",
            vec![
                ExpectRequest,
                Write(b"HTTP/1.1 101 Switching Protocols\r\n"),
                Write(Box::leak("a: b\r\n".repeat(10_000).into_boxed_str()).as_bytes()),
            ],
            Want::Fail(|e| matches!(e, Error::Head(ptth::HeadError::TooManyHeaders { .. }))),
        ),
        base(
            "hostile: 40 KiB response head -> Head(TooLarge)",
            vec![
                ExpectRequest,
                Write(b"HTTP/1.1 200 OK\r\n"),
                Write(Box::leak(format!("X-Big: {}\r\n", "a".repeat(40 * 1024)).into_boxed_str()).as_bytes()),
            ],
            Want::Fail(|e| matches!(e, Error::Head(ptth::HeadError::TooLarge { .. }))),
        ),
        base(
            "hostile: refusal with CL + TE -> Head(Invalid)",
            vec![ExpectRequest, Write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")],
            Want::Fail(|e| matches!(e, Error::Head(ptth::HeadError::Invalid(_)))),
        ),
        base(
            "hostile: listener closes before answering -> Closed",
            vec![ExpectRequest],
            Want::Fail(|e| matches!(e, Error::Closed { .. })),
        ),
        base(
            "hostile: listener closes mid-101 -> Closed",
            vec![ExpectRequest, Write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\n")],
            Want::Fail(|e| matches!(e, Error::Closed { .. })),
        ),
    ]
}

#[tokio::test]
async fn dialer_raw_byte_table() {
    tokio::time::timeout(DEADLINE, async {
        let cases = cases();
        assert!(cases.len() >= 30, "{} cases", cases.len());
        for case in cases {
            let name = case.name;
            eprintln!("case: {name}");
            let (a, b) = tokio::io::duplex(1 << 20);
            let peer = tokio::spawn(listener(b, case.wire, case.script));
            let io = OneByte {
                inner: a,
                on: case.one_byte_reads,
            };
            let result = ptth::dialer::handshake(io, &case.request, &case.limits).await;
            match (case.want, result) {
                (Want::Switch(p), Ok(flipped)) => {
                    assert_eq!(flipped.protocol(), p, "{name}");
                    let serving = tokio::spawn(
                        flipped.serve(hyper::service::service_fn(hello), &case.limits),
                    );
                    peer.await.unwrap_or_else(|e| panic!("{name}: peer: {e}"));
                    // The peer hung up: the server ends (cleanly or with an error), no hang.
                    let _ = serving.await.unwrap();
                }
                (Want::Fail(check), Err(e)) => {
                    assert!(check(&e), "{name}: unexpected error {e:?}");
                    peer.abort();
                }
                (Want::Switch(_), Err(e)) => panic!("{name}: wanted a switch, got {e:?}"),
                (Want::Fail(_), Ok(f)) => {
                    panic!("{name}: wanted an error, switched to {}", f.protocol())
                }
            }
        }
    })
    .await
    .expect("deadline");
}

/// The handshake deadline applies when the listener never answers (paused clock).
#[tokio::test(start_paused = true)]
async fn silent_listener_hits_the_handshake_timeout() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (a, mut b) = tokio::io::duplex(4096);
        let start = tokio::time::Instant::now();
        let err = ptth::dialer::handshake(a, &default_request(), &Limits::default())
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        let mut got = vec![0u8; DEFAULT_WIRE.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, DEFAULT_WIRE);
    })
    .await
    .expect("deadline");
}

/// #24 over real loopback TCP: the 101 and the first request arrive in one segment.
#[tokio::test]
async fn loopback_tcp_101_and_request_in_one_segment() {
    tokio::time::timeout(DEADLINE, async {
        let (tcp, addr) = support::bind_local().await;
        let peer = tokio::spawn(async move {
            let (s, _) = tcp.accept().await.unwrap();
            listener(
                s,
                DEFAULT_WIRE,
                vec![
                    Step::ExpectRequest,
                    Step::Write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\nGET /tcp HTTP/1.1\r\nHost: \r\n\r\n"),
                    Step::ExpectResponse("hello /tcp |"),
                ],
            )
            .await
        });
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let flipped = ptth::dialer::handshake(s, &default_request(), &Limits::default())
            .await
            .unwrap();
        let serving = tokio::spawn(flipped.serve(hyper::service::service_fn(hello), &Limits::default()));
        peer.await.unwrap();
        let _ = serving.await.unwrap();
    })
    .await
    .expect("deadline");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
