//! `ptth-connect --protocol ptth` (the real binary) against a relay that runs HTTP/2 inside
//! the transposed connection: a third-party one (the Python `h2` package, tests/h2/relay.py)
//! for interoperation, and the library's own listener where the test needs to watch the
//! agent's GOAWAY closely (the drain). A real upstream (hyper's HTTP/1.1 server) answers.
//!
//! The Python peer's scenarios are described in relay.py; each prints its port, then JSON
//! lines, the summary last. Nothing here waits on a clock: the peer and the agent are
//! driven by what they print, under one overall deadline.

mod support;

use std::convert::Infallible;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use ptth::listener::{ListenerConfig, raw};
use ptth::proto::request::OfferRules;
use ptth::{AlpnId, Protocol};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::{Notify, mpsc};

/// Requests the relay sends at once, over the agent's two connections.
const MANY: usize = 64;
/// The large body, each way.
const LARGE: usize = 8 * 1024 * 1024;

use support::{IoBody as Body, io_full as full};

/// The upstream the agent forwards to, over HTTP/1.1.
struct Upstream {
    url: String,
    /// Connections it accepted.
    accepted: Arc<AtomicUsize>,
    /// Told when a `/hold` request arrives.
    held: mpsc::UnboundedReceiver<()>,
    /// Releases the `/hold` responses.
    release: Arc<Notify>,
}

/// `/echo`: the body back; `/large`: [`LARGE`] bytes; `/broken`: a 1 MiB `Content-Length`,
/// 64 KiB, then the connection breaks; `/hold`: waits for [`Upstream::release`]; anything
/// else: `METHOD PATH`. Every answer has `x-seen-host`, the `Host` the upstream got.
async fn upstream() -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (held_tx, held) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let (count, rel) = (accepted.clone(), release.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            let (held_tx, rel) = (held_tx.clone(), rel.clone());
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (held_tx, rel) = (held_tx.clone(), rel.clone());
                async move { Ok::<_, Infallible>(answer(req, held_tx, rel).await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .with_upgrades(),
            );
        }
    });
    Upstream {
        url: format!("http://{addr}"),
        accepted,
        held,
        release,
    }
}

async fn answer(
    req: Request<Incoming>,
    held: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
) -> Response<Body> {
    let host = req.headers().get("host").cloned();
    let line = format!("{} {}", req.method(), req.uri());
    let mut res = match req.uri().path() {
        "/echo" => Response::new(full(req.into_body().collect().await.unwrap().to_bytes())),
        "/large" => Response::new(full(vec![b'L'; LARGE])),
        "/broken" => {
            let mut res = Response::new(BreaksOff { polls: 0 }.boxed());
            res.headers_mut()
                .insert("content-length", HeaderValue::from(1024 * 1024));
            res
        }
        "/ws"
            if req
                .headers()
                .get("upgrade")
                .is_some_and(|v| v == "websocket") =>
        {
            let had_key = req.headers().contains_key("sec-websocket-key");
            tokio::spawn(async move {
                let upgraded = hyper::upgrade::on(req).await.unwrap();
                let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
            let mut res = Response::new(full(Bytes::new()));
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = res.headers_mut();
            h.insert("upgrade", HeaderValue::from_static("websocket"));
            h.insert("connection", HeaderValue::from_static("upgrade"));
            h.insert("x-had-key", HeaderValue::from(u16::from(had_key)));
            return res;
        }
        "/hold" => {
            let released = release.notified();
            let _ = held.send(());
            released.await;
            Response::new(full("held, then answered"))
        }
        _ => Response::new(full(line)),
    };
    if let Some(host) = host {
        res.headers_mut().insert("x-seen-host", host);
    }
    res
}

/// 64 KiB of body, a pause (so hyper's server writes the head and the chunk out), then an
/// error: the server then breaks the connection off mid-body.
struct BreaksOff {
    polls: u8,
}

impl http_body::Body for BreaksOff {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        self.polls += 1;
        match self.polls {
            1 => Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'b'; 64 * 1024]))))),
            2 => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            _ => Poll::Ready(Some(Err(std::io::Error::other("the upstream broke off")))),
        }
    }
}

/// The Python relay running `scenario`, and its port.
struct PyRelay {
    child: Child,
    out: Lines<BufReader<ChildStdout>>,
    port: u16,
}

