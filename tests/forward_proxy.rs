//! Agents behind a forward proxy (HTTP CONNECT): the exact CONNECT bytes and the tunnel's first
//! bytes against a hand-written proxy; then a real squid (started by each test, skipped with
//! the reason when squid is not installed) for `http://` and `https://` relays, with and
//! without proxy authentication, a wrong password (a `407`, and backoff, not a loop), a proxy
//! that is down, `NO_PROXY`, and `ptth-connect` reading curl's variables.

use support::pki;
use support::squid;
mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use pki::Pki;
use ptth::agent::ProxyError;
use ptth::agent::{AgentBuilder, AgentError, Backoff, NoProxy, ProxySettings, Transport};
use ptth::relay::Config;
use squid::Squid;
use support::{SWITCH_09, builder, deadline, spawn_proxy_agent, spawn_upstream};
use support::{TestRelay, get, start_relay, start_tls_relay};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the agent's failure hook saw: the message, and for a proxy's refusal its status and
/// the user whose credentials were sent.
#[derive(Debug)]
struct Failure {
    text: String,
    refused: Option<(StatusCode, Option<String>)>,
    proxy_down: bool,
}

/// An agent builder that reports every failure it counts.
fn reporting(b: AgentBuilder) -> (AgentBuilder, mpsc::UnboundedReceiver<Failure>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let b = b.on_failure(move |e| {
        let refused = match e {
            AgentError::Proxy(ProxyError::Refused { status, user, .. }) => {
                Some((*status, user.clone()))
            }
            _ => None,
        };
        let _ = tx.send(Failure {
            text: e.to_string(),
            refused,
            proxy_down: matches!(e, AgentError::Proxy(ProxyError::Connect { .. })),
        });
    });
    (b, rx)
}

fn via(url: &str) -> ProxySettings {
    ProxySettings::from_url(url).unwrap()
}

