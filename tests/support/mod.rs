//! The one support module of the integration tests: the deadline every test runs under, an
//! in-process relay on 127.0.0.1:0, agents built from the library's dialer, a small public HTTP
//! client, raw-byte helpers and log capture. The agent's test doubles (a relay stand-in, a
//! local upstream, an agent runner) are in [`agent`] (re-exported here); certificates in
//! [`pki`], the real binaries in [`bins`], a squid forward proxy in [`squid`].
#![allow(dead_code)]

mod agent;
pub mod bins;
pub mod global_logs;
pub mod pki;
pub mod squid;

// Not every test uses the agent doubles.
#[allow(unused_imports)]
pub use agent::*;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use ptth::relay::{Config, Listeners, NameState, Relay, RelayHandle};
use ptth::{Limits, UpgradeRequest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The deadline every test runs under. It only catches hangs (no test is timed by it): 60 s,
/// the longest any test file used, because the slowest test (8 MiB each way through a Python
/// `h2` peer, tests/h2_ptth.rs) runs in a debug build on a loaded shared machine; a passing
/// test takes well under a second, so the extra room costs nothing but the wait for a hang.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// A body whose error is an I/O error (the HTTP/2 tests' bodies, which fail mid-stream with
/// one).
pub type IoBody = BoxBody<Bytes, std::io::Error>;

/// A whole [`IoBody`].
pub fn io_full(b: impl Into<Bytes>) -> IoBody {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn full(s: impl Into<Bytes>) -> TestBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

pub struct TestRelay {
    pub handle: RelayHandle,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
}

impl TestRelay {
    /// Begin a graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A listener on 127.0.0.1 port 0, and the address it got.
pub async fn bind_local() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// A relay with one plain listener on 127.0.0.1:0.
pub async fn start_relay(config: Config) -> TestRelay {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    run_relay(vec![l].into(), config).await
}

/// A relay with one TLS listener only, on 127.0.0.1:0 (`config.tls` is the caller's):
/// [`TestRelay::addr`] is the TLS address.
pub async fn start_tls_relay(config: Config) -> TestRelay {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listeners = Listeners {
        plain: vec![],
        tls: vec![l],
    };
    run_relay(listeners, config).await
}

/// Run a relay on `listeners` until [`TestRelay::shutdown`] (or its drop); `addr` is the first
/// address, plain before TLS.
async fn run_relay(listeners: Listeners, config: Config) -> TestRelay {
    let relay = Relay::new(listeners, config).await.unwrap();
    let handle = relay.handle();
    let addr = *handle
        .local_addrs()
        .iter()
        .chain(handle.tls_addrs())
        .next()
        .unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        relay
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    TestRelay {
        handle,
        addr,
        stop: Some(tx),
        task,
    }
}

/// An agent: `n` reversed connections serving `h`.
pub struct Agent {
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Drop every connection at once (as if the process died).
    pub fn kill(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The upgrade request an agent sends for `name` (path mode).
pub fn claim_request(addr: SocketAddr, name: &str, token: Option<&str>) -> UpgradeRequest {
    let mut req = UpgradeRequest::new(HeaderValue::from_str(&addr.to_string()).unwrap());
    req.target = format!("/{name}");
    if let Some(t) = token {
        req.headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
    }
    req
}

/// Connect one agent connection; returns the handshake error if refused.
pub async fn connect_one(
    addr: SocketAddr,
    req: &UpgradeRequest,
    h: Handler,
) -> Result<JoinHandle<()>, ptth::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let flipped = ptth::dialer::handshake(stream, req, &Limits::default()).await?;
    Ok(tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |r| {
            let h = h.clone();
            async move { Ok::<_, std::convert::Infallible>(h(r).await) }
        });
        let _ = flipped.serve(svc, &Limits::default()).await;
    }))
}

/// Start an agent for `name` with `n` connections and wait until the relay has parked them.
pub async fn start_agent(
    relay: &TestRelay,
    name: &str,
    n: usize,
    token: Option<&str>,
    h: Handler,
) -> Agent {
    let before = relay.handle.idle(name);
    let req = claim_request(relay.addr, name, token);
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(connect_one(relay.addr, &req, h.clone()).await.unwrap());
    }
    relay.handle.wait_idle(name, before + n).await;
    Agent { tasks }
}

/// An HTTP/1.1 server on 127.0.0.1 port 0 (an upstream, a page): each connection is served,
/// in a task of its own, by the service `service` makes for it. Its address.
pub async fn http_server<S>(service: impl Fn() -> S + Send + 'static) -> SocketAddr
where
    S: ptth::service::HttpService + Send + 'static,
{
    let (l, addr) = bind_local().await;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let svc = service();
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .with_upgrades(),
            );
        }
    });
    addr
}

/// A one-request public HTTP/1.1 client.
pub async fn send(addr: SocketAddr, req: Request<TestBody>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender.send_request(req).await.unwrap()
}

/// A public request `method uri` with `Host: localhost` and `body` to `addr`, on a connection
/// of its own.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    body: TestBody,
) -> Response<Incoming> {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost")
        .body(body)
        .unwrap();
    send(addr, req).await
}