async fn py_relay(scenario: &str, args: &[String]) -> PyRelay {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2");
    let mut child = Command::new("python3")
        .arg(format!("{dir}/relay.py"))
        .arg(scenario)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = out
        .next_line()
        .await
        .unwrap()
        .expect("the relay's port")
        .trim()
        .parse()
        .unwrap();
    PyRelay { child, out, port }
}

impl PyRelay {
    /// The next JSON line the relay prints.
    async fn next(&mut self) -> Value {
        let line = self
            .out
            .next_line()
            .await
            .unwrap()
            .expect("the relay ended without its summary");
        serde_json::from_str(&line).unwrap()
    }

    /// The summary, skipping events; then the relay's exit status must be success.
    async fn summary(mut self) -> Value {
        loop {
            let v = self.next().await;
            if let Some(s) = v.get("summary") {
                let status = self.child.wait().await.unwrap();
                assert!(status.success(), "relay.py failed: {status}");
                return s.clone();
            }
        }
    }
}

/// `ptth-connect --protocol ptth` to `relay`, forwarding to `to`; its stderr (the log) piped.
fn agent(relay: &str, to: &str, extra: &[&str]) -> (Child, Lines<BufReader<ChildStderr>>) {
    let args = [relay, "--to", to, "--protocol", "ptth", "--proxy", ""];
    let mut child = support::bins::connect(&[&args[..], extra].concat(), Some("info"));
    let log = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, log)
}