/// A TCP hop in front of a proxy that records the first line of every connection (the CONNECT
/// request line), then pipes both ways: it shows which connections went through the proxy.
struct Hop {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Hop {
    async fn start(to: SocketAddr) -> Hop {
        let (l, addr) = support::bind_local().await;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        tokio::spawn(async move {
            loop {
                let (mut client, _) = l.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut line = Vec::new();
                    while !line.ends_with(b"\r\n") {
                        let mut b = [0u8; 1];
                        if client.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        line.push(b[0]);
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&line).trim().to_string());
                    let mut proxy = TcpStream::connect(to).await.unwrap();
                    proxy.write_all(&line).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut proxy).await;
                });
            }
        });
        Hop { addr, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// Every connection through `hop` was a CONNECT to `target` (the relay): the upstream, which
/// the request was forwarded to, was dialled directly. The pool keeps an idle connection while
/// one serves, so there may be more than one.
fn assert_only_connects(hop: &Hop, target: &str) {
    let lines = hop.lines();
    assert!(!lines.is_empty());
    for line in lines {
        assert_eq!(line, format!("CONNECT {target} HTTP/1.1"));
    }
}

/// A relay on 127.0.0.1:0 with TLS only, its certificate for `localhost` from `pki`.
async fn tls_relay(pki: &Pki) -> TestRelay {
    let (cert, key) = pki.issue("relay", &["localhost"], false);
    start_tls_relay(Config {
        tls: Some(ptth::tls::server_config(&cert, &key, None).unwrap()),
        ..Config::default()
    })
    .await
}

/// GET `path` from the TLS relay at `addr`, as a public client that trusts `pki`.
async fn https_get(addr: SocketAddr, path: &str, pki: &Pki) -> (u16, String) {
    let client = ptth::tls::client_config(Some(&pki.ca_file()), None).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = ptth::tls::connect(tcp, "localhost", client).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", format!("localhost:{}", addr.port()))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A port with nothing listening on it (bound, then let go).
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The CONNECT bytes exactly (authority-form target naming the relay's host, which the agent
/// does not resolve itself; `Host`; `Proxy-Authorization` with the percent-decoded password),
/// and the `101` the proxy sends right behind its `200`, before the agent has even sent its
/// upgrade request: those bytes belong to the tunnel and must reach the handshake.
#[tokio::test]
async fn connect_bytes_are_exact_and_bytes_after_the_200_are_the_tunnels() {
    deadline(async {
        let (up, mut arrivals, _release) = spawn_upstream().await;
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = proxy.local_addr().unwrap().port();
        let b = ptth::agent::Agent::builder("http://relay.example:4321/demo")
            .connections(1)
            .max_connections(1)
            .proxy(via(&format!("http://alice:s%3Acret%20x@127.0.0.1:{port}")));
        let agent = spawn_proxy_agent(b, up);

        let (mut tcp, _) = proxy.accept().await.unwrap();
        let connect = support::read_head(&mut tcp).await;
        assert_eq!(
            connect,
            format!(
                "CONNECT relay.example:4321 HTTP/1.1\r\nHost: relay.example:4321\r\n\
                 User-Agent: {}\r\nProxy-Authorization: Basic YWxpY2U6czpjcmV0IHg=\r\n\r\n",
                ptth::agent::USER_AGENT
            )
        );
        // "alice:s:cret x"; then the 200 and the 101 in one write.
        let mut answer = b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec();
        answer.extend_from_slice(SWITCH_09);
        tcp.write_all(&answer).await.unwrap();
        let offer = support::read_head(&mut tcp).await;
        assert!(
            offer.starts_with("POST /demo HTTP/1.1\r\nHost: relay.example:4321\r\n"),
            "{offer}"
        );

        // The tunnel now carries reversed HTTP: this side asks, the agent answers from its
        // upstream, which it reached directly (the proxy saw one connection only).
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/hello")
            .header("host", "")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("GET /hello host={up}").as_bytes());
        assert_eq!(arrivals.recv().await.unwrap(), "/hello");
        drop(agent);
    })
    .await;
}

/// The proxy is down: a typed error naming the proxy (not the relay), retried with backoff.
#[tokio::test]
async fn a_proxy_that_is_down_is_a_clear_error() {
    deadline(async {
        let relay = start_relay(support::anonymous()).await;
        let port = dead_port();
        let (b, mut failures) = reporting(
            builder(relay.addr, "demo")
                .connections(1)
                .proxy(via(&format!("http://127.0.0.1:{port}"))),
        );
        let _agent = spawn_proxy_agent(b, "127.0.0.1:9".parse().unwrap());
        for _ in 0..2 {
            let f = failures.recv().await.unwrap();
            assert!(f.proxy_down, "{f:?}");
            assert!(
                f.text
                    .contains(&format!("connecting to the proxy http://127.0.0.1:{port}")),
                "{}",
                f.text
            );
        }
    })
    .await;
}

/// `NO_PROXY` semantics: a relay host on the list is dialled directly (the proxy here is
/// down, so only a direct dial parks); a host not on it goes to the proxy.
#[tokio::test]
async fn a_no_proxy_match_bypasses_the_proxy() {
    deadline(async {
        let (relay, up) = relay_and_upstream().await;
        let down = via(&format!("http://127.0.0.1:{}", dead_port()));
        let b = builder(relay.addr, "demo").connections(1).proxy(
            down.clone()
                .no_proxy(NoProxy::parse("example.com, 127.0.0.0/8")),
        );
        let _agent = serves(&relay, b, 1, up, "/x").await;

        let (b, mut failures) = reporting(
            builder(relay.addr, "other")
                .connections(1)
                .proxy(down.no_proxy(NoProxy::parse("127.0.0.2"))),
        );
        let _other = spawn_proxy_agent(b, up);
        assert!(failures.recv().await.unwrap().proxy_down);
    })
    .await;
}

/// An anonymous relay, and an upstream (the test upstream's echo) for its agents.
async fn relay_and_upstream() -> (TestRelay, SocketAddr) {
    let relay = start_relay(support::anonymous()).await;
    let (up, _arrivals, _release) = spawn_upstream().await;
    (relay, up)
}

/// A proxy agent from `b` to `up`, once its `n` connections are parked for `demo` at `relay`
/// and it has answered `/demo{path}` with the upstream's echo.
async fn serves(
    relay: &TestRelay,
    b: AgentBuilder,
    n: usize,
    up: SocketAddr,
    path: &str,
) -> support::RunningAgent {
    let agent = spawn_proxy_agent(b, up);
    relay.handle.wait_idle("demo", n).await;
    let (status, _, body) = get(relay.addr, &format!("/demo{path}"), None).await;
    assert_eq!((status, body), (200, format!("GET {path} host={up}")));
    agent
}

/// The agent through a real squid to an `http://` relay: the tunnel carries plain HTTP, and
/// the only connections through the proxy are CONNECTs to the relay (the upstream is dialled
/// directly).
#[tokio::test]
async fn an_http_relay_through_squid() {
    let Some(bin) = squid::or_skip(false) else {
        return;
    };
    deadline(async {
        let (relay, up) = relay_and_upstream().await;
        let squid = Squid::start(&bin, &[relay.addr.port()], &[]);
        let hop = Hop::start(squid.addr).await;
        let b = builder(relay.addr, "demo")
            .connections(2)
            .proxy(via(&format!("http://{}", hop.addr)));
        let _agent = serves(&relay, b, 2, up, "/through").await;
        assert_only_connects(&hop, &relay.addr.to_string());
    })
    .await;
}

/// The agent through a real squid to an `https://` relay: TLS to the relay inside the tunnel,
/// the certificate checked for the relay's name, which squid resolves.
#[tokio::test]
async fn an_https_relay_through_squid() {
    let Some(bin) = squid::or_skip(false) else {
        return;
    };
    deadline(async {
        let pki = Pki::new("relay");
        let relay = tls_relay(&pki).await;
        let (handle, addr) = (relay.handle.clone(), relay.addr);
        let (up, _arrivals, _release) = spawn_upstream().await;
        let squid = Squid::start(&bin, &[addr.port()], &[]);
        let hop = Hop::start(squid.addr).await;
        let trust = ptth::tls::client_config(Some(&pki.ca_file()), None).unwrap();
        let b = ptth::agent::Agent::builder(format!("https://localhost:{}/demo", addr.port()))
            .backoff(support::fast_backoff())
            .transport(Transport::Tls(trust))
            .connections(1)
            .proxy(via(&format!("http://{}", hop.addr)));
        let _agent = spawn_proxy_agent(b, up);
        handle.wait_idle("demo", 1).await;
        let (status, body) = https_get(addr, "/demo/secure", &pki).await;
        assert_eq!((status, body), (200, format!("GET /secure host={up}")));
        assert_only_connects(&hop, &format!("localhost:{}", addr.port()));
    })
    .await;
}

/// A squid that wants credentials takes the right ones, percent-decoded (the password has a
/// `:`, a space and an `@`).
#[tokio::test]
async fn squid_with_auth_takes_the_right_password() {
    let Some(bin) = squid::or_skip(true) else {
        return;
    };
    deadline(async {
        let (relay, up) = relay_and_upstream().await;
        let squid = Squid::start(&bin, &[relay.addr.port()], &[("alice", "s:cret p@ss")]);
        let b = builder(relay.addr, "demo")
            .connections(1)
            .proxy(via(&format!(
                "http://alice:s%3Acret%20p%40ss@{}",
                squid.addr
            )));
        let _agent = serves(&relay, b, 1, up, "/authed").await;
    })
    .await;
}

/// A wrong password is a `407` that names the proxy and says credentials were sent, and the
/// agent backs off (a handful of CONNECTs, spaced by the backoff, not a loop); without
/// credentials the error says none were sent and what the proxy asks for.
#[tokio::test]
async fn a_wrong_password_is_a_407_and_the_agent_backs_off() {
    let Some(bin) = squid::or_skip(true) else {
        return;
    };
    deadline(async {
        let relay = start_relay(support::anonymous()).await;
        let squid = Squid::start(&bin, &[relay.addr.port()], &[("alice", "right")]);
        let hop = Hop::start(squid.addr).await;
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            ..Backoff::default()
        };
        let (b, mut failures) = reporting(
            builder(relay.addr, "demo")
                .backoff(backoff)
                .connections(2)
                .proxy(via(&format!("http://alice:wrong@{}", hop.addr))),
        );
        let agent = spawn_proxy_agent(b, "127.0.0.1:9".parse().unwrap());
        let mut first = None;
        for _ in 0..3 {
            let f = failures.recv().await.unwrap();
            first.get_or_insert_with(Instant::now);
            assert_eq!(
                f.refused,
                Some((
                    StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                    Some("alice".into())
                )),
                "{f:?}"
            );
            assert!(
                f.text
                    .contains(&format!("the proxy http://alice@{}", hop.addr))
                    && f.text
                        .contains("rejected the credentials sent for user \"alice\""),
                "{}",
                f.text
            );
        }
        let spread = first.unwrap().elapsed();
        let connects = hop.lines().len();
        drop(agent);
        // Two dials at start (one failure for both), then one probe per backoff step: three
        // failures cost four CONNECTs, five if the next probe is already out. The waits after
        // the first two failures are at least half their steps (50 ms + 100 ms).
        assert!((4..=5).contains(&connects), "{connects} CONNECTs");
        assert!(spread >= Duration::from_millis(150), "{spread:?}");
        let log = squid
            .wait_log(|log| log.matches("TCP_DENIED/407").count() >= 3)
            .await;
        assert!(
            log.contains(&format!("CONNECT {} alice", relay.addr)),
            "{log}"
        );

        let (b, mut failures) = reporting(
            builder(relay.addr, "anonymous")
                .connections(1)
                .proxy(via(&format!("http://{}", squid.addr))),
        );
        let _agent = spawn_proxy_agent(b, "127.0.0.1:9".parse().unwrap());
        let f = failures.recv().await.unwrap();
        assert_eq!(
            f.refused,
            Some((StatusCode::PROXY_AUTHENTICATION_REQUIRED, None))
        );
        assert!(
            f.text
                .contains("(no credentials were sent; it asks for Basic realm=\"ptth-test\")"),
            "{}",
            f.text
        );
    })
    .await;
}

/// The proxy variables every `ptth-connect` child starts without, so that the test's own
/// environment does not leak in.
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// `ptth-connect` for `relay_url`, forwarding to `up`, with `env` set and every other proxy
/// variable removed; its stderr is piped.
fn ptth_connect(
    relay_url: &str,
    up: SocketAddr,
    args: &[&str],
    env: &[(&str, String)],
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ptth-connect"));
    cmd.arg(relay_url)
        .args(["--to", &format!("http://{up}"), "--connections", "1"])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("PTTH_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// The next stderr line of `child` that contains `want` (panics with what it saw if the
/// stream ends first).
async fn line_with(lines: &mut (impl AsyncBufReadExt + Unpin), want: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line).await.unwrap() == 0 {
            panic!("no line with {want:?} in:\n{seen}");
        }
        if line.contains(want) {
            return line;
        }
        seen.push_str(&line);
    }
}

/// `ptth-connect` reads `http_proxy` for an `http://` relay: it parks through squid (the hop
/// sees its CONNECT) and serves.
#[tokio::test]
async fn ptth_connect_reads_http_proxy_from_the_environment() {
    let Some(bin) = squid::or_skip(false) else {
        return;
    };
    deadline(async {
        let (relay, up) = relay_and_upstream().await;
        let squid = Squid::start(&bin, &[relay.addr.port()], &[]);
        let hop = Hop::start(squid.addr).await;
        let mut agent = ptth_connect(
            &format!("http://{}/demo", relay.addr),
            up,
            &[],
            &[("http_proxy", format!("http://{}", hop.addr))],
        );
        let mut err = BufReader::new(agent.stderr.take().unwrap());
        let line = line_with(&mut err, "forward proxy").await;
        assert!(line.contains("(from http_proxy)"), "{line}");
        relay.handle.wait_idle("demo", 1).await;
        let (status, _, body) = get(relay.addr, "/demo/env", None).await;
        assert_eq!((status, body), (200, format!("GET /env host={up}")));
        assert_only_connects(&hop, &relay.addr.to_string());
    })
    .await;
}

/// `ptth-connect` ignores an upper-case `HTTP_PROXY` for an `http://` relay, as curl does
/// (and says so), and dials a `NO_PROXY` host directly: both agents park although the proxy
/// they name is down.
#[tokio::test]
async fn ptth_connect_ignores_upper_case_http_proxy_and_honours_no_proxy() {
    deadline(async {
        let (relay, up) = relay_and_upstream().await;
        let down = format!("http://127.0.0.1:{}", dead_port());
        let mut upper = ptth_connect(
            &format!("http://{}/upper", relay.addr),
            up,
            &[],
            &[("HTTP_PROXY", down.clone())],
        );
        let mut err = BufReader::new(upper.stderr.take().unwrap());
        line_with(&mut err, "HTTP_PROXY is ignored").await;
        relay.handle.wait_idle("upper", 1).await;
        let _bypass = ptth_connect(
            &format!("http://{}/bypass", relay.addr),
            up,
            &[],
            &[
                ("http_proxy", down),
                ("NO_PROXY", "localhost,127.0.0.1".into()),
            ],
        );
        relay.handle.wait_idle("bypass", 1).await;
    })
    .await;
}

/// A proxy that answers `407`: `ptth-connect`'s log line names the proxy and says no
/// credentials were sent, its hint says where they go, and it keeps running (backoff).
#[tokio::test]
async fn ptth_connect_names_the_proxy_and_hints_on_a_407() {
    deadline(async {
        let (proxy, addr) = support::bind_local().await;
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = proxy.accept().await.unwrap();
                support::read_head(&mut tcp).await;
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                          Proxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n",
                    )
                    .await;
            }
        });
        let mut agent = ptth_connect(
            "https://relay.example/demo",
            "127.0.0.1:9".parse().unwrap(),
            &["--proxy", &format!("http://{addr}")],
            &[],
        );
        let mut err = BufReader::new(agent.stderr.take().unwrap());
        let line = line_with(&mut err, "407 Proxy Authentication Required").await;
        assert!(
            line.contains(&format!(
                "the proxy http://{addr} refused a tunnel to relay.example:443"
            )) && line.contains("no credentials were sent; it asks for Basic realm=\"corp\""),
            "{line}"
        );
        let hint = line_with(&mut err, "hint:").await;
        assert!(hint.contains("http://USER:PASSWORD@HOST:PORT"), "{hint}");
        line_with(&mut err, "407 Proxy Authentication Required").await;
        assert!(agent.try_wait().unwrap().is_none(), "the agent stopped");
    })
    .await;
}
