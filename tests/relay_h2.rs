//! The relay serving public requests over agents' HTTP/2 transposed connections (`Upgrade:
//! ptth` with `ALPN: h2`, draft-kazuho-ptth-ptth; decisions D81–D86).
//!
//! Two agents: the real `ptth-connect --protocol ptth` through the real `ptth-serve` (64
//! requests at once over its two connections, a large body each way, the metrics), and a
//! third-party HTTP/2 backend, the Python `h2` package (tests/h2/backend.py), dialing the
//! library relay (a stream reset mid-body, several origins and their tokens, the drain's
//! GOAWAY, an upgrade refused with its reason). A test that needs Python `h2` skips with the
//! reason when it is missing. Nothing waits on a clock: every step waits for what a peer
//! printed or for the relay's own counts, under the one deadline.

mod support;

use std::convert::Infallible;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use ptth::relay::{Config, Tokens};
use serde_json::Value;
use support::bins;
use support::{TestBody, TestRelay, deadline, full, send, start_relay};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::Notify;

/// Public requests at once.
const MANY: usize = 64;
/// The large body, each way.
const LARGE: usize = 8 * 1024 * 1024;

fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// `GET path` on a fresh public connection with `Host: host`: (status, body or the error that
/// cut it short).
async fn get(addr: std::net::SocketAddr, host: &str, path: &str) -> (u16, Result<Bytes, String>) {
    let req = Request::get(path)
        .header("host", host)
        .body(empty())
        .unwrap();
    let res = send(addr, req).await;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await;
    (
        status,
        body.map(|b| b.to_bytes()).map_err(|e| e.to_string()),
    )
}

/// The upstream behind `ptth-connect`: `/together` answers once [`MANY`] are open at once,
/// `/echo` the body back, `/large` [`LARGE`] bytes, `/ws` a WebSocket upgrade that echoes the
/// bytes.
async fn upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let arrived = Arc::new(AtomicUsize::new(0));
    let all_here = Arc::new(Notify::new());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let (arrived, all_here) = (arrived.clone(), all_here.clone());
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (arrived, all_here) = (arrived.clone(), all_here.clone());
                async move {
                    if req.uri().path() == "/ws" {
                        return Ok::<_, Infallible>(echo_upgrade(req));
                    }
                    let body: Full<Bytes> = match req.uri().path() {
                        "/together" => {
                            let here = all_here.notified();
                            if arrived.fetch_add(1, Ordering::AcqRel) + 1 >= MANY {
                                all_here.notify_waiters();
                            } else {
                                here.await;
                            }
                            Full::from("together")
                        }
                        "/echo" => Full::new(req.into_body().collect().await.unwrap().to_bytes()),
                        "/large" => Full::from(vec![b'L'; LARGE]),
                        p => Full::from(format!("{p} from upstream")),
                    };
                    Ok::<_, Infallible>(Response::new(body))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .with_upgrades(),
            );
        }
    });
    format!("http://{addr}")
}