/// The next log line containing every one of `want`; panics with the lines seen if the log
/// ends first.
async fn log_line(log: &mut Lines<BufReader<ChildStderr>>, want: &[&str]) -> String {
    let mut seen = String::new();
    while let Some(line) = log.next_line().await.unwrap() {
        if want.iter().all(|w| line.contains(w)) {
            return line;
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    panic!("no log line with {want:?} in:\n{seen}");
}

async fn deadline<F: Future>(f: F) -> F::Output {
    support::deadline_of(support::SLOW_PEER_DEADLINE, f).await
}

macro_rules! needs_python_h2 {
    ($name:literal) => {
        if let Err(why) = support::python_h2() {
            println!("SKIPPED {}: {why}", $name);
            return;
        }
    };
}

/// 64 requests at once over the agent's two HTTP/2 connections reach the upstream and come
/// back matched, with a large body each way beside them. The offers are the draft's: `GET`,
/// `Upgrade: ptth`, `ALPN: h2, http%2F1.1`, and in host mode the well-known target with the
/// relay URL's origin.
#[tokio::test]
async fn many_requests_over_two_connections_with_large_bodies() {
    needs_python_h2!("many_requests_over_two_connections_with_large_bodies");
    deadline(async {
        let up = upstream().await;
        let args = [MANY, 4 * 1024 * 1024, LARGE].map(|n| n.to_string());
        let relay = py_relay("many", &args).await;
        let url = format!("http://demo.localhost:{}/", relay.port);
        let (_agent, mut log) = agent(&url, &up.url, &[]);
        let summary = relay.summary().await;
        assert_eq!(summary["matched"], MANY as u64, "{summary}");
        assert_eq!(summary["echo_ok"], true, "{summary}");
        assert_eq!(summary["large"], LARGE as u64, "{summary}");
        let offers = summary["offers"].as_array().unwrap();
        assert_eq!(offers.len(), 2, "{summary}");
        let target = format!(
            "/.well-known/ptth/http%3A%2F%2Fdemo.localhost%3A{}/",
            relay_port(&url)
        );
        for o in offers {
            assert_eq!(o["method"], "GET", "{o}");
            assert_eq!(o["upgrade"], serde_json::json!(["ptth"]), "{o}");
            assert_eq!(o["alpn"], serde_json::json!(["h2", "http/1.1"]), "{o}");
            assert_eq!(o["target"], target.as_str(), "{o}");
        }
        log_line(&mut log, &["connected to the relay", "inner=\"h2\""]).await;
        assert!(up.accepted.load(Ordering::Relaxed) >= 1);
    })
    .await;
}

fn relay_port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// An upstream that breaks off mid-body: the agent resets that stream only. A stream the
/// relay resets mid-body fails only itself. The next request on the connection is whole.
#[tokio::test]
async fn a_reset_mid_body_fails_only_its_stream() {
    needs_python_h2!("a_reset_mid_body_fails_only_its_stream");
    deadline(async {
        let up = upstream().await;
        let relay = py_relay("reset", &[]).await;
        let url = format!("http://127.0.0.1:{}/demo", relay.port);
        let (_agent, _log) = agent(&url, &up.url, &["--h2-connections", "1"]);
        let summary = relay.summary().await;
        assert_eq!(summary["broken_reset"], 2, "INTERNAL_ERROR: {summary}");
        assert_eq!(summary["broken_done"], false, "{summary}");
        assert_eq!(summary["large_reset"], "ours", "{summary}");
        assert_eq!(summary["after"], "GET /after", "{summary}");
    })
    .await;
}

/// The relay's GOAWAY ends that connection after its exchange; the agent dials again and the
/// next request is served on the new connection.
#[tokio::test]
async fn goaway_from_the_relay_and_the_agent_redials() {
    needs_python_h2!("goaway_from_the_relay_and_the_agent_redials");
    deadline(async {
        let up = upstream().await;
        let relay = py_relay("goaway", &[]).await;
        let url = format!("http://127.0.0.1:{}/demo", relay.port);
        let (_agent, _log) = agent(&url, &up.url, &["--h2-connections", "1"]);
        let summary = relay.summary().await;
        assert_eq!(summary["first"], "GET /first", "{summary}");
        assert_eq!(summary["second"], "GET /second", "{summary}");
    })
    .await;
}

/// The target is rewritten onto the upstream as on HTTP/1.1 (prefix, dot segments), `Host` is
/// the upstream's authority; an upstream that is down is a `502` whose body says why without
/// its address.
#[tokio::test]
async fn targets_host_and_an_upstream_that_is_down() {
    needs_python_h2!("targets_host_and_an_upstream_that_is_down");
    deadline(async {
        let up = upstream().await;
        let relay = py_relay("one", &["1".to_string()]).await;
        let url = format!("http://127.0.0.1:{}/demo", relay.port);
        let to = format!("{}/base", up.url);
        let (_agent, _log) = agent(&url, &to, &["--h2-connections", "1"]);
        let summary = relay.summary().await;
        assert_eq!(summary["status"], "200", "{summary}");
        assert_eq!(summary["body"], "GET /base/b?q=1", "{summary}");
        let authority = up.url.trim_start_matches("http://");
        assert_eq!(summary["headers"]["x-seen-host"], authority, "{summary}");

        // A port nothing listens on.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let down = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let relay = py_relay("one", &["0".to_string()]).await;
        let url = format!("http://127.0.0.1:{}/demo", relay.port);
        let (_agent, _log) = agent(&url, &down, &["--h2-connections", "1"]);
        let summary = relay.summary().await;
        assert_eq!(summary["status"], "502", "{summary}");
        let body = summary["body"].as_str().unwrap();
        assert!(
            body.starts_with("502 Bad Gateway: the agent could not reach its upstream: "),
            "{body}"
        );
        assert!(!body.contains("127.0.0.1"), "no internal address: {body}");
    })
    .await;
}

/// WebSocket over HTTP/2 (RFC 8441): the relay's extended CONNECT becomes the upstream's
/// HTTP/1.1 upgrade (with a `Sec-WebSocket-Key` of the agent's), the stream is answered `200`,
/// and bytes go through both ways.
#[tokio::test]
async fn extended_connect_becomes_the_upstreams_websocket_upgrade() {
    needs_python_h2!("extended_connect_becomes_the_upstreams_websocket_upgrade");
    deadline(async {
        let up = upstream().await;
        let relay = py_relay("ws", &[]).await;
        let url = format!("http://127.0.0.1:{}/demo", relay.port);
        let (_agent, _log) = agent(&url, &up.url, &["--h2-connections", "1"]);
        let summary = relay.summary().await;
        assert_eq!(summary["status"], "200", "{summary}");
        assert_eq!(summary["headers"]["x-had-key"], "1", "{summary}");
        assert_eq!(summary["echo"], "hello through the tunnel", "{summary}");
    })
    .await;
}

/// The library's `Agent::serve` with a user's hyper service runs it on HTTP/2 when the relay
/// chooses `h2` (the path `ptth-connect` does not take), and stops on its shutdown signal.
#[tokio::test]
async fn the_library_agent_serves_a_hyper_service_on_h2() {
    needs_python_h2!("the_library_agent_serves_a_hyper_service_on_h2");
    deadline(async {
        let relay = py_relay("one", &["0".to_string()]).await;
        let url = format!("http://127.0.0.1:{}/demo", relay.port);
        let agent = ptth::agent::Agent::builder(url)
            .protocol(Protocol::Transposed)
            .h2_connections(1)
            .build()
            .unwrap();
        let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let v = format!("{:?} {}", req.version(), req.uri().path());
            Ok::<_, Infallible>(Response::new(full(v)))
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(agent.serve(service, async {
            let _ = stopped.await;
        }));
        let summary = relay.summary().await;
        assert_eq!(summary["status"], "200", "{summary}");
        assert_eq!(summary["body"], "HTTP/2.0 /x", "{summary}");
        stop.send(()).unwrap();
        serving.await.unwrap().unwrap();
    })
    .await;
}

/// A relay that chooses `http/1.1` inside `ptth` gets today's reversed HTTP/1.1.
#[tokio::test]
async fn a_relay_that_chooses_http11_gets_reversed_http11() {
    needs_python_h2!("a_relay_that_chooses_http11_gets_reversed_http11");
    deadline(async {
        let up = upstream().await;
        let relay = py_relay("http11", &[]).await;
        let url = format!("http://127.0.0.1:{}/demo", relay.port);
        let (_agent, mut log) = agent(&url, &up.url, &[]);
        let summary = relay.summary().await;
        assert_eq!(summary["offer"]["target"], "/demo", "{summary}");
        assert!(
            summary["status"]
                .as_str()
                .unwrap()
                .starts_with("HTTP/1.1 200"),
            "{summary}"
        );
        assert_eq!(summary["body"], "GET /h1", "{summary}");
        log_line(&mut log, &["connected to the relay", "inner=\"http/1.1\""]).await;
    })
    .await;
}

/// Refusals are clear errors in the agent's log, and it keeps trying: a `400` with its body,
/// then a `101` without `ALPN`.
#[tokio::test]
async fn refusals_are_clear_errors() {
    needs_python_h2!("refusals_are_clear_errors");
    deadline(async {
        let up = upstream().await;
        let relay = py_relay("refuse", &[]).await;
        let url = format!("http://127.0.0.1:{}/demo", relay.port);
        let (_agent, mut log) = agent(&url, &up.url, &["--h2-connections", "1"]);
        log_line(
            &mut log,
            &["upgrade refused with 400 Bad Request: Upgrade: ptth needs an ALPN field"],
        )
        .await;
        log_line(&mut log, &["101 to ptth without ALPN"]).await;
        let summary = relay.summary().await;
        assert_eq!(summary["offers"].as_array().unwrap().len(), 2);
    })
    .await;
}

/// The drain: on SIGTERM the agent sends GOAWAY (new streams are refused) and the stream in
/// flight still finishes; then the agent exits 0. The relay is the library's listener here,
/// whose HTTP/2 client (hyper) keeps serving open streams after a GOAWAY.
#[tokio::test]
async fn sigterm_sends_goaway_and_the_open_stream_finishes() {
    deadline(async {
        let mut up = upstream().await;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}/demo", l.local_addr().unwrap().port());
        let (mut agent, _log) = agent(&url, &up.url, &["--h2-connections", "1"]);
        let (tcp, _) = l.accept().await.unwrap();
        let cfg = ListenerConfig {
            rules: OfferRules::with_transposed(),
            ..ListenerConfig::default()
        };
        let offer = raw::read_offer(tcp, &cfg).await.unwrap();
        assert_eq!(offer.protocol(), Protocol::Transposed);
        assert_eq!(offer.alpn(), Some(&AlpnId::h2()));
        let (client, conn) = offer.accept_h2::<Body>(&cfg).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut c = client.clone();
        let held = tokio::spawn(async move { c.send(get("/hold")).await });
        up.held.recv().await.unwrap();
        let pid = agent.id().unwrap().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        // New requests are served until the GOAWAY arrives, then refused: each try is a
        // full round trip, so this is bounded by the GOAWAY's arrival, not by a clock.
        let mut refused = false;
        for _ in 0..10_000 {
            let mut c = client.clone();
            if c.send(get("/probe")).await.is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "the agent never sent GOAWAY");
        up.release.notify_waiters();
        let res = held.await.unwrap().expect("the open stream finishes");
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"held, then answered");
        let status = agent.wait().await.unwrap();
        assert!(status.success(), "agent exit: {status}");
        drop(client);
        let _ = conn.await;
    })
    .await;
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("host", "app.example")
        .body(full(Bytes::new()))
        .unwrap()
}
