//! Test doubles for the agent tests: a relay stand-in built on the library's raw listener (or
//! raw bytes), a local upstream, and an agent runner. Everything is on 127.0.0.1 port 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use ptth::agent::{Agent, AgentBuilder, AgentError, Backoff};
use ptth::listener::{ListenerConfig, ReversedClient, raw};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{BoxError, TestBody, full};

pub type Client = ReversedClient<TestBody>;

/// A body fed chunk by chunk from the returned sender; it ends when the sender is dropped.
pub fn channel_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    (tx, ChannelBody(rx).boxed())
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A small backoff so that failure tests run quickly (still never a tight loop).
pub fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        healthy_period: Duration::from_secs(30),
        ..Backoff::default()
    }
}

pub fn builder(addr: SocketAddr, name: &str) -> AgentBuilder {
    Agent::builder(format!("http://{addr}/{name}")).backoff(fast_backoff())
}

/// A running agent and the switch that stops it.
pub struct RunningAgent {
    pub stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), AgentError>>,
}

impl RunningAgent {
    pub async fn shutdown(mut self) -> Result<(), AgentError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap()
    }
}

pub fn spawn_agent<S>(builder: AgentBuilder, service: S) -> RunningAgent
where
    S: ptth::service::HttpService + Clone + Send + Sync + 'static,
{
    run_agent(builder.build().unwrap(), service)
}

/// Serve `agent` with the hyper service `service` until it is shut down.
pub fn run_agent<S>(agent: Agent, service: S) -> RunningAgent
where
    S: ptth::service::HttpService + Clone + Send + Sync + 'static,
{
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.serve(service, async move {
        let _ = rx.await;
    }));
    RunningAgent {
        stop: Some(stop),
        task,
    }
}

pub fn spawn_proxy_agent(builder: AgentBuilder, upstream: SocketAddr) -> RunningAgent {
    spawn_proxy_agent_to(builder, &format!("http://{upstream}"))
}

/// An agent proxying to `url` (`http://host:port/optional/prefix`).
pub fn spawn_proxy_agent_to(builder: AgentBuilder, url: &str) -> RunningAgent {
    run_proxy(
        builder.build().unwrap(),
        ptth::agent::Proxy::new(url).unwrap(),
    )
}

/// Serve `agent` as `proxy` until it is shut down.
pub fn run_proxy(agent: Agent, proxy: ptth::agent::Proxy) -> RunningAgent {
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.serve_proxy(proxy, async move {
        let _ = rx.await;
    }));
    RunningAgent {
        stop: Some(stop),
        task,
    }
}

/// A relay stand-in on 127.0.0.1 port 0, and an agent for `name` on it with one connection.
pub async fn stand_in(name: &str) -> (TcpListener, Agent) {
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = builder(relay.local_addr().unwrap(), name)
        .connections(1)
        .build()
        .unwrap();
    (relay, agent)
}

/// An outage as the relay stand-in makes it: the parked connection closes, and the agent's
/// next dial is cut before any answer.
pub async fn outage(relay: &TcpListener, parked: Client) {
    drop(parked);
    let (cut, _) = relay.accept().await.unwrap();
    drop(cut);
}

/// A proxy agent for `demo` with one connection, to `upstream`, parked at a relay stand-in
/// on 127.0.0.1 port 0: the stand-in (kept open: the agent may dial again), the agent, and
/// the client for reversed requests on its parked connection.
pub async fn parked_proxy_agent(upstream: SocketAddr) -> (TcpListener, RunningAgent, Client) {
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = spawn_proxy_agent(
        builder(relay.local_addr().unwrap(), "demo").connections(1),
        upstream,
    );
    let (_, client) = accept_parked(&relay).await;
    (relay, agent, client)
}

/// Accept one TCP connection, take its upgrade offer and switch. Returns the upgrade request
/// head and a client for reversed requests.
pub async fn accept_parked(listener: &TcpListener) -> (http::request::Parts, Client) {
    let (tcp, _) = listener.accept().await.unwrap();
    park(tcp).await
}

/// Accept one TCP connection on `listener` and read its upgrade offer (default limits).
pub async fn read_offer_on(listener: &TcpListener) -> ptth::listener::Offer<TcpStream> {
    let (tcp, _) = listener.accept().await.unwrap();
    raw::read_offer(tcp, &ListenerConfig::default())
        .await
        .unwrap()
}

pub async fn park(tcp: TcpStream) -> (http::request::Parts, Client) {
    let cfg = ListenerConfig::default();
    let offer = raw::read_offer(tcp, &cfg).await.unwrap();
    let head = offer.head().clone();
    let (client, conn) = offer.accept_reversed::<TestBody>(&cfg).await.unwrap();
    tokio::spawn(conn);
    (head, client)
}

pub async fn write(tcp: &mut TcpStream, bytes: &[u8]) {
    tcp.write_all(bytes).await.unwrap();
}

pub const SWITCH_09: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n\r\n";

/// What the test upstream reports when a request reaches it.
pub type Arrivals = mpsc::UnboundedReceiver<String>;

/// A local upstream: `/echo` streams the request body back, `/hold` waits for the test to
/// release it (via the returned sender: each message releases one request), anything else
/// answers with the method, path and Host.
pub async fn spawn_upstream() -> (SocketAddr, Arrivals, mpsc::UnboundedSender<Bytes>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived_tx, arrived_rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = mpsc::unbounded_channel::<Bytes>();
    let release_rx = std::sync::Arc::new(tokio::sync::Mutex::new(release_rx));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let arrived_tx = arrived_tx.clone();
            let release_rx = release_rx.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let arrived_tx = arrived_tx.clone();
                let release_rx = release_rx.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let _ = arrived_tx.send(path.clone());
                    let res: Response<TestBody> = match path.as_str() {
                        "/echo" => Response::new(req.into_body().map_err(Into::into).boxed()),
                        "/hold" => {
                            let msg = release_rx.lock().await.recv().await.unwrap_or_default();
                            Response::new(full(msg))
                        }
                        "/drip" => {
                            // Each released message becomes one chunk; an empty one ends it.
                            let (tx, body) = channel_body();
                            tokio::spawn(async move {
                                loop {
                                    let msg = release_rx.lock().await.recv().await;
                                    match msg {
                                        Some(b) if !b.is_empty() => {
                                            if tx.send(b).await.is_err() {
                                                break;
                                            }
                                        }
                                        _ => break,
                                    }
                                }
                            });
                            Response::new(body)
                        }
                        _ => {
                            let host = req
                                .headers()
                                .get("host")
                                .map(|h| h.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            Response::new(full(format!(
                                "{} {} host={host}",
                                req.method(),
                                req.uri()
                            )))
                        }
                    };
                    Ok::<_, Infallible>(res)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades(),
            );
        }
    });
    (addr, arrived_rx, release_tx)
}

pub async fn body_string(res: Response<Incoming>) -> String {
    let b = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

/// A GET request for `path` with an empty body, for a [`Client`] (the reversed direction).
pub fn get_request(path: &str) -> Request<TestBody> {
    Request::get(path).body(full("")).unwrap()
}
