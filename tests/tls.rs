//! TLS on the PTTH connection: certificates are generated here with rcgen, traffic stays on
//! 127.0.0.1. The dialer is the TLS client; the listener the TLS server.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use ptth::listener::{ListenerConfig, raw};
use ptth::{Limits, UpgradeRequest, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support;
use pki::Pki;
use support::pki;

use support::DEADLINE;

async fn hello(
    _req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(http::Response::new(Full::from("hello over tls")))
}

/// The dialer: TLS-connect to `addr` as `sni`, upgrade, serve `hello` until the listener is done.
async fn dial(
    addr: std::net::SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(), ptth::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = tls::connect(tcp, sni, config).await?;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(tls::ALPN_HTTP11));
    let req = UpgradeRequest::new(http::HeaderValue::from_static("localhost"));
    let flipped = ptth::dialer::handshake(stream, &req, &Limits::default()).await?;
    let _ = flipped
        .serve(hyper::service::service_fn(hello), &Limits::default())
        .await;
    Ok(())
}

/// The listener: TLS-accept one connection, take the offer, send one GET, return its body.
async fn listen_once(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> Result<(String, Option<rustls::pki_types::CertificateDer<'static>>), ptth::Error> {
    let (tcp, _) = listener.accept().await.unwrap();
    let stream = tls::accept(tcp, config).await?;
    let peer = tls::peer_certificate(&stream);
    let cfg = ListenerConfig::default();
    let offer = raw::read_offer(stream, &cfg).await?;
    let (mut client, conn) = offer.accept_reversed::<Empty<Bytes>>(&cfg).await?;
    tokio::spawn(conn);
    let res = client
        .send(http::Request::get("/").body(Empty::new()).unwrap())
        .await?;
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Ok((String::from_utf8(body.to_vec()).unwrap(), peer))
}

fn server(
    pki: &Pki,
    names: &[&str],
    expired: bool,
    client_ca: Option<&Path>,
) -> Arc<rustls::ServerConfig> {
    let (cert, key) = pki.issue("server", names, expired);
    tls::server_config(&cert, &key, client_ca).unwrap()
}

#[tokio::test]
async fn round_trip_over_tls() {
    tokio::time::timeout(DEADLINE, async {
        let pki = Pki::new("good");
        let (listener, addr) = support::bind_local().await;
        let server = tokio::spawn(listen_once(
            listener,
            server(&pki, &["localhost"], false, None),
        ));
        let client = tls::client_config(Some(&pki.ca_file()), None).unwrap();
        let dialer = tokio::spawn(dial(addr, "localhost", client));
        let (body, peer) = server.await.unwrap().unwrap();
        assert_eq!(body, "hello over tls");
        assert!(peer.is_none());
        dialer.abort();
    })
    .await
    .expect("deadline");
}

/// Runs a TLS dial that must fail, and returns the dialer's message. The listener side must
/// also fail before it sees any upgrade request.
async fn failing_dial(
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<rustls::ClientConfig>,
    sni: &str,
) -> String {
    let (listener, addr) = support::bind_local().await;
    let server = tokio::spawn(listen_once(listener, server_cfg));
    let err = dial(addr, sni, client_cfg).await.unwrap_err();
    assert!(
        server.await.unwrap().is_err(),
        "listener must not get an upgrade request"
    );
    err.to_string()
}

/// Each certificate failure refuses the dial with a message that names the problem, and the
/// listener never sees an upgrade request.
#[tokio::test]
async fn certificate_failures_are_refused_with_a_readable_message() {
    tokio::time::timeout(DEADLINE, async {
        let (good, other) = (Pki::new("good"), Pki::new("other"));
        // (case, CA the dialer trusts, server certificate expired, SNI, the message says)
        let cases = [
            ("unknown CA", &other, false, "localhost", "unknown CA"),
            (
                "wrong server name",
                &good,
                false,
                "relay.example",
                "not valid for the name \"relay.example\"",
            ),
            ("expired certificate", &good, true, "localhost", "expired"),
        ];
        for (case, trusted, expired, sni, says) in cases {
            let client = tls::client_config(Some(&trusted.ca_file()), None).unwrap();
            let msg = failing_dial(server(&good, &["localhost"], expired, None), client, sni).await;
            assert!(msg.contains(says), "{case}: {msg}");
        }
    })
    .await
    .expect("deadline");
}

/// The library says what failed and of which kind; which flag fixes it is for the program to
/// say (`ptth-connect` does: tests/cli.rs).
#[tokio::test]
async fn tls_failures_have_a_kind_and_name_no_flag() {
    tokio::time::timeout(DEADLINE, async {
        let (good, other) = (Pki::new("good"), Pki::new("other"));
        let cases = [
            (
                &other,
                &["localhost"][..],
                false,
                "localhost",
                tls::TlsFailure::UnknownIssuer,
            ),
            (
                &good,
                &["localhost"][..],
                false,
                "relay.example",
                tls::TlsFailure::WrongName,
            ),
            (
                &good,
                &["localhost"][..],
                true,
                "localhost",
                tls::TlsFailure::Expired,
            ),
        ];
        for (trusted, names, expired, sni, kind) in cases {
            let (listener, addr) = support::bind_local().await;
            let server = tokio::spawn(listen_once(listener, server(&good, names, expired, None)));
            let client = tls::client_config(Some(&trusted.ca_file()), None).unwrap();
            let tcp = TcpStream::connect(addr).await.unwrap();
            let err = tls::connect(tcp, sni, client).await.unwrap_err();
            let _ = server.await;
            let ptth::Error::Tls(tls_err) = &err else {
                panic!("{err:?}");
            };
            assert_eq!(tls_err.kind(), kind, "{err}");
            assert!(tls_err.rustls().is_some(), "{err}");
            assert!(std::error::Error::source(&err).is_some(), "{err}");
            assert!(!err.to_string().contains("--"), "{err}");
        }
        let (_listener, addr) = support::bind_local().await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client = tls::client_config(Some(&good.ca_file()), None).unwrap();
        let err = tls::connect(tcp, "not a name", client).await.unwrap_err();
        let ptth::Error::Tls(tls_err) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(tls_err.kind(), tls::TlsFailure::BadServerName);
    })
    .await
    .expect("deadline");
}

#[tokio::test]
async fn mutual_tls_identifies_the_dialer() {
    tokio::time::timeout(DEADLINE, async {
        let pki = Pki::new("good");
        let (agent_cert, agent_key) = pki.issue("agent", &["demo.agents.test"], false);
        let server_cfg = server(&pki, &["localhost"], false, Some(&pki.ca_file()));

        // With a client certificate: the listener sees it and can tie it to a name.
        let (listener, addr) = support::bind_local().await;
        let srv = tokio::spawn(listen_once(listener, server_cfg.clone()));
        let client =
            tls::client_config(Some(&pki.ca_file()), Some((&agent_cert, &agent_key))).unwrap();
        let dialer = tokio::spawn(dial(addr, "localhost", client));
        let (body, peer) = srv.await.unwrap().unwrap();
        assert_eq!(body, "hello over tls");
        let peer = peer.expect("client certificate presented");
        assert!(tls::certificate_matches_name(&peer, "demo.agents.test"));
        assert!(!tls::certificate_matches_name(&peer, "other.agents.test"));
        dialer.abort();

        // Without one: TLS still succeeds (public clients share the port), with no identity.
        let (listener, addr) = support::bind_local().await;
        let srv = tokio::spawn(listen_once(listener, server_cfg));
        let client = tls::client_config(Some(&pki.ca_file()), None).unwrap();
        let dialer = tokio::spawn(dial(addr, "localhost", client));
        let (_, peer) = srv.await.unwrap().unwrap();
        assert!(peer.is_none());
        dialer.abort();

        // A certificate from another CA is refused at the TLS level.
        let other = Pki::new("other");
        let (bad_cert, bad_key) = other.issue("intruder", &["demo.agents.test"], false);
        let (listener, addr) = support::bind_local().await;
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tls::accept(
                tcp,
                server(&pki, &["localhost"], false, Some(&pki.ca_file())),
            )
            .await
            .map(|_| ())
        });
        let client =
            tls::client_config(Some(&Pki::new("x").ca_file()), Some((&bad_cert, &bad_key)))
                .unwrap();
        let _ = dial(addr, "localhost", client).await;
        assert!(srv.await.unwrap().is_err());
    })
    .await
    .expect("deadline");
}

