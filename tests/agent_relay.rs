//! The library's `Agent` against the in-process relay: parking, requests through the relay to a
//! real upstream (plain and HTTPS), healing after the relay restarts on the same port (and how
//! fast, under paused time), `Expect: 100-continue` end to end, and HTTP/1.0 upstreams.

use support::pki;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pki::Pki;
use ptth::agent::Agent;
use ptth::agent::Proxy;
use ptth::relay::{Config, Relay, RelayHandle};
use support::{DEADLINE, get, read_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

async fn hello(
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(http::Response::new(Full::from(format!(
        "upstream saw {}",
        req.uri()
    ))))
}

/// A plain or TLS hello upstream on 127.0.0.1:0.
async fn upstream(tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let (l, addr) = support::bind_local().await;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(hello);
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => drop(http.serve_connection(TokioIo::new(tcp), svc).await),
                    Some(cfg) => {
                        if let Ok(s) = ptth::tls::accept(tcp, cfg).await {
                            drop(http.serve_connection(TokioIo::new(s), svc).await);
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A relay on `listener` until the returned sender is dropped or fired.
async fn relay_on(listener: TcpListener) -> (RelayHandle, oneshot::Sender<()>) {
    let relay = Relay::new(vec![listener], Config::default()).await.unwrap();
    let handle = relay.handle();
    let (stop, rx) = oneshot::channel::<()>();
    tokio::spawn(relay.run(async move {
        let _ = rx.await;
    }));
    (handle, stop)
}

fn spawn_agent(relay: SocketAddr, proxy: Proxy) -> oneshot::Sender<()> {
    spawn_named_agent(relay, "lib", proxy)
}

fn spawn_named_agent(relay: SocketAddr, name: &str, proxy: Proxy) -> oneshot::Sender<()> {
    let agent = Agent::builder(format!("http://{relay}/{name}"))
        .connections(2)
        .build()
        .unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    tokio::spawn(agent.serve_proxy(proxy, async move {
        let _ = rx.await;
    }));
    stop
}

#[tokio::test]
async fn agent_parks_at_the_relay_and_serves_through_it_and_heals_after_a_restart() {
    tokio::time::timeout(DEADLINE, async {
        let up = upstream(None).await;
        let (l, addr) = support::bind_local().await;
        let (handle, stop_relay) = relay_on(l).await;
        let _agent = spawn_agent(addr, Proxy::new(&format!("http://{up}")).unwrap());
        handle.wait_idle("lib", 2).await;
        let (status, _, body) = get(addr, "/lib/one?x=1", None).await;
        assert_eq!((status, body.as_str()), (200, "upstream saw /one?x=1"));

        // The relay goes away and comes back on the same port; the agent returns by itself.
        drop(stop_relay);
        handle.wait_until(|h| h.agents() == 0).await;
        let l = loop {
            // The old listener may take a moment to be released.
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        let (handle, _stop_relay) = relay_on(l).await;
        handle.wait_idle("lib", 1).await;
        let (status, _, body) = get(addr, "/lib/two", None).await;
        assert_eq!((status, body.as_str()), (200, "upstream saw /two"));
    })
    .await
    .expect("deadline");
}

#[tokio::test]
async fn https_upstream_through_the_relay() {
    tokio::time::timeout(DEADLINE, async {
        let pki = Pki::new("upstream");
        let (cert, key) = pki.issue("up", &["localhost"], false);
        let up = upstream(Some(ptth::tls::server_config(&cert, &key, None).unwrap())).await;
        let (l, addr) = support::bind_local().await;
        let (handle, _stop_relay) = relay_on(l).await;
        let trust = ptth::tls::client_config(Some(&pki.ca_file()), None).unwrap();
        let proxy =
            Proxy::with_tls(&format!("https://localhost:{}", up.port()), Some(trust)).unwrap();
        let _agent = spawn_agent(addr, proxy);
        handle.wait_idle("lib", 1).await;
        let (status, _, body) = get(addr, "/lib/secure", None).await;
        assert_eq!((status, body.as_str()), (200, "upstream saw /secure"));

        // The same upstream with no trust in its CA: the agent answers 502, and stays up.
        let proxy = Proxy::new(&format!("https://localhost:{}", up.port())).unwrap();
        let (l2, addr2) = support::bind_local().await;
        let (handle2, _stop2) = relay_on(l2).await;
        let _agent2 = spawn_agent(addr2, proxy);
        handle2.wait_idle("lib", 1).await;
        let (status, _, _) = get(addr2, "/lib/secure", None).await;
        assert_eq!(status, 502);
    })
    .await
    .expect("deadline");
}

/// Bind `addr` again once the previous relay has let go of it.
async fn rebind(addr: SocketAddr) -> TcpListener {
    for _ in 0..1000 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            // The old listener may take a moment to be released.
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    panic!("{addr} was not released");
}

/// Slack on top of the probe step for the handshakes after the relay is back (virtual time:
/// only the timers count).
const SLACK: Duration = Duration::from_millis(100);

/// Three agents, long parked; the relay goes away for `outage` and comes back on the same port:
/// every agent must be serving again within about a second (one probe step) of the relay's
/// return. Paused time: the outage costs no real time and the delays are exact.
async fn serving_again_after(outage: Duration) {
    // Long parked before the outage, as in production: their close is not a quick close.
    let parked_for = Duration::from_secs(60);
    tokio::time::timeout(parked_for + outage + DEADLINE, async {
        let up = upstream(None).await;
        let (l, addr) = support::bind_local().await;
        let (handle, stop_relay) = relay_on(l).await;
        let names = ["a0", "a1", "a2"];
        let _agents: Vec<_> = names
            .iter()
            .map(|n| spawn_named_agent(addr, n, Proxy::new(&format!("http://{up}")).unwrap()))
            .collect();
        for n in names {
            handle.wait_idle(n, 2).await;
        }
        tokio::time::sleep(parked_for).await;

        drop(stop_relay);
        handle.wait_until(|h| h.agents() == 0).await;
        tokio::time::sleep(outage).await;
        let l = rebind(addr).await;
        let back = tokio::time::Instant::now();
        let (handle, _stop_relay) = relay_on(l).await;
        for n in names {
            handle.wait_idle(n, 1).await;
        }
        let took = back.elapsed();
        let probe = ptth::agent::Backoff::default().outage_probe;
        assert!(
            took <= probe + SLACK,
            "after a {outage:?} outage the agents were serving again {took:?} after the relay came back"
        );
        let (status, _, body) = get(addr, "/a2/back", None).await;
        assert_eq!((status, body.as_str()), (200, "upstream saw /back"));
    })
    .await
    .expect("deadline");
}

#[tokio::test(start_paused = true)]
async fn serving_again_within_a_second_after_a_3s_outage() {
    serving_again_after(Duration::from_secs(3)).await;
}

#[tokio::test(start_paused = true)]
async fn serving_again_within_a_second_after_a_15s_outage() {
    serving_again_after(Duration::from_secs(15)).await;
}

/// A raw upstream on 127.0.0.1:0 that serves one connection with `serve`.
async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (l, addr) = support::bind_local().await;
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        serve(tcp).await;
    });
    addr
}

/// A relay with one agent proxying to `up`; returns the relay's address (and what keeps both
/// running).
async fn relay_and_agent(up: SocketAddr) -> (SocketAddr, impl Drop) {
    let (l, addr) = support::bind_local().await;
    let (handle, stop_relay) = relay_on(l).await;
    let agent = spawn_agent(addr, Proxy::new(&format!("http://{up}")).unwrap());
    handle.wait_idle("lib", 1).await;
    struct Running(Option<(oneshot::Sender<()>, oneshot::Sender<()>)>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.take();
        }
    }
    (addr, Running(Some((stop_relay, agent))))
}

const BIG: usize = 8 * 1024 * 1024;

/// The upstream refuses an `Expect: 100-continue` upload with 413 before reading it: the public
/// client gets the 413 and no `100`, and not one byte of the body reaches the upstream.
#[tokio::test]
async fn expect_continue_refused_by_the_upstream_sends_no_body() {
    tokio::time::timeout(DEADLINE, async {
        let (got_tx, got_rx) = oneshot::channel::<(String, usize)>();
        let up = raw_upstream(|mut tcp| async move {
            let head = read_head(&mut tcp).await;
            tcp.write_all(
                b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
            )
            .await
            .unwrap();
            // Count what still arrives until the agent closes the connection.
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await;
            let _ = got_tx.send((head, rest.len()));
        })
        .await;
        let (addr, _running) = relay_and_agent(up).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /lib/upload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {BIG}\r\nExpect: 100-continue\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut first = read_head(&mut s).await;
        let continued = first.starts_with("HTTP/1.1 100");
        if continued {
            // A client that got its 100 sends the body (as curl does).
            let _ = s.write_all(&vec![b'x'; BIG]).await;
            first = read_head(&mut s).await;
        }
        let (up_head, up_body) = got_rx.await.unwrap();
        assert!(
            up_head.to_ascii_lowercase().contains("expect: 100-continue\r\n"),
            "the expectation was passed on: {up_head}"
        );
        assert!(
            !continued,
            "the public client got a 100 the upstream never sent; {up_body} body bytes reached the upstream"
        );
        assert!(first.starts_with("HTTP/1.1 413"), "{first}");
        assert_eq!(up_body, 0, "body bytes that reached the upstream");
        // The relay says it closes (the body it did not read is still announced).
        assert!(first.to_ascii_lowercase().contains("connection: close\r\n"), "{first}");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"too large");
    })
    .await
    .expect("deadline");
}

