//! Raw-byte tests of the LISTENER handshake (`ptth::listener::raw`), table-driven.
//!
//! Each case feeds exact request bytes to `read_offer` over an in-memory pipe, lets the test
//! decide (accept / refuse / check credentials), and compares the exact bytes written back and
//! the error kind. Case numbers refer to protocol-notes §10.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use ptth::listener::{ListenerConfig, raw};
use ptth::{BodyError, Error, HeadError, OfferError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;
use support::DEADLINE;

/// What the test does with a valid offer.
#[derive(Clone, Copy)]
enum Decide {
    Accept,
    Refuse403,
    /// Accept only with `Authorization: Bearer good`, else `401 WWW-Authenticate: Bearer`.
    BearerGood,
}

/// What the listener must write back.
enum Out {
    /// Exactly these bytes, then EOF.
    Exact(&'static [u8]),
    /// Starts with this status line, contains these lines, has no `101` anywhere, then EOF.
    Refusal(&'static str, &'static [&'static str]),
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    config: ListenerConfig,
    decide: Decide,
    out: Out,
    /// Check on what `read_offer` + the decision returned: `Ok(body)` for a 101.
    check: fn(&Result<Bytes, Error>) -> bool,
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn ok_empty(r: &Result<Bytes, Error>) -> bool {
    matches!(r, Ok(body) if body.is_empty())
}

fn strict() -> ListenerConfig {
    ListenerConfig::default()
}

const SWITCH_10: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n";
const SWITCH_09: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\n";

/// Run one case: write the input, let the listener answer, read everything it wrote.
async fn run(
    input: Vec<u8>,
    config: ListenerConfig,
    decide: Decide,
) -> (Result<Bytes, Error>, Vec<u8>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (mut rd, mut wr) = tokio::io::split(client);
    // The writer may be cut off when the listener gives up early (oversize input): ignore that.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&input).await;
        // Keep the write half open until the listener is done, so EOF is not what ends a case.
        wr
    });
    let listener = tokio::spawn(async move {
        let offer = raw::read_offer(server, &config).await?;
        let body = offer.body().clone();
        match decide {
            Decide::Accept => {
                let io = offer.accept().await?;
                drop(io);
                Ok(body)
            }
            Decide::Refuse403 => {
                offer
                    .refuse(StatusCode::FORBIDDEN, &HeaderMap::new(), b"no\n")
                    .await?;
                Err(Error::Closed { phase: "refused" })
            }
            Decide::BearerGood => {
                let good = offer
                    .head()
                    .headers
                    .get("authorization")
                    .is_some_and(|v| v == "Bearer good");
                if good {
                    drop(offer.accept().await?);
                    Ok(body)
                } else {
                    let mut h = HeaderMap::new();
                    h.insert("www-authenticate", HeaderValue::from_static("Bearer"));
                    offer
                        .refuse(StatusCode::UNAUTHORIZED, &h, b"credentials needed\n")
                        .await?;
                    Err(Error::Closed { phase: "refused" })
                }
            }
        }
    });
    let mut out = Vec::new();
    rd.read_to_end(&mut out).await.unwrap();
    let result = listener.await.unwrap();
    drop(writer.await.unwrap());
    (result, out)
}

fn check_out(name: &str, out: &[u8], want: &Out) {
    let text = String::from_utf8_lossy(out);
    match want {
        Out::Exact(bytes) => assert_eq!(text, String::from_utf8_lossy(bytes), "{name}: output"),
        Out::Refusal(status_line, lines) => {
            assert!(
                text.starts_with(&format!("{status_line}\r\n")),
                "{name}: want {status_line:?}, got {text:?}"
            );
            let head = &text[..text.find("\r\n\r\n").expect("complete head")];
            // Only one head was sent, and it is not a 1xx (no 101, no 100 Continue).
            assert!(
                !head.starts_with("HTTP/1.1 1"),
                "{name}: a 1xx was sent: {text:?}"
            );
            for line in *lines {
                assert!(
                    head.split("\r\n").any(|l| l == *line),
                    "{name}: missing line {line:?} in {head:?}"
                );
            }
            // The framing is right: exactly Content-Length bytes of body follow the head.
            let cl: usize = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("Content-Length")
                .parse()
                .unwrap();
            assert_eq!(text.len(), head.len() + 4 + cl, "{name}: body framing");
        }
    }
}

fn offer_request(upgrade: &str, connection: &str) -> Vec<u8> {
    b(&format!(
        "POST /q HTTP/1.1\r\nHost: relay.example\r\nUpgrade: {upgrade}\r\nConnection: {connection}\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn cases() -> Vec<Case> {
    let airplay = {
        let mut c = ListenerConfig::default();
        c.rules.allow_missing_host = true;
        c
    };
    let only_10 = {
        let mut c = ListenerConfig::default();
        c.rules.protocols = vec![ptth::Protocol::Ptth10];
        c
    };
    let mut v = vec![
        Case {
            name: "01 draft POST PTTH/1.0 -> exact 101",
            input: offer_request("PTTH/1.0", "Upgrade"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Exact(SWITCH_10),
            check: ok_empty,
        },
        Case {
            name: "02 PTTH/0.9 echoed as PTTH/0.9",
            input: offer_request("PTTH/0.9", "Upgrade"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Exact(SWITCH_09),
            check: ok_empty,
        },
        Case {
            name: "02b PTTH/0.9 refused when only 1.0 is enabled; the 426 names only 1.0",
            input: offer_request("PTTH/0.9", "Upgrade"),
            config: only_10,
            decide: Decide::Accept,
            out: Out::Refusal(
                "HTTP/1.1 426 Upgrade Required",
                &["Upgrade: PTTH/1.0", "Connection: Upgrade, close"],
            ),
            check: |r| matches!(r, Err(Error::Offer(OfferError::NoProtocol))),
        },
        Case {
            name: "03 lowercase token and UPPERCASE connection: spelling echoed",
            input: b("POST /q HTTP/1.1\r\nhost: r\r\nupgrade: ptth/1.0\r\nconnection: UPGRADE\r\ncontent-length: 0\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Exact(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ptth/1.0\r\nConnection: Upgrade\r\n\r\n",
            ),
            check: ok_empty,
        },
        Case {
            name: "04a Upgrade list websocket, PTTH/1.0 -> only the PTTH token",
            input: offer_request("websocket, PTTH/1.0", "Upgrade"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Exact(SWITCH_10),
            check: ok_empty,
        },
        Case {
            name: "04b Connection: keep-alive, Upgrade",
            input: offer_request("PTTH/1.0", "keep-alive, Upgrade"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Exact(SWITCH_10),
            check: ok_empty,
        },
        Case {
            name: "04c Connection and Upgrade on two field lines each",
            input: b("GET /q HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Exact(SWITCH_09),
            check: ok_empty,
        },
        Case {
            name: "05 no Connection: upgrade -> 426, no 101",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nContent-Length: 0\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal(
                "HTTP/1.1 426 Upgrade Required",
                &["Upgrade: PTTH/0.9, PTTH/1.0", "Connection: Upgrade, close"],
            ),
            check: |r| matches!(r, Err(Error::Offer(OfferError::NoConnectionUpgrade))),
        },
        Case {
            name: "05b Connection: upgraded (substring) is not upgrade",
            input: offer_request("PTTH/1.0", "upgraded"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 426 Upgrade Required", &[]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::NoConnectionUpgrade))),
        },
    ];
    for (tag, token) in [
        ("06a", "PTTH/2.0"),
        ("06b", "PTTHX/1.0"),
        ("06c", "ptth"),
        ("06d", "websocket"),
        ("06e", "PTTH/1"),
    ] {
        v.push(Case {
            name: Box::leak(format!("{tag} wrong token {token} -> 426").into_boxed_str()),
            input: offer_request(token, "Upgrade"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 426 Upgrade Required", &[]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::NoProtocol))),
        });
    }
    v.extend([
        Case {
            name: "07 HTTP/1.0 upgrade (with Expect) -> no 101, no 1xx",
            input: b("GET / HTTP/1.0\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nExpect: 100-continue\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 426 Upgrade Required", &["Connection: Upgrade, close"]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::Http10))),
        },
        Case {
            name: "08 policy refusal 403 with framing and Connection: close",
            input: offer_request("PTTH/1.0", "Upgrade"),
            config: strict(),
            decide: Decide::Refuse403,
            out: Out::Exact(
                b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\r\nno\n",
            ),
            check: |r| matches!(r, Err(Error::Closed { phase: "refused" })),
        },
        Case {
            name: "09a Content-Length body consumed before the switch",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 11\r\n\r\nhello world"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Exact(SWITCH_10),
            check: |r| matches!(r, Ok(body) if &body[..] == b"hello world"),
        },
        Case {
            name: "09b body then pipelined junk -> 400 + close, never 101 (RFC 9931)",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 11\r\n\r\nhello worldGET /junk HTTP/1.1\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::EarlyData))),
        },
        Case {
            name: "10 chunked body with extensions and trailers -> decoded, then 101",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Exact(SWITCH_09),
            check: |r| matches!(r, Ok(body) if &body[..] == b"hello world"),
        },
        Case {
            name: "10b invalid chunk size -> 400",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Body(BodyError::BadChunk(_)))),
        },
        Case {
            name: "11 Expect: 100-continue -> 100 Continue before 101",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nauth"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Exact(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n",
            ),
            check: |r| matches!(r, Ok(body) if &body[..] == b"auth"),
        },
        Case {
            name: "12 optimistic response bytes after the request -> 400 + close",
            input: [
                offer_request("PTTH/1.0", "Upgrade"),
                b("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            ]
            .concat(),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::EarlyData))),
        },
        Case {
            name: "13a smuggling CL + TE -> 400",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::Framing(HeadError::Invalid(_))))),
        },
        Case {
            name: "13b smuggling two different Content-Length -> 400",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::Framing(HeadError::Invalid(_))))),
        },
        Case {
            name: "13c Transfer-Encoding: gzip (chunked not last) -> 400",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nTransfer-Encoding: gzip\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::Framing(HeadError::Invalid(_))))),
        },
        Case {
            name: "13d Transfer-Encoding: gzip, chunked -> 501, no 101",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 501 Not Implemented", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::Framing(HeadError::UnsupportedCoding)))),
        },
        Case {
            name: "13e Content-Length: -1 -> 400",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: -1\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &[]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::Framing(HeadError::Invalid(_))))),
        },
        Case {
            name: "13f smuggling TE before CL -> 400",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::Framing(HeadError::Invalid(_))))),
        },
        Case {
            name: "14a 100 KiB of headers -> 431",
            input: {
                let mut v = b("POST /q HTTP/1.1\r\nHost: r\r\n");
                for i in 0..10 {
                    v.extend(b(&format!("X-Big-{i}: {}\r\n", "a".repeat(10 * 1024))));
                }
                v.extend(b("\r\n"));
                v
            },
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 431 Request Header Fields Too Large", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Head(HeadError::TooLarge { limit: 16384 }))),
        },
        Case {
            name: "14b 10,000 tiny headers -> 431",
            input: {
                let mut v = b("POST /q HTTP/1.1\r\nHost: r\r\n");
                v.extend(std::iter::repeat_n(b"a:b\r\n".as_slice(), 10_000).flatten());
                v.extend(b("\r\n"));
                v
            },
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 431 Request Header Fields Too Large", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Head(HeadError::TooManyHeaders { limit: 100 }))),
        },
        Case {
            name: "14c 16 KiB request line -> 414",
            input: b(&format!("GET /{} HTTP/1.1\r\nHost: r\r\n\r\n", "a".repeat(16 * 1024))),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 414 URI Too Long", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Head(HeadError::LineTooLong { limit: 16384 }))),
        },
        Case {
            name: "14d body over max_upgrade_body -> 413",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 100000\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 413 Payload Too Large", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Body(BodyError::TooLarge { limit: 65536 }))),
        },
        Case {
            name: "14e oversize body with Expect: 100-continue -> 413 and no 100",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nExpect: 100-continue\r\nContent-Length: 70000\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 413 Payload Too Large", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Body(BodyError::TooLarge { limit: 65536 }))),
        },
        Case {
            name: "16a whitespace before the colon -> 400",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade : PTTH/1.0\r\nConnection: Upgrade\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Head(HeadError::Malformed(_)))),
        },
        Case {
            name: "16b obs-fold continuation line -> 400",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: keep-alive,\r\n Upgrade\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Head(HeadError::Malformed(_)))),
        },
        Case {
            name: "16c bare CR inside a field value -> 400",
            input: b("POST /q HTTP/1.1\r\nHost: r\rX: y\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Head(HeadError::Malformed(_)))),
        },
        Case {
            name: "16d NUL in a field value -> 400",
            input: b("POST /q HTTP/1.1\r\nHost: r\0\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Head(HeadError::Malformed(_)))),
        },
        Case {
            name: "17a missing Host, strict -> 400",
            input: b("POST /reverse HTTP/1.1\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::BadHost(_)))),
        },
        Case {
            name: "17b missing Host, allow_missing_host (AirPlay) -> 101",
            input: b("POST /reverse HTTP/1.1\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nX-Apple-Purpose: event\r\nContent-Length: 0\r\n\r\n"),
            config: airplay,
            decide: Decide::Accept,
            out: Out::Exact(SWITCH_10),
            check: ok_empty,
        },
        Case {
            name: "17c two Host fields -> 400",
            input: b("POST /q HTTP/1.1\r\nHost: a\r\nHost: b\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &[]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::BadHost(_)))),
        },
        Case {
            name: "17d invalid Host value -> 400",
            input: b("POST /q HTTP/1.1\r\nHost: a b\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 400 Bad Request", &["Connection: close"]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::BadHost(ptth::HostError::Invalid)))),
        },
        Case {
            name: "18a missing credentials -> 401 WWW-Authenticate: Bearer, no switch",
            input: offer_request("PTTH/1.0", "Upgrade"),
            config: strict(),
            decide: Decide::BearerGood,
            out: Out::Exact(
                b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nwww-authenticate: Bearer\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n\r\ncredentials needed\n",
            ),
            check: |r| matches!(r, Err(Error::Closed { phase: "refused" })),
        },
        Case {
            name: "18b right credentials -> 101",
            input: b("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nAuthorization: Bearer good\r\nContent-Length: 0\r\n\r\n"),
            config: strict(),
            decide: Decide::BearerGood,
            out: Out::Exact(SWITCH_10),
            check: ok_empty,
        },
        Case {
            name: "18c method PUT not accepted -> 405",
            input: b("PUT /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n"),
            config: strict(),
            decide: Decide::Accept,
            out: Out::Refusal("HTTP/1.1 405 Method Not Allowed", &[]),
            check: |r| matches!(r, Err(Error::Offer(OfferError::Method))),
        },
    ]);
    v
}