/// `101` to a WebSocket upgrade (no frames are parsed: the bytes come back as they are).
fn echo_upgrade(req: Request<Incoming>) -> Response<Full<Bytes>> {
    tokio::spawn(async move {
        let upgraded = hyper::upgrade::on(req).await.unwrap();
        let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let mut res = Response::new(Full::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert("upgrade", http::HeaderValue::from_static("websocket"));
    h.insert("connection", http::HeaderValue::from_static("upgrade"));
    res
}

/// `ptth-serve` with an admin listener and `ptth-connect --protocol ptth` for `/app` in front of
/// [`upstream`], once both of the agent's HTTP/2 connections are counted: (relay, agent,
/// public address, admin address).
async fn relay_and_agent() -> (Child, Child, std::net::SocketAddr, std::net::SocketAddr) {
    let (relay, text, _out, addr) = bins::serve_ready(
        &["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        "admin:",
    )
    .await;
    let admin: std::net::SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("admin:   http://"))
        .and_then(|l| l.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let to = upstream().await;
    let agent = Command::new(env!("CARGO_BIN_EXE_ptth-connect"))
        .args([&format!("http://{addr}/app"), "--to", &to])
        .args([
            "--protocol",
            "ptth",
            "--proxy",
            "",
            "--upstream-connections",
            "64",
        ])
        .env_remove("PTTH_TOKEN")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    while metric(admin, H2_CONNECTIONS).await != Some(2.0) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (relay, agent, addr, admin)
}

/// The metric series of HTTP/2 agent connections.
const H2_CONNECTIONS: &str = "ptth_agent_connections_by_protocol{protocol=\"h2\"}";

/// One line of the admin's `/metrics` that starts with `series`, its value.
async fn metric(admin: std::net::SocketAddr, series: &str) -> Option<f64> {
    let raw = bins::get(admin, &admin.to_string(), "/metrics").await;
    raw.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// `ptth-connect --protocol ptth` through `ptth-serve`: 64 public requests served at once over
/// the agent's two HTTP/2 connections (the upstream answers only when all 64 are there), then a
/// large body each way; the metrics count the connections as `h2`.
#[tokio::test]
async fn ptth_connect_serves_64_at_once_over_two_connections() {
    deadline(async {
        let (mut relay, mut agent, addr, admin) = relay_and_agent().await;
        let host = addr.to_string();
        let requests = (0..MANY).map(|_| {
            let host = host.clone();
            tokio::spawn(async move { get(addr, &host, "/app/together").await })
        });
        for r in futures_join(requests).await {
            let (status, body) = r;
            assert_eq!(status, 200);
            assert_eq!(body.unwrap(), "together");
        }
        assert_eq!(metric(admin, H2_CONNECTIONS).await, Some(2.0));
        assert_eq!(metric(admin, "ptth_agent_connections ").await, Some(2.0));
        // A large body up and a large body down.
        let up = vec![b'U'; LARGE];
        let req = Request::post("/app/echo")
            .header("host", &host)
            .body(full(up.clone()))
            .unwrap();
        let res = send(addr, req).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.into_body().collect().await.unwrap().to_bytes() == up);
        let (status, body) = get(addr, &host, "/app/large").await;
        assert_eq!(status, 200);
        assert_eq!(body.unwrap().len(), LARGE);
        // Nothing is left open.
        assert_eq!(
            metric(admin, "ptth_h2_streams_open{name=\"app\"}").await,
            Some(0.0)
        );
        agent.kill().await.unwrap();
        relay.kill().await.unwrap();
    })
    .await;
}

/// A public WebSocket upgrade to an agent with only HTTP/2 connections goes over RFC 8441
/// extended CONNECT (`ptth-connect` advertises `SETTINGS_ENABLE_CONNECT_PROTOCOL`): the relay
/// answers `101` with the `Sec-WebSocket-Accept` of the client's key, and bytes go both ways.
#[tokio::test]
async fn a_websocket_goes_over_extended_connect() {
    use tokio::io::AsyncReadExt;
    deadline(async {
        let (mut relay, mut agent, addr, admin) = relay_and_agent().await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            format!(
                "GET /app/ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let head = support::read_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        assert!(lower.contains("upgrade: websocket"), "{head}");
        assert_eq!(
            metric(admin, "ptth_h2_streams_open{name=\"app\"}").await,
            Some(1.0)
        );
        for msg in [&b"first frame"[..], &[0x81, 0x02, b'h', b'i'][..]] {
            tcp.write_all(msg).await.unwrap();
            let mut back = vec![0; msg.len()];
            tcp.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }
        drop(tcp);
        while metric(admin, "ptth_h2_streams_open{name=\"app\"}").await != Some(0.0) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        agent.kill().await.unwrap();
        relay.kill().await.unwrap();
    })
    .await;
}

/// Wait for every task.
async fn futures_join<T: Send + 'static>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        out.push(t.await.unwrap());
    }
    out
}

/// tests/h2/backend.py dialing `relay` with `target` (and a token): its stdin (a line releases
/// `/hold`) and its JSON lines.
struct Backend {
    child: Child,
    out: Lines<BufReader<ChildStdout>>,
}

impl Backend {
    fn dial(relay: &TestRelay, together: usize, target: &str, token: Option<&str>) -> Backend {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2");
        let mut child = Command::new("python3")
            .arg(format!("{dir}/backend.py"))
            .args([
                relay.addr.port().to_string(),
                together.to_string(),
                LARGE.to_string(),
                target.to_string(),
            ])
            .args(token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        Backend { child, out }
    }

    /// The next JSON line; panics when the backend ends first.
    async fn line(&mut self) -> Value {
        let line = self.out.next_line().await.unwrap();
        let line = line.expect("the backend ended without another line");
        serde_json::from_str(&line).unwrap()
    }

    /// Let the held requests go.
    async fn release(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"release\n").await.unwrap();
        stdin.flush().await.unwrap();
    }
}

/// The well-known target registering `names` under the relay's domain (`localhost`).
fn well_known(names: &[&str], port: u16) -> String {
    let origins: Vec<String> = names
        .iter()
        .map(|n| format!("http%3A%2F%2F{n}.localhost%3A{port}"))
        .collect();
    format!("/.well-known/ptth/{}/", origins.join(","))
}

/// Wait until `name` has `n` HTTP/2 connections at the relay.
async fn wait_h2(relay: &TestRelay, name: &str, n: usize) {
    relay
        .handle
        .wait_until(|h| {
            h.stats()
                .iter()
                .any(|s| s.name == name && s.h2_connections == n)
        })
        .await;
}

/// The third-party backend serves public requests: many at once on its one connection, large
/// bodies each way, a public client that reads nothing stalls only its own stream, and a
/// stream the backend resets mid-body fails that request only, while the others on the same
/// connection complete. The relay's drain ends the connection with GOAWAY
/// (NO_ERROR).
#[tokio::test]
async fn python_backend_serves_the_public_and_a_reset_fails_only_its_request() {
    if let Err(why) = support::python_h2() {
        println!(
            "SKIPPED python_backend_serves_the_public_and_a_reset_fails_only_its_request: {why}"
        );
        return;
    }
    deadline(async {
        let mut relay = start_relay(Config::default()).await;
        let port = relay.addr.port();
        let mut backend = Backend::dial(&relay, 8, &well_known(&["py"], port), None);
        assert_eq!(backend.line().await["switched"], true);
        wait_h2(&relay, "py", 1).await;
        let addr = relay.addr;
        let host = format!("py.localhost:{port}");
        // A public client that asks for the large body and reads none of it: its stream's
        // window fills, and everything below still moves on the same connection.
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        let ask = format!("GET /large HTTP/1.1\r\nHost: {host}\r\n\r\n");
        stalled.write_all(ask.as_bytes()).await.unwrap();
        relay
            .handle
            .wait_until(|h| h.stats().iter().any(|s| s.h2_streams == 1))
            .await;
        // Eight that the backend answers only together, and one it resets, all at once.
        let reset = {
            let host = host.clone();
            tokio::spawn(async move { get(addr, &host, "/reset").await })
        };
        let together: Vec<_> = (0..8)
            .map(|_| {
                let host = host.clone();
                tokio::spawn(async move { get(addr, &host, "/together").await })
            })
            .collect();
        // The reset may reach the relay before or after the response head: a 502, or a body
        // cut short.
        let (status, body) = reset.await.unwrap();
        assert!(
            status == 502 || (status == 200 && body.is_err()),
            "a reset stream must fail: {status} {body:?}"
        );
        for (status, body) in futures_join(together.into_iter()).await {
            assert_eq!(status, 200);
            assert_eq!(body.unwrap(), "together");
        }
        // Large bodies each way, on the same connection; path mode (`/py`) works too.
        let up = vec![b'U'; LARGE];
        let req = Request::post("/py/echo")
            .header("host", addr.to_string())
            .body(full(up.clone()))
            .unwrap();
        let res = send(addr, req).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.into_body().collect().await.unwrap().to_bytes() == up);
        let (status, body) = get(addr, &host, "/large").await;
        assert_eq!(status, 200);
        assert_eq!(body.unwrap().len(), LARGE);
        // The stalled client goes; its stream is reset and nothing stays open. The agent's
        // connection is still the one.
        drop(stalled);
        relay
            .handle
            .wait_until(|h| h.stats()[0].h2_streams == 0)
            .await;
        assert_eq!(relay.handle.stats()[0].h2_connections, 1);
        // This backend does not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL, and has no HTTP/1.1
        // connection: an upgrade is 502 with the reason.
        let raw = support::raw_exchange(
            addr,
            format!(
                "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: upgrade, close\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(support::status_of(&raw), 502, "{raw}");
        assert!(raw.contains("extended CONNECT"), "{raw}");
        relay.shutdown();
        let summary = backend.line().await;
        assert_eq!(summary["goaway"], 0, "{summary}");
        assert_eq!(summary["requests"], 12, "{summary}");
        relay.task.await.unwrap();
    })
    .await;
}

/// The drain: a request open on the backend's stream when the relay is told to stop is
/// answered in full; only then does the relay send GOAWAY and close.
#[tokio::test]
async fn the_drain_lets_an_open_stream_finish_then_sends_goaway() {
    if let Err(why) = support::python_h2() {
        println!("SKIPPED the_drain_lets_an_open_stream_finish_then_sends_goaway: {why}");
        return;
    }
    deadline(async {
        let mut relay = start_relay(Config::default()).await;
        let port = relay.addr.port();
        let mut backend = Backend::dial(&relay, 2, &well_known(&["py"], port), None);
        assert_eq!(backend.line().await["switched"], true);
        wait_h2(&relay, "py", 1).await;
        let addr = relay.addr;
        let held = tokio::spawn(async move { get(addr, "py.localhost", "/hold").await });
        assert_eq!(backend.line().await["held"], 1);
        relay.shutdown();
        // The drain has begun when the listener is gone.
        relay
            .handle
            .wait_until(|h| h.stats().iter().all(|s| s.h2_connections == 0))
            .await;
        backend.release().await;
        let (status, body) = held.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.unwrap(), "held, then answered");
        let summary = backend.line().await;
        assert_eq!(summary["goaway"], 0, "{summary}");
        relay.task.await.unwrap();
    })
    .await;
}

/// An agent's GOAWAY retires its connection: the request it answered completes, the relay
/// lets the connection go, and later requests go to the name's other connection.
#[tokio::test]
async fn an_agents_goaway_retires_its_connection() {
    if let Err(why) = support::python_h2() {
        println!("SKIPPED an_agents_goaway_retires_its_connection: {why}");
        return;
    }
    deadline(async {
        let mut relay = start_relay(Config::default()).await;
        let port = relay.addr.port();
        let target = well_known(&["py"], port);
        let mut first = Backend::dial(&relay, 1, &target, None);
        assert_eq!(first.line().await["switched"], true);
        wait_h2(&relay, "py", 1).await;
        let mut second = Backend::dial(&relay, 1, &target, None);
        assert_eq!(second.line().await["switched"], true);
        wait_h2(&relay, "py", 2).await;
        // Both are idle, so the first connection (the first of the least busy) takes it.
        let (status, body) = get(relay.addr, "py.localhost", "/goaway").await;
        assert_eq!(status, 200);
        assert_eq!(body.unwrap(), "going away");
        wait_h2(&relay, "py", 1).await;
        let summary = first.line().await;
        assert_eq!(summary["requests"], 1, "{summary}");
        for _ in 0..8 {
            let (status, body) = get(relay.addr, "py.localhost", "/after").await;
            assert_eq!(status, 200);
            assert_eq!(body.unwrap(), "/after from python");
        }
        relay.shutdown();
        let summary = second.line().await;
        assert_eq!(
            (summary["requests"].as_u64(), summary["goaway"].as_u64()),
            (Some(8), Some(0))
        );
        relay.task.await.unwrap();
    })
    .await;
}

/// PING finds a dead agent: a backend that stops answering (the process is stopped, its socket
/// stays open) loses its connection within the keepalive deadline, and the name has none.
#[tokio::test]
async fn ping_finds_an_agent_that_stopped_answering() {
    if let Err(why) = support::python_h2() {
        println!("SKIPPED ping_finds_an_agent_that_stopped_answering: {why}");
        return;
    }
    deadline(async {
        let mut cfg = Config::default();
        cfg.listener.limits.h2.keep_alive_interval = Some(std::time::Duration::from_millis(200));
        cfg.listener.limits.h2.keep_alive_timeout = std::time::Duration::from_millis(500);
        let mut relay = start_relay(cfg).await;
        let port = relay.addr.port();
        let mut backend = Backend::dial(&relay, 1, &well_known(&["py"], port), None);
        assert_eq!(backend.line().await["switched"], true);
        wait_h2(&relay, "py", 1).await;
        let (status, _) = get(relay.addr, "py.localhost", "/x").await;
        assert_eq!(status, 200);
        let pid = backend.child.id().unwrap().to_string();
        let stop = Command::new("kill").args(["-STOP", &pid]).status().await;
        assert!(stop.unwrap().success());
        relay
            .handle
            .wait_until(|h| h.stats().iter().all(|s| s.h2_connections == 0))
            .await;
        assert_eq!(relay.handle.agents(), 0);
        let _ = Command::new("kill").args(["-CONT", &pid]).status().await;
        backend.child.kill().await.unwrap();
        relay.shutdown();
        relay.task.await.unwrap();
    })
    .await;
}

/// `ptth` with only `http/1.1` offered inside: the relay answers `101` with `ALPN: http%2F1.1`
/// and the connection is a 2009 one (parked, one reversed HTTP/1.1 exchange at a time).
#[tokio::test]
async fn ptth_with_http11_inside_is_parked_the_2009_way() {
    deadline(async {
        let mut relay = start_relay(Config::default()).await;
        let addr = relay.addr;
        let mut agent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let offer = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: upgrade\r\nUpgrade: ptth\r\n\
             ALPN: http%2F1.1\r\n\r\n",
            well_known(&["old"], addr.port())
        );
        agent.write_all(offer.as_bytes()).await.unwrap();
        let head = support::read_head(&mut agent).await.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("alpn: http%2f1.1"), "{head}");
        relay.handle.wait_idle("old", 1).await;
        assert_eq!(relay.handle.stats()[0].h2_connections, 0);
        let public = tokio::spawn(async move { get(addr, "old.localhost", "/x").await });
        let req = support::read_head(&mut agent).await;
        assert!(req.starts_with("GET /x HTTP/1.1"), "{req}");
        agent
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        let (status, body) = public.await.unwrap();
        assert_eq!((status, body.unwrap()), (200, Bytes::from("ok")));
        relay.handle.wait_idle("old", 1).await;
        relay.shutdown();
        relay.task.await.unwrap();
    })
    .await;
}

/// An agent that answers the relay's HTTP/2 preface with a client preface of its own (the
/// wrong side): the relay's connection fails and is closed, nothing stays registered, and a
/// public request for the name is `503` (reconnecting, then offline), not a hang.
#[tokio::test]
async fn a_client_preface_from_the_agent_ends_its_connection() {
    use tokio::io::AsyncReadExt;
    deadline(async {
        let cfg = Config {
            reconnect_window: std::time::Duration::ZERO,
            ..Config::default()
        };
        let mut relay = start_relay(cfg).await;
        let addr = relay.addr;
        let mut agent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let offer = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: upgrade\r\nUpgrade: ptth\r\n\
             ALPN: h2\r\n\r\n",
            well_known(&["wrong"], addr.port())
        );
        agent.write_all(offer.as_bytes()).await.unwrap();
        let head = support::read_head(&mut agent).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        agent
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        // The relay reads the preface as a broken frame and closes (after a GOAWAY, perhaps).
        let mut rest = Vec::new();
        let _ = agent.read_to_end(&mut rest).await;
        relay.handle.wait_until(|h| h.agents() == 0).await;
        let (status, _) = get(addr, "wrong.localhost", "/").await;
        assert_eq!(status, 503);
        relay.shutdown();
        relay.task.await.unwrap();
    })
    .await;
}