/// The upstream's side once the body may come: read the 5-byte body, answer it back in a
/// `200`, then wait for the close.
async fn echo_5(mut tcp: TcpStream) {
    let mut body = [0u8; 5];
    tcp.read_exact(&mut body).await.unwrap();
    let mut res = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec();
    res.extend_from_slice(&body);
    tcp.write_all(&res).await.unwrap();
    let _ = tcp.read(&mut [0u8; 1]).await;
}

/// A public connection to the relay at `addr`, and the head of a 5-byte upload to `/lib` that
/// expects `100 Continue` (not sent yet).
async fn expecting(addr: SocketAddr) -> (TcpStream, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /lib/upload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    );
    (s, head)
}

/// The upstream accepts: the public client's `100` is the upstream's, passed back through the
/// agent and the relay, and the body arrives intact.
#[tokio::test]
async fn expect_continue_accepted_by_the_upstream() {
    tokio::time::timeout(DEADLINE, async {
        let (arrived_tx, arrived_rx) = oneshot::channel::<String>();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let up = raw_upstream(|mut tcp| async move {
            let head = read_head(&mut tcp).await;
            let _ = arrived_tx.send(head);
            release_rx.await.unwrap();
            tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .unwrap();
            echo_5(tcp).await;
        })
        .await;
        let (addr, _running) = relay_and_agent(up).await;
        let (mut s, head) = expecting(addr).await;
        s.write_all(head.as_bytes()).await.unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let seen = released.clone();
        let interim = tokio::spawn(async move {
            let head = read_head(&mut s).await;
            (s, head, seen.load(Ordering::SeqCst))
        });
        let up_head = arrived_rx.await.unwrap();
        assert!(
            up_head
                .to_ascii_lowercase()
                .contains("expect: 100-continue\r\n"),
            "{up_head}"
        );
        released.store(true, Ordering::SeqCst);
        release_tx.send(()).unwrap();
        let (mut s, interim, after_release) = interim.await.unwrap();
        assert!(
            interim.starts_with("HTTP/1.1 100 Continue\r\n"),
            "{interim}"
        );
        assert!(after_release, "the 100 came before the upstream sent one");
        body_after_100(&mut s).await;
    })
    .await
    .expect("deadline");
}

