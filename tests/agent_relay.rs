//! The library's `Agent` against the in-process relay: parking, requests through the relay to a
//! real upstream (plain and HTTPS), and healing after the relay restarts on the same port.

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