/// A response's status and its whole body as text.
pub async fn status_text(res: Response<Incoming>) -> (http::StatusCode, String) {
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get(
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
) -> (u16, http::HeaderMap, String) {
    let mut b = Request::get(path);
    b = b.header("host", host.map_or(addr.to_string(), str::to_string));
    let res = send(
        addr,
        b.body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap(),
    )
    .await;
    let status = res.status().as_u16();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// An echo handler: answers with the path it saw and a few request fields.
pub fn echo_handler(tag: &'static str) -> Handler {
    handler(move |req: Request<Incoming>| async move {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let text = format!(
            "{tag} {} prefix={} xff={} fwd={}",
            req.uri(),
            h("x-forwarded-prefix"),
            h("x-forwarded-for"),
            h("forwarded")
        );
        Response::new(full(text))
    })
}

pub fn anonymous() -> Config {
    Config::default()
}

/// Whether the Python `h2` package can run (the third-party HTTP/2 peer of tests/h2/*.py);
/// otherwise why not (the test then skips).
pub fn python_h2() -> Result<(), String> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import h2"])
        .output()
        .map_err(|e| format!("python3 is not available ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "the Python h2 package is missing (apt-get install python3-h2, or pip install h2): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

pub async fn deadline<F: Future>(f: F) -> F::Output {
    deadline_of(DEADLINE, f).await
}

/// [`deadline`] with a longer bound, for tests that drive a slow third-party program
/// (Chromium, a Python HTTP/2 peer).
pub async fn deadline_of<F: Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .expect("test deadline passed")
}

/// The bound of [`deadline_of`] for tests that start a browser or a Python peer.
pub const SLOW_PEER_DEADLINE: Duration = Duration::from_secs(90);

/// A body that yields the given frames in order (data, then optionally trailers).
pub struct FramesBody(pub std::collections::VecDeque<http_body::Frame<Bytes>>);

impl FramesBody {
    pub fn new(data: &[&'static str], trailers: Option<http::HeaderMap>) -> FramesBody {
        let mut q: std::collections::VecDeque<_> = data
            .iter()
            .map(|d| http_body::Frame::data(Bytes::from_static(d.as_bytes())))
            .collect();
        if let Some(t) = trailers {
            q.push_back(http_body::Frame::trailers(t));
        }
        FramesBody(q)
    }
}

impl http_body::Body for FramesBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// Read one head (through the blank line) from a raw stream, byte by byte, so nothing after
/// it is consumed. Panics if the peer closes (or fails) before the head ends: every caller
/// expects a whole head.
pub async fn read_head(s: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = s.read(&mut b).await.unwrap();
        assert_eq!(
            n,
            1,
            "peer closed before the end of a head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Write `bytes` on a fresh connection and read everything until the relay closes it.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The relay may answer and close before everything was written: ignore write errors.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in `raw` (0 if there is none).
pub fn status_of(raw: &str) -> u16 {
    raw.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The live connections the relay counts for `name`.
pub fn connections(handle: &RelayHandle, name: &str) -> usize {
    handle
        .stats()
        .iter()
        .find(|s| s.name == name)
        .map_or(0, |s| s.connections)
}

/// Where `name` stands (`None` once the relay has forgotten it).
pub fn state(handle: &RelayHandle, name: &str) -> Option<NameState> {
    handle
        .stats()
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.state)
}

/// Handshake one agent connection and hand back the flipped stream unserved, so a test can
/// close it (drop) or serve it later.
pub async fn flip_one(
    addr: SocketAddr,
    req: &UpgradeRequest,
) -> Result<ptth::dialer::Flipped<TcpStream>, ptth::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    ptth::dialer::handshake(stream, req, &Limits::default()).await
}

/// Log lines captured by [`capture_logs`].
#[derive(Clone, Default)]
pub struct Logs {
    buf: Arc<std::sync::Mutex<Vec<u8>>>,
    /// Woken on every write, so a test can wait for a line instead of sleeping.
    written: Arc<tokio::sync::Notify>,
}

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    /// Wait until `cond` holds for the captured text (checked after every write).
    pub async fn wait_until(&self, cond: impl Fn(&str) -> bool) {
        loop {
            // Registered before the check, so a write between the check and the await wakes it.
            let written = self.written.notified();
            if cond(&self.text()) {
                return;
            }
            written.await;
        }
    }

    /// Wait until a captured line contains `needle`.
    pub async fn wait_for(&self, needle: &str) {
        self.wait_until(|text| text.contains(needle)).await
    }
}

struct LogWriter(Logs);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.buf.lock().unwrap().extend_from_slice(buf);
        self.0.written.notify_waiters();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Capture every log event from DEBUG up on this thread, for as long as the guard lives. With
/// the default (current-thread) test runtime that is every task of the test: relay and agent.
pub fn capture_logs() -> (tracing::subscriber::DefaultGuard, Logs) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || LogWriter(writer.clone()))
        .finish();
    (tracing::subscriber::set_default(subscriber), logs)
}