#[tokio::test]
async fn listener_raw_byte_table() {
    tokio::time::timeout(DEADLINE, async {
        let cases = cases();
        assert!(cases.len() >= 30, "{} cases", cases.len());
        for case in cases {
            let (result, out) = run(case.input, case.config, case.decide).await;
            check_out(case.name, &out, &case.out);
            assert!((case.check)(&result), "{}: result {result:?}", case.name);
        }
    })
    .await
    .expect("deadline");
}

/// #11 done properly: the dialer sends its body only after it has seen `100 Continue`.
#[tokio::test]
async fn expect_continue_waits_for_the_100_before_the_body() {
    tokio::time::timeout(DEADLINE, async {
        let (mut client, server) = tokio::io::duplex(4096);
        let listener = tokio::spawn(async move {
            let offer = raw::read_offer(server, &ListenerConfig::default()).await?;
            let body = offer.body().clone();
            let io = offer.accept().await?;
            Ok::<_, Error>((body, io))
        });
        client
            .write_all(b"POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            .await
            .unwrap();
        let mut cont = [0u8; 25];
        client.read_exact(&mut cont).await.unwrap();
        assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"auth").await.unwrap();
        let mut switch = vec![0u8; SWITCH_10.len()];
        client.read_exact(&mut switch).await.unwrap();
        assert_eq!(switch, SWITCH_10);
        let (body, _io) = listener.await.unwrap().unwrap();
        assert_eq!(&body[..], b"auth");
    })
    .await
    .expect("deadline");
}

