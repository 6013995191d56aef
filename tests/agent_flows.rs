//! The agent against a relay stand-in (the library's raw listener): parking, the elastic pool,
//! proxying, streaming, graceful shutdown and a relay restart.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use support::*;
use tokio::net::TcpListener;

#[tokio::test]
async fn parks_announces_and_reparks() {
    deadline(async {
        let (relay, addr) = support::bind_local().await;
        let (up, _arrivals, _release) = spawn_upstream().await;
        let agent = spawn_proxy_agent(builder(addr, "demo").connections(2).token("s3cret"), up);

        let (head, mut a) = accept_parked(&relay).await;
        let (_, b) = accept_parked(&relay).await;
        assert_eq!(head.method, "POST");
        assert_eq!(head.uri, "/demo");
        assert_eq!(head.headers["host"], addr.to_string().as_str());
        assert_eq!(head.headers["upgrade"], "PTTH/0.9");
        assert_eq!(head.headers["authorization"], "Bearer s3cret");

        let res = a.send(get_request("/demo/hello?x=1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            body_string(res).await,
            format!("GET /demo/hello?x=1 host={up}")
        );
        // Serving a request made the agent dial a replacement for the busy connection.
        let (_, c) = accept_parked(&relay).await;

        // The relay drops parked connections; the agent parks new ones.
        drop((a, b, c));
        let (_, _d) = accept_parked(&relay).await;
        let (_, _e) = accept_parked(&relay).await;
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn pool_grows_to_serve_64_concurrent_requests() {
    deadline(async {
        const N: usize = 64;
        let (relay, addr) = support::bind_local().await;
        let (up, mut arrivals, release) = spawn_upstream().await;
        let agent = spawn_proxy_agent(builder(addr, "demo").connections(4).max_connections(N), up);

        // One request per parked connection, as a relay that hands each parked connection to
        // one visitor does; all of them are held at the upstream until the 64th arrives.
        let mut peers = HashSet::new();
        let mut requests = Vec::new();
        for _ in 0..N {
            let (tcp, peer) = relay.accept().await.unwrap();
            peers.insert(peer);
            let (_, mut client) = park(tcp).await;
            requests.push(tokio::spawn(async move {
                let res = client.send(get_request("/hold")).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                body_string(res).await
            }));
        }
        for _ in 0..N {
            assert_eq!(arrivals.recv().await.unwrap(), "/hold");
        }
        for _ in 0..N {
            release.send(Bytes::from_static(b"done")).unwrap();
        }
        for r in requests {
            assert_eq!(r.await.unwrap(), "done");
        }
        assert_eq!(peers.len(), N, "distinct connections");
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn upstream_down_gives_502_and_the_agent_stays_up() {
    deadline(async {
        let (relay, addr) = support::bind_local().await;
        let (dead, dead_addr) = support::bind_local().await;
        drop(dead);
        let agent = spawn_proxy_agent(builder(addr, "demo").connections(1), dead_addr);
        let (_, mut a) = accept_parked(&relay).await;
        for _ in 0..2 {
            let res = a.send(get_request("/")).await.unwrap();
            assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
            let text = body_string(res).await;
            assert!(text.contains("could not reach its upstream"), "{text}");
        }
        assert!(!agent.task.is_finished());
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    deadline(async {
        let (up, _arrivals, _release) = spawn_upstream().await;
        let (_relay, agent, mut a) = parked_proxy_agent(up).await;

        // Ping-pong: each chunk must come back before the next is sent, which only works if
        // neither direction is buffered anywhere on the way.
        let (tx, body) = channel_body();
        let req = http::Request::post("/echo").body(body).unwrap();
        let send = tokio::spawn(async move { a.send(req).await.unwrap() });
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        tx.send(chunk.clone()).await.unwrap();
        let res = send.await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut res_body = res.into_body();
        let mut total = 0usize;
        for i in 0..64 {
            let mut got = 0;
            while got < chunk.len() {
                let frame = res_body.frame().await.unwrap().unwrap();
                got += frame.into_data().unwrap().len();
            }
            assert_eq!(got, chunk.len(), "chunk {i}");
            total += got;
            if i < 63 {
                tx.send(chunk.clone()).await.unwrap();
            }
        }
        drop(tx);
        assert!(res_body.frame().await.is_none());
        assert_eq!(total, 64 * 64 * 1024);
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn streamed_response_arrives_incrementally() {
    deadline(async {
        let (up, mut arrivals, release) = spawn_upstream().await;
        let (_relay, agent, mut a) = parked_proxy_agent(up).await;

        let res = a.send(get_request("/drip")).await.unwrap();
        assert_eq!(arrivals.recv().await.unwrap(), "/drip");
        let mut body = res.into_body();
        for i in 0..3 {
            let event = format!("data: {i}\n\n");
            release.send(Bytes::from(event.clone())).unwrap();
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), event.as_bytes());
        }
        release.send(Bytes::new()).unwrap();
        assert!(body.frame().await.is_none());
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    deadline(async {
        let (up, mut arrivals, release) = spawn_upstream().await;
        let (relay, agent, mut a) = parked_proxy_agent(up).await;
        let in_flight = tokio::spawn(async move {
            let res = a.send(get_request("/hold")).await.unwrap();
            (res.status(), body_string(res).await)
        });
        assert_eq!(arrivals.recv().await.unwrap(), "/hold");
        // The replacement dialled when the request started.
        let (_, _b) = accept_parked(&relay).await;

        let stop = agent.stop;
        let task = agent.task;
        let _ = stop.unwrap().send(());
        release.send(Bytes::from_static(b"finished")).unwrap();
        assert_eq!(
            in_flight.await.unwrap(),
            (StatusCode::OK, "finished".to_string())
        );
        task.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_a_stuck_request_at_the_drain_timeout() {
    deadline(async {
        let (relay, addr) = support::bind_local().await;
        // The upstream never answers `/hold` (its release is never sent).
        let (up, mut arrivals, _release) = spawn_upstream().await;
        let drain = Duration::from_millis(300);
        let agent = spawn_proxy_agent(
            builder(addr, "demo").connections(1).drain_timeout(drain),
            up,
        );
        let (_, mut a) = accept_parked(&relay).await;
        let in_flight = tokio::spawn(async move {
            match a.send(get_request("/hold")).await {
                Ok(res) => body_string(res).await,
                Err(e) => format!("error: {e}"),
            }
        });
        assert_eq!(arrivals.recv().await.unwrap(), "/hold");
        let stopped_at = tokio::time::Instant::now();
        agent.shutdown().await.unwrap();
        let took = stopped_at.elapsed();
        assert!(took >= drain, "stopped before the drain timeout: {took:?}");
        assert!(
            took < drain * 10,
            "the drain timeout did not stop the agent: {took:?}"
        );
        // The relay side sees the connection close instead of an answer.
        let outcome = in_flight.await.unwrap();
        assert!(outcome.starts_with("error"), "{outcome}");
    })
    .await;
}

#[tokio::test]
async fn agent_comes_back_after_the_relay_restarts() {
    deadline(async {
        let (relay, addr) = support::bind_local().await;
        let (up, _arrivals, _release) = spawn_upstream().await;
        let (failed_tx, mut failed) = tokio::sync::mpsc::unbounded_channel();
        let counting = builder(addr, "demo").connections(2).on_failure(move |e| {
            let _ = failed_tx.send(e.to_string());
        });
        let agent = spawn_proxy_agent(counting, up);
        let (_, a) = accept_parked(&relay).await;
        let (_, b) = accept_parked(&relay).await;

        // The relay goes away: listener and parked connections.
        drop(relay);
        drop((a, b));
        // The agent counts refused connects (its backoff runs between them): come back after
        // the second.
        for _ in 0..2 {
            let why = failed.recv().await.unwrap();
            println!("counted failure: {why}");
        }
        let relay = TcpListener::bind(addr).await.unwrap();
        let (_, mut c) = accept_parked(&relay).await;
        let res = c.send(get_request("/again")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body_string(res).await, format!("GET /again host={up}"));
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn upgrades_pass_through_to_the_upstream() {
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    deadline(async {
        // An upstream that switches to a byte-echo protocol on `Upgrade: echo`.
        let (up, up_addr) = support::bind_local().await;
        tokio::spawn(async move {
            let (tcp, _) = up.accept().await.unwrap();
            let svc = hyper::service::service_fn(
                |mut req: http::Request<hyper::body::Incoming>| async move {
                    assert_eq!(req.headers()["upgrade"], "echo");
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(on.await.unwrap());
                        let mut buf = [0u8; 5];
                        io.read_exact(&mut buf).await.unwrap();
                        io.write_all(&buf).await.unwrap();
                    });
                    let res = http::Response::builder()
                        .status(101)
                        .header("upgrade", "echo")
                        .header("connection", "upgrade")
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(res)
                },
            );
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades()
                .await
                .unwrap();
        });
        let (_relay, agent, mut a) = parked_proxy_agent(up_addr).await;
        let req = http::Request::get("/ws")
            .header("upgrade", "echo")
            .header("connection", "upgrade")
            .body(full(""))
            .unwrap();
        let mut res = a.send(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        let mut io = TokioIo::new(hyper::upgrade::on(&mut res).await.unwrap());
        io.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        agent.shutdown().await.unwrap();
    })
    .await;
}

/// An upstream that counts the TCP connections it accepts. `/echo` streams the request body
/// back; `/bye` answers and closes the connection; anything else answers `ok`.
async fn counting_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (listener, addr) = support::bind_local().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let res = match req.uri().path() {
                        "/echo" => http::Response::new(req.into_body().map_err(Into::into).boxed()),
                        "/bye" => http::Response::builder()
                            .header("connection", "close")
                            .body(full("bye"))
                            .unwrap(),
                        _ => http::Response::new(full("ok")),
                    };
                    Ok::<_, std::convert::Infallible>(res)
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
            );
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn one_upstream_connection_per_reversed_connection_redialed_after_close() {
    use std::sync::atomic::Ordering;
    deadline(async {
        let (up, accepted) = counting_upstream().await;
        let (_relay, agent, mut a) = parked_proxy_agent(up).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "dialed lazily");

        for _ in 0..5 {
            let res = a.send(get_request("/")).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(body_string(res).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection reused");

        // The upstream closes its connection after this answer: the next request redials.
        let res = a.send(get_request("/bye")).await.unwrap();
        assert_eq!(body_string(res).await, "bye");
        for _ in 0..3 {
            let res = a.send(get_request("/")).await.unwrap();
            assert_eq!(body_string(res).await, "ok");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "redialed once after the close"
        );
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn request_body_streams_in_while_the_response_streams_out() {
    use std::sync::atomic::Ordering;
    deadline(async {
        let (up, accepted) = counting_upstream().await;
        let (_relay, agent, mut a) = parked_proxy_agent(up).await;

        // 4 MiB in 16 KiB chunks; each must come back before the next goes out.
        let chunk = Bytes::from(vec![b'y'; 16 * 1024]);
        let rounds = 4 * 1024 * 1024 / chunk.len();
        for _ in 0..2 {
            let (tx, body) = channel_body();
            let req = http::Request::post("/echo").body(body).unwrap();
            tx.send(chunk.clone()).await.unwrap();
            let res = a.send(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let mut res_body = res.into_body();
            let mut total = 0usize;
            for i in 0..rounds {
                let mut got = 0;
                while got < chunk.len() {
                    let frame = res_body.frame().await.unwrap().unwrap();
                    got += frame.into_data().unwrap().len();
                }
                assert_eq!(got, chunk.len(), "chunk {i}");
                total += got;
                if i + 1 < rounds {
                    tx.send(chunk.clone()).await.unwrap();
                }
            }
            drop(tx);
            assert!(res_body.frame().await.is_none());
            assert_eq!(total, 4 * 1024 * 1024);
        }
        let res = a.send(get_request("/")).await.unwrap();
        assert_eq!(body_string(res).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused after streaming");
        agent.shutdown().await.unwrap();
    })
    .await;
}

/// An upstream response with both Content-Length and Transfer-Encoding: framed by the chunked
/// coding, passed on without the Content-Length (RFC 9112 §6.3), and the upstream connection is
/// not reused.
#[tokio::test]
async fn upstream_response_with_content_length_and_chunked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    deadline(async {
        let (upstream, up) = support::bind_local().await;
        let (_relay, agent, mut a) = parked_proxy_agent(up).await;
        let first = tokio::spawn(async move {
            let res = a.send(get_request("/x")).await.unwrap();
            let has_length = res.headers().contains_key("content-length");
            (has_length, body_string(res).await, a)
        });
        let (mut conn, _) = upstream.accept().await.unwrap();
        read_head(&mut conn).await;
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
            .await
            .unwrap();
        let (has_length, body, mut a) = first.await.unwrap();
        assert!(!has_length);
        assert_eq!(body, "hi");
        // The next request goes out on a new upstream connection; the old one is closed.
        let second = tokio::spawn(async move { body_string(a.send(get_request("/y")).await.unwrap()).await });
        let (mut conn2, _) = upstream.accept().await.unwrap();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
        assert!(read_head(&mut conn2).await.starts_with("GET /y HTTP/1.1\r\n"));
        conn2.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
        assert_eq!(second.await.unwrap(), "ok");
        agent.shutdown().await.unwrap();
    })
    .await;
}

/// Issue 11 item 1, the agent's half: whatever path a relay sends (this one is not ours and
/// does not normalise), nothing climbs above the `--to` prefix at the upstream.
#[tokio::test]
async fn reversed_paths_never_climb_above_the_upstream_prefix() {
    deadline(async {
        let (relay, addr) = support::bind_local().await;
        let (up, mut arrivals, _release) = spawn_upstream().await;
        let agent = spawn_proxy_agent_to(builder(addr, "demo"), &format!("http://{up}/sub"));
        let (_, mut client) = accept_parked(&relay).await;
        for (target, seen) in [
            ("/index.txt", Some("/sub/index.txt")),
            ("/../index.txt", Some("/sub/index.txt")),
            ("/../../../etc/passwd", Some("/sub/etc/passwd")),
            ("/%2e%2e/%2E%2E/etc/passwd", Some("/sub/etc/passwd")),
            ("/a/.%2E/../x?q=/../y", Some("/sub/x")),
            ("/./x/.", Some("/sub/x/")),
            ("/..%2f..%2fetc/passwd", None),
            ("/a/%2e%2e%5C%2e%2e%5Cetc", None),
            ("/..;/x", None),
        ] {
            let res = client.send(get_request(target)).await.unwrap();
            let status = res.status();
            let body = body_string(res).await;
            match seen {
                Some(path) => {
                    assert_eq!(status, StatusCode::OK, "{target}: {body}");
                    assert_eq!(arrivals.recv().await.unwrap(), path, "{target}");
                }
                None => {
                    assert_eq!(status, StatusCode::BAD_REQUEST, "{target}: {body}");
                    assert!(
                        arrivals.try_recv().is_err(),
                        "{target} reached the upstream"
                    );
                }
            }
        }
        agent.shutdown().await.unwrap();
    })
    .await;
}

/// An HTTP/1.0 upstream, close-delimited or with a length and no keep-alive: the agent answers
/// the relay in HTTP/1.1, frames the body itself (chunked or by length), drops the upstream's
/// `Connection: close` (hop-by-hop), and keeps the reversed connection for the next request.
#[tokio::test]
async fn http_1_0_upstream_keeps_the_reversed_connection() {
    use tokio::io::AsyncWriteExt;
    deadline(async {
        let (upstream, up) = support::bind_local().await;
        const ANSWERS: [&[u8]; 2] = [
            b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nuntil close",
            b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nlength",
        ];
        tokio::spawn(async move {
            // Each answer closes its connection: one upstream connection per request.
            for answer in ANSWERS.iter().cycle().take(4) {
                let (mut conn, _) = upstream.accept().await.unwrap();
                read_head(&mut conn).await;
                conn.write_all(answer).await.unwrap();
            }
        });
        let (_relay, agent, mut a) = parked_proxy_agent(up).await;
        let wanted = [
            ("until close", "transfer-encoding"),
            ("length", "content-length"),
        ];
        for (i, (want, framing)) in wanted.iter().cycle().take(4).enumerate() {
            // The same reversed connection every time: it fails if the agent closed it.
            let res = a.send(get_request("/old")).await.unwrap();
            assert_eq!(res.version(), http::Version::HTTP_11, "request {i}");
            assert!(
                res.headers().get("connection").is_none(),
                "{:?}",
                res.headers()
            );
            assert!(res.headers().contains_key(*framing), "{:?}", res.headers());
            assert_eq!(body_string(res).await, *want);
        }
        agent.shutdown().await.unwrap();
    })
    .await;
}