/// After a `100 Continue`: send the 5-byte body `hello`, and get it back in a `200`.
async fn body_after_100(s: &mut TcpStream) {
    s.write_all(b"hello").await.unwrap();
    let fin = read_head(s).await;
    assert!(fin.starts_with("HTTP/1.1 200"), "{fin}");
    let mut body = [0u8; 5];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"hello");
}

/// An upstream that ignores the expectation (never sends 100, just waits for the body): after
/// the agent's bounded wait the body goes through anyway.
#[tokio::test]
async fn expect_continue_without_an_answer_waits_a_bounded_time() {
    tokio::time::timeout(DEADLINE, async {
        let up = raw_upstream(|mut tcp| async move {
            read_head(&mut tcp).await;
            echo_5(tcp).await;
        })
        .await;
        let (addr, _running) = relay_and_agent(up).await;
        let (mut s, head) = expecting(addr).await;
        let sent = std::time::Instant::now();
        s.write_all(head.as_bytes()).await.unwrap();
        let interim = read_head(&mut s).await;
        let waited = sent.elapsed();
        assert!(
            interim.starts_with("HTTP/1.1 100 Continue\r\n"),
            "{interim}"
        );
        let wait = ptth::limits::CONTINUE_WAIT;
        assert!(
            waited >= wait,
            "100 after {waited:?}: not from the agent's bounded wait ({wait:?})"
        );
        // The agent's wait decided, not the relay's longer one.
        let relay_wait = ptth::relay::RELAY_CONTINUE_WAIT;
        assert!(waited < relay_wait, "100 only after {waited:?}");
        body_after_100(&mut s).await;
    })
    .await
    .expect("deadline");
}