/// #15 slow-loris: one byte per second, never finishing the head. The handshake deadline
/// closes the stream without a 101 (and without any answer). Paused time: no real waiting.
#[tokio::test(start_paused = true)]
async fn slowloris_head_hits_the_handshake_timeout() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (client, server) = tokio::io::duplex(4096);
        let (mut rd, mut wr) = tokio::io::split(client);
        let start = tokio::time::Instant::now();
        let listener =
            tokio::spawn(async move { raw::read_offer(server, &ListenerConfig::default()).await });
        let trickle = tokio::spawn(async move {
            for &byte in b"POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/1.0\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if wr.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            wr
        });
        let mut out = Vec::new();
        rd.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty(), "nothing is answered on a timeout: {out:?}");
        let err = listener.await.unwrap().unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(12),
            "{waited:?}"
        );
        trickle.abort();
    })
    .await
    .expect("deadline");
}

/// A short real `handshake_timeout` works the same (no paused clock).
#[tokio::test]
async fn short_handshake_timeout_closes_silent_peer() {
    tokio::time::timeout(DEADLINE, async {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut cfg = ListenerConfig::default();
        cfg.limits.handshake_timeout = Duration::from_millis(200);
        let listener = tokio::spawn(async move { raw::read_offer(server, &cfg).await });
        client.write_all(b"POST /q HTTP/1.1\r\nHo").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());
        assert!(listener.await.unwrap().unwrap_err().is_timeout());
    })
    .await
    .expect("deadline");
}

