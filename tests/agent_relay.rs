//! The library's `Agent` against the in-process relay: parking, requests through the relay to a
//! real upstream (plain and HTTPS), and healing after the relay restarts on the same port.

mod agent_support;
#[path = "support/pki.rs"]
mod pki;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pki::Pki;
use ptth::agent::Agent;
use ptth::agent::proxy::Proxy;
use ptth::relay::{Config, Relay, RelayHandle};
use support::{DEADLINE, get};
use tokio::net::TcpListener;
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
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
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
    let agent = Agent::builder(format!("http://{relay}/lib"))
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
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
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
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
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
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr2 = l2.local_addr().unwrap();
        let (handle2, _stop2) = relay_on(l2).await;
        let _agent2 = spawn_agent(addr2, proxy);
        handle2.wait_idle("lib", 1).await;
        let (status, _, _) = get(addr2, "/lib/secure", None).await;
        assert_eq!(status, 502);
    })
    .await
    .expect("deadline");
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

/// Issue 11 item 1, through the relay and the agent to an upstream that reports the path it
/// sees: the agent exposes only `/sub` of the upstream, and no form of dot segment reaches
/// anything outside it, nor climbs out of the name in path mode.
#[tokio::test]
async fn dot_segments_never_climb_above_the_upstream_prefix() {
    tokio::time::timeout(DEADLINE, async {
        let (up, mut arrivals, _release) = agent_support::spawn_upstream().await;
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
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
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
        let mut tries = 0;
        while logs.text().matches("request body cut off").count() < 2
            && !logs.text().contains("upstream request failed")
        {
            tries += 1;
            assert!(tries < 2000, "no verdict logged:\n{}", logs.text());
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let text = logs.text();
        let warnings: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
        assert!(warnings.is_empty(), "{warnings:#?}");
        let (_, _, metrics) = get(relay.handle.admin_addr().unwrap(), "/metrics", None).await;
        assert!(metrics.contains("ptth_requests_total{code=\"5xx\"} 0"), "{metrics}");
        assert!(metrics.contains("ptth_requests_total{code=\"4xx\"} 2"), "{metrics}");
    })
    .await
    .expect("deadline");
}