/// An HTTP/1.0 upstream (close-delimited, then with a length): the public client gets HTTP/1.1
/// answers on one keep-alive connection, and the upstream's `Connection: close` stays on its hop.
#[tokio::test]
async fn http_1_0_upstream_answers_the_public_in_http_1_1() {
    tokio::time::timeout(DEADLINE, async {
        let (l, up) = support::bind_local().await;
        tokio::spawn(async move {
            for i in 0..2 {
                let (mut tcp, _) = l.accept().await.unwrap();
                read_head(&mut tcp).await;
                let res: &[u8] = if i == 0 {
                    b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nuntil close"
                } else {
                    b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nlength"
                };
                tcp.write_all(res).await.unwrap();
            }
        });
        let (addr, _running) = relay_and_agent(up).await;
        // One public connection for both requests.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        for (want, framing) in [
            ("until close", "transfer-encoding"),
            ("length", "content-length"),
        ] {
            sender
                .ready()
                .await
                .expect("the public connection stays open");
            let req = http::Request::get("/lib/old")
                .header("host", addr.to_string())
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let res = sender.send_request(req).await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(res.version(), http::Version::HTTP_11);
            assert!(
                res.headers().get("connection").is_none(),
                "{:?}",
                res.headers()
            );
            assert!(res.headers().contains_key(framing), "{:?}", res.headers());
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap();
            assert_eq!(body.to_bytes(), want);
        }
    })
    .await
    .expect("deadline");
}

