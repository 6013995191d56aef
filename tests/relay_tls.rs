//! The relay over TLS: HTTPS for public clients and agents, and mutual TLS for agents.

use support::pki;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use pki::Pki;
use ptth::relay::{AgentCerts, Config, Listeners, Relay};
use ptth::{Limits, tls};
use support::{DEADLINE, Handler, TestRelay, claim_request, echo_handler, start_tls_relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(pki: &Pki, client_ca: Option<&Path>, agent_certs: AgentCerts) -> TestRelay {
    let (cert, key) = pki.issue("relay", &["localhost"], false);
    start_tls_relay(Config {
        tls: Some(tls::server_config(&cert, &key, client_ca).unwrap()),
        agent_certs,
        ..Config::default()
    })
    .await
}

async fn tls_stream(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<tls::client::TlsStream<TcpStream>, ptth::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tls::connect(tcp, "localhost", config).await
}

/// One agent connection over TLS; returns the handshake result.
async fn agent(
    relay: &TestRelay,
    name: &str,
    config: Arc<rustls::ClientConfig>,
    h: Handler,
) -> Result<(), ptth::Error> {
    let stream = tls_stream(relay.addr, config).await?;
    let req = claim_request(relay.addr, name, None);
    let flipped = ptth::dialer::handshake(stream, &req, &Limits::default()).await?;
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |r| {
            let h = h.clone();
            async move { Ok::<_, std::convert::Infallible>(h(r).await) }
        });
        let _ = flipped.serve(svc, &Limits::default()).await;
    });
    Ok(())
}

async fn https_get(
    addr: SocketAddr,
    path: &str,
    config: Arc<rustls::ClientConfig>,
) -> (u16, String) {
    let stream = tls_stream(addr, config).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", HeaderValue::from_static("localhost"))
        .body(Empty::new())
        .unwrap();
    let res: http::Response<Incoming> = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn https_end_to_end_through_the_relay() {
    tokio::time::timeout(DEADLINE, async {
        let pki = Pki::new("relay");
        let relay = start(&pki, None, AgentCerts::Off).await;
        let client = tls::client_config(Some(&pki.ca_file()), None).unwrap();
        agent(&relay, "demo", client.clone(), echo_handler("tls-agent"))
            .await
            .unwrap();
        relay.handle.wait_idle("demo", 1).await;
        let (status, body) = https_get(relay.addr, "/demo/hello", client).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("tls-agent /hello"), "{body}");
        assert!(
            body.contains("proto=https"),
            "Forwarded must say https: {body}"
        );
    })
    .await
    .expect("deadline");
}

#[tokio::test]
async fn mutual_tls_for_agents() {
    tokio::time::timeout(DEADLINE, async {
        let pki = Pki::new("relay");
        let ca = pki.ca_file();
        let relay = start(&pki, Some(&ca), AgentCerts::MatchName).await;
        let (demo_cert, demo_key) = pki.issue("demo-agent", &["demo.localhost"], false);

        // No client certificate: TLS succeeds (public clients need no certificate), the claim
        // is refused with 401 and nothing is parked.
        let anonymous = tls::client_config(Some(&ca), None).unwrap();
        let err = agent(&relay, "demo", anonymous.clone(), echo_handler("x"))
            .await
            .unwrap_err();
        assert_eq!(err.refusal().map(|r| r.status.as_u16()), Some(401), "{err}");

        // A certificate for demo.localhost may claim demo, not other.
        let with_cert = tls::client_config(Some(&ca), Some((&demo_cert, &demo_key))).unwrap();
        let err = agent(&relay, "other", with_cert.clone(), echo_handler("x"))
            .await
            .unwrap_err();
        assert_eq!(err.refusal().map(|r| r.status.as_u16()), Some(401), "{err}");
        assert!(String::from_utf8_lossy(&err.refusal().unwrap().body).contains("other.localhost"));
        agent(&relay, "demo", with_cert, echo_handler("mtls-agent"))
            .await
            .unwrap();
        relay.handle.wait_idle("demo", 1).await;

        // Public clients still get through without a certificate.
        let (status, body) = https_get(relay.addr, "/demo/x", anonymous).await;
        assert_eq!(
            (status, body.starts_with("mtls-agent /x")),
            (200, true),
            "{body}"
        );
    })
    .await
    .expect("deadline");
}

#[tokio::test]
async fn plaintext_on_the_tls_port_is_closed_cleanly() {
    tokio::time::timeout(DEADLINE, async {
        let pki = Pki::new("relay");
        let relay = start(&pki, None, AgentCerts::Off).await;
        let mut tcp = TcpStream::connect(relay.addr).await.unwrap();
        tcp.write_all(b"GET /demo/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf).await;
        assert!(
            !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
            "no HTTP answer in clear"
        );
    })
    .await
    .expect("deadline");
}

#[tokio::test]
async fn tls_listener_without_certificate_is_a_startup_error() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Relay::new(
        Listeners {
            plain: vec![],
            tls: vec![l],
        },
        Config::default(),
    )
    .await
    .err()
    .expect("must fail");
    assert!(err.to_string().contains("certificate"), "{err}");
}