/// A backend registering several origins is checked for every one: a token for one of them
/// only is refused (`403`, naming the other) and nothing is registered; a token for all serves
/// every name over the one connection. An origin outside the relay's domain is refused too.
#[tokio::test]
async fn every_origin_is_authorised_and_each_becomes_a_name() {
    if let Err(why) = support::python_h2() {
        println!("SKIPPED every_origin_is_authorised_and_each_becomes_a_name: {why}");
        return;
    }
    deadline(async {
        let cfg = Config {
            tokens: Some(Tokens::parse("alpha ta\n* master\n").unwrap()),
            ..Config::default()
        };
        let mut relay = start_relay(cfg).await;
        let port = relay.addr.port();
        let both = well_known(&["alpha", "beta"], port);
        let mut refused = Backend::dial(&relay, 1, &both, Some("ta"));
        let line = refused.line().await;
        assert_eq!(line["refused"], 403, "{line}");
        assert!(line["body"].as_str().unwrap().contains("beta"), "{line}");
        assert!(relay.handle.stats().is_empty());
        assert_eq!(relay.handle.agents(), 0);
        let foreign = "/.well-known/ptth/http%3A%2F%2Fexample.com/";
        let mut refused = Backend::dial(&relay, 1, foreign, Some("master"));
        let line = refused.line().await;
        assert_eq!(line["refused"], 403, "{line}");
        assert!(
            line["body"].as_str().unwrap().contains("not served"),
            "{line}"
        );

        let others = well_known(&["beta", "gamma"], port);
        let mut backend = Backend::dial(&relay, 1, &others, Some("master"));
        let line = backend.line().await;
        assert_eq!(line["switched"], true, "{line}");
        wait_h2(&relay, "beta", 1).await;
        wait_h2(&relay, "gamma", 1).await;
        for name in ["beta", "gamma"] {
            let (status, body) = get(relay.addr, &format!("{name}.localhost"), "/x").await;
            assert_eq!(status, 200);
            assert_eq!(body.unwrap(), "/x from python");
            let (status, body) = get(relay.addr, "localhost", &format!("/{name}/y")).await;
            assert_eq!(status, 200);
            assert_eq!(body.unwrap(), "/y from python");
        }
        relay.shutdown();
        assert_eq!(backend.line().await["goaway"], 0);
        relay.task.await.unwrap();
    })
    .await;
}