#[tokio::test]
async fn plaintext_client_on_tls_port_gets_a_clean_close() {
    tokio::time::timeout(DEADLINE, async {
        let pki = Pki::new("good");
        let cfg = server(&pki, &["localhost"], false, None);
        let (listener, addr) = support::bind_local().await;
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tls::accept(tcp, cfg).await.map(|_| ())
        });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST /demo HTTP/1.1\r\nHost: x\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let err = srv.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("does not speak TLS"), "{err}");
        // The server closed: the client reads EOF (or a reset), not a hang.
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf).await;
        assert!(!String::from_utf8_lossy(&buf).contains("101"));
    })
    .await
    .expect("deadline");
}

#[test]
fn config_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let pki = Pki::new("good");
    let (cert, _) = pki.issue("s", &["localhost"], false);
    let (_, other_key) = pki.issue("t", &["localhost"], false);
    // (case, certificate file, key file, the message says all of these)
    let cases: [(&str, &Path, &Path, &[&str]); 4] = [
        (
            "missing file",
            &missing,
            &missing,
            &["missing.pem", "cannot read"],
        ),
        ("not PEM", &junk, &junk, &["junk.pem", "no CERTIFICATE"]),
        ("no key in the key file", &cert, &cert, &["no PRIVATE KEY"]),
        ("key of another certificate", &cert, &other_key, &["s.pem"]),
    ];
    for (case, cert, key, says) in cases {
        let err = tls::server_config(cert, key, None).unwrap_err().to_string();
        for s in says {
            assert!(err.contains(s), "{case}: {err:?} does not say {s:?}");
        }
    }
}