/// Issue 11 item 1, through the relay and the agent to an upstream that reports the path it
/// sees: the agent exposes only `/sub` of the upstream, and no form of dot segment reaches
/// anything outside it, nor climbs out of the name in path mode.
#[tokio::test]
async fn dot_segments_never_climb_above_the_upstream_prefix() {
    tokio::time::timeout(DEADLINE, async {
        let (up, mut arrivals, _release) = support::spawn_upstream().await;
        let relay = support::start_relay(Config::default()).await;
        let _agent = spawn_named_agent(
            relay.addr,
            "subonly",
            Proxy::new(&format!("http://{up}/sub")).unwrap(),
        );
        relay.handle.wait_idle("subonly", 2).await;
        let host_mode = Some("subonly.localhost");
        // (target, Host, status, what the upstream sees)
        let cases: &[(&str, Option<&str>, u16, &str)] = &[
            ("/subonly/index.txt", None, 200, "/sub/index.txt"),
            // Path mode: climbing out of /subonly is refused at the relay.
            ("/subonly/../index.txt", None, 400, ""),
            ("/subonly/%2e%2e/index.txt", None, 400, ""),
            ("/subonly/.%2E/index.txt", None, 400, ""),
            ("/subonly/%2E./index.txt", None, 400, ""),
            ("/subonly/a/../../index.txt", None, 400, ""),
            ("/other/../subonly/index.txt", None, 400, ""),
            // Dot segments that stay inside are removed.
            ("/subonly/./index.txt", None, 200, "/sub/index.txt"),
            ("/subonly/a/../index.txt", None, 200, "/sub/index.txt"),
            ("/subonly/a/%2e%2e/b/%2E/c", None, 200, "/sub/b/c"),
            // Hidden dot segments are refused; an encoded slash alone is data.
            ("/subonly/..%2findex.txt", None, 400, ""),
            ("/subonly/..%5Cindex.txt", None, 400, ""),
            ("/subonly/..;/index.txt", None, 400, ""),
            ("/subonly/a%2Fb", None, 200, "/sub/a%2Fb"),
            // Host mode: `..` at the root stays at the root, under the prefix.
            ("/../index.txt", host_mode, 200, "/sub/index.txt"),
            (
                "/%2e%2e/%2E%2E/etc/passwd",
                host_mode,
                200,
                "/sub/etc/passwd",
            ),
            ("/./a/.%2e/../x", host_mode, 200, "/sub/x"),
        ];
        for &(target, host, status, seen) in cases {
            let (got, _, body) = get(relay.addr, target, host).await;
            assert_eq!(got, status, "{target} {host:?}: {body}");
            if status == 200 {
                assert_eq!(arrivals.recv().await.unwrap(), seen, "{target} {host:?}");
                assert!(
                    body.starts_with(&format!("GET {seen} ")),
                    "{target}: {body}"
                );
            } else {
                assert!(
                    arrivals.try_recv().is_err(),
                    "{target} reached the upstream"
                );
            }
        }
    })
    .await
    .expect("deadline");
}

/// An upstream that reads each request body in full before it answers, and reports whether
/// that worked.
async fn collecting_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<bool>) {
    use http_body_util::BodyExt;
    let (l, addr) = support::bind_local().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let tx = tx.clone();
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    let ok = req.into_body().collect().await.is_ok();
                    let _ = tx.send(ok);
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::from(
                        "got it",
                    )))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc),
            );
        }
    });
    (addr, rx)
}

/// Issue 11 item 6, end to end: a public client's bad body is a client error at the relay
/// (not a 5xx) and the agent does not log it as a warning about its upstream.
#[tokio::test]
async fn clients_bad_body_is_no_warning_and_no_5xx() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_guard, logs) = support::capture_logs();
    tokio::time::timeout(DEADLINE, async {
        let (up, mut bodies) = collecting_upstream().await;
        let cfg = Config {
            admin: Some("127.0.0.1:0".parse().unwrap()),
            ..Config::default()
        };
        let relay = support::start_relay(cfg).await;
        let _agent = spawn_named_agent(relay.addr, "lib", Proxy::new(&format!("http://{up}")).unwrap());
        relay.handle.wait_idle("lib", 2).await;
        let requests: [&[u8]; 2] = [
            b"POST /lib/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
            b"POST /lib/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
        ];
        for req in requests {
            let mut s = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
            s.write_all(req).await.unwrap();
            s.shutdown().await.unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            let out = String::from_utf8_lossy(&out);
            assert_eq!(support::status_of(&out), 400, "{out}");
            // The upstream saw its request body fail: the agent passed the cut on.
            assert!(!bodies.recv().await.unwrap());
        }
        // The agent's verdict on each cut body is logged once the upstream request fails.
        logs.wait_until(|text| {
            text.matches("request body cut off").count() >= 2
                || text.contains("upstream request failed")
        })
        .await;
        let text = logs.text();
        let warnings: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
        assert!(warnings.is_empty(), "{warnings:#?}");
        let (_, _, metrics) = get(relay.handle.admin_addr().unwrap(), "/metrics", None).await;
        // Client errors, each counted under its exact code, and no gateway error at all.
        assert!(!metrics.contains(",code=\"5"), "{metrics}");
        assert!(
            metrics.contains("ptth_requests_total{name=\"lib\",code=\"400\"} 2"),
            "{metrics}"
        );
    })
    .await
    .expect("deadline");
}