/// A peer that closes in the middle of its head gets no answer and a `Closed` error.
#[tokio::test]
async fn peer_closing_mid_head_is_closed_error() {
    tokio::time::timeout(DEADLINE, async {
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(b"POST /q HTTP/1.1\r\nHost: r\r\n")
            .await
            .unwrap();
        drop(client);
        let err = raw::read_offer(server, &ListenerConfig::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Closed { .. }), "{err:?}");
    })
    .await
    .expect("deadline");
}

/// #1 over real loopback TCP, with the first reversed round trip, exact bytes both ways.
#[tokio::test]
async fn loopback_tcp_exact_101_and_first_round_trip() {
    use http_body_util::{BodyExt, Empty};
    tokio::time::timeout(DEADLINE, async {
        let (tcp, addr) = support::bind_local().await;
        let listener = tokio::spawn(async move {
            let cfg = ListenerConfig::default();
            let offer = support::read_offer_on(&tcp).await;
            assert_eq!(offer.head().uri, "/message-queue?id=iamsam");
            let (mut client, conn) = offer.accept_reversed::<Empty<Bytes>>(&cfg).await.unwrap();
            tokio::spawn(conn);
            let res = client
                .send(http::Request::get("/status").body(Empty::new()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.into_body().collect().await.unwrap().to_bytes()
        });
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("POST /message-queue?id=iamsam HTTP/1.1\r\nHost: {addr}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let want_req = b"GET /status HTTP/1.1\r\nhost: \r\n\r\n";
        let mut got = vec![0u8; SWITCH_10.len() + want_req.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&[SWITCH_10, want_req].concat())
        );
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nGood")
            .await
            .unwrap();
        assert_eq!(&listener.await.unwrap()[..], b"Good");
    })
    .await
    .expect("deadline");
}

/// A TCP listener answering every connection with the library's hyper entry point
/// (`hyper_upgrade::offer`): `101` for an accepted offer, the rejection otherwise.
async fn hyper_entry_listener() -> std::net::SocketAddr {
    use http_body_util::Full;
    use ptth::listener::hyper_upgrade;
    let (tcp, addr) = support::bind_local().await;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tcp.accept().await.unwrap();
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let cfg = ListenerConfig::default();
                    Ok::<_, std::convert::Infallible>(match hyper_upgrade::offer(req, &cfg).await {
                        Ok(offer) => offer.switching_response::<Full<Bytes>>(),
                        Err(rej) => rej.into_response(),
                    })
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .title_case_headers(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .with_upgrades(),
            );
        }
    });
    addr
}

/// A TCP listener answering every connection with the raw entry point (`raw::read_offer`,
/// then `accept`).
async fn raw_entry_listener() -> std::net::SocketAddr {
    let (tcp, addr) = support::bind_local().await;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tcp.accept().await.unwrap();
            tokio::spawn(async move {
                if let Ok(offer) = raw::read_offer(stream, &ListenerConfig::default()).await {
                    let _ = offer.accept().await;
                }
            });
        }
    });
    addr
}

/// Write `bytes` on a fresh connection to `addr`, then read until the peer closes.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Issue 11 item 2, #13 at both entry points over TCP: an offer whose framing is ambiguous or
/// invalid gets a 400 (501 for an unknown coding) and a close, never a `101`. hyper removes a
/// Content-Length beside Transfer-Encoding before the handler sees it, so its entry point
/// refuses every chunked offer; the raw one still decodes a plain chunked offer (#10).
#[tokio::test]
async fn ambiguous_offer_framing_is_refused_by_both_entry_points() {
    tokio::time::timeout(DEADLINE, async {
        let offer = |framing: &str, body: &str| {
            format!("POST /q HTTP/1.1\r\nHost: r\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n{framing}\r\n{body}")
        };
        // (what, request, raw status, hyper status)
        let cases = [
            ("CL + TE", offer("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), 400, 400),
            ("TE + CL", offer("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"), 400, 400),
            ("CL + TE, CL invalid", offer("Content-Length: abc\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), 400, 400),
            ("two differing CL", offer("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), 400, 400),
            ("CL list 5, 6", offer("Content-Length: 5, 6\r\n", "hello!"), 400, 400),
            ("invalid CL", offer("Content-Length: +5\r\n", "hello"), 400, 400),
            ("TE chunked, gzip", offer("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"), 400, 400),
            ("TE gzip", offer("Transfer-Encoding: gzip\r\n", ""), 400, 400),
            ("TE gzip, chunked", offer("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"), 501, 501),
            ("TE chunked alone", offer("Transfer-Encoding: chunked\r\n", "0\r\n\r\n"), 101, 400),
        ];
        let raw_addr = raw_entry_listener().await;
        let hyper_addr = hyper_entry_listener().await;
        for (what, req, raw_want, hyper_want) in cases {
            for (entry, addr, want) in [("raw", raw_addr, raw_want), ("hyper", hyper_addr, hyper_want)] {
                let out = exchange(addr, req.as_bytes()).await;
                let status: u16 = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
                assert_eq!(status, want, "{entry} {what}: {out:?}");
                if want != 101 {
                    assert!(!out.contains(" 101 "), "{entry} {what}: {out:?}");
                    let head = out.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
                    assert!(
                        head.lines().any(|l| l.starts_with("connection:") && l.contains("close")),
                        "{entry} {what}: no Connection: close in {out:?}"
                    );
                }
            }
        }
    })
    .await
    .expect("deadline");
}
