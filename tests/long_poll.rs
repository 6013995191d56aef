//! The long-poll transport end to end (spec-notes/long-poll.md), with the real binaries:
//! `ptth-serve`, and `ptth-connect` forwarding to an upstream of this test. First with
//! `--transport long-poll` straight to the relay; then behind a real nginx (Debian's
//! nginx-light, started by the test in the foreground on a loopback port and stopped by its
//! PID) configured as a plain reverse proxy with no `Upgrade` pass-through, where the agent in
//! its default `--transport auto` falls back by itself. Each serves a GET, a large streamed
//! POST, an SSE stream whose events arrive one by one (the next is sent only after the public
//! client has read the one before), and several requests in flight at once. Skipped with the
//! reason when nginx is missing.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::bins::{agent_addr, banner, line_with, serve};
use support::{TestBody, channel_body, deadline, full, status_text as text};
use tokio::io::BufReader;
use tokio::process::Child;
use tokio::sync::{Barrier, mpsc};

/// Requests the concurrency check keeps in flight at once (each is answered only when all have
/// arrived at the upstream).
const IN_FLIGHT: usize = 4;
/// The large POST: 4 MiB, sent in 64 KiB chunks.
const LARGE: usize = 4 << 20;
const CHUNK: usize = 64 << 10;

type Body = TestBody;

/// The upstream: `/hello`, `/count` (the POST body's length and byte sum), `/sse` (events
/// from the test's channel), `/together` (answers once [`IN_FLIGHT`] of them are waiting).
struct Upstream {
    url: String,
    events: mpsc::Sender<Bytes>,
}

async fn upstream() -> Upstream {
    let (events, sse) = channel_body();
    let sse = Arc::new(Mutex::new(Some(sse)));
    let barrier = Arc::new(Barrier::new(IN_FLIGHT));
    let addr = support::http_server(move || {
        let (sse, barrier) = (sse.clone(), barrier.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (sse, barrier) = (sse.clone(), barrier.clone());
            async move { Ok::<_, Infallible>(answer(req, sse, barrier).await) }
        })
    })
    .await;
    Upstream {
        url: format!("http://{addr}"),
        events,
    }
}

async fn answer(
    req: Request<Incoming>,
    sse: Arc<Mutex<Option<Body>>>,
    barrier: Arc<Barrier>,
) -> Response<Body> {
    let text = |s: String| Response::new(full(s));
    match req.uri().path() {
        "/hello" => text("hello".into()),
        "/count" => {
            let mut body = req.into_body();
            let (mut len, mut sum) = (0usize, 0u64);
            while let Some(Ok(f)) = body.frame().await {
                if let Ok(d) = f.into_data() {
                    len += d.len();
                    sum += d.iter().map(|&b| u64::from(b)).sum::<u64>();
                }
            }
            text(format!("len={len} sum={sum}"))
        }
        "/sse" => {
            let body = sse.lock().unwrap().take().expect("one SSE request");
            let mut res = Response::new(body);
            res.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            res
        }
        "/together" => {
            let waited = tokio::time::timeout(Duration::from_secs(30), barrier.wait()).await;
            text(if waited.is_ok() { "together" } else { "alone" }.into())
        }
        _ => {
            let mut res = text("no".into());
            *res.status_mut() = StatusCode::NOT_FOUND;
            res
        }
    }
}

/// A public request to `addr` for `/demo{path}`, on a connection of its own.
async fn public(addr: SocketAddr, method: &str, path: &str, body: Body) -> Response<Incoming> {
    support::request(addr, method, &format!("/demo{path}"), body).await
}

fn empty() -> Body {
    full("")
}

/// GET until the agent serves it (it may still be on its way), bounded in count.
async fn first_get(addr: SocketAddr) -> String {
    for _ in 0..200 {
        let (status, body) = text(public(addr, "GET", "/hello", empty()).await).await;
        if status == StatusCode::OK {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the agent never served /hello");
}

/// Everything the agent must serve through `addr`, as any parked agent does.
async fn serves_everything(addr: SocketAddr, up: &Upstream) {
    assert_eq!(first_get(addr).await, "hello");

    // A large POST, streamed chunk by chunk, counted at the upstream.
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for i in 0..LARGE / CHUNK {
            let chunk = Bytes::from(vec![(i % 251) as u8; CHUNK]);
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let expect_sum: u64 = (0..LARGE / CHUNK)
        .map(|i| (i % 251) as u64 * CHUNK as u64)
        .sum();
    let (status, body) = text(public(addr, "POST", "/count", body).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("len={LARGE} sum={expect_sum}"));

    // SSE: each event reaches the public client before the next is sent.
    let res = public(addr, "GET", "/sse", empty()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    for i in 0..3 {
        let event = format!("data: {i}\n\n");
        up.events.send(Bytes::from(event.clone())).await.unwrap();
        let mut got = Vec::new();
        while got.len() < event.len() {
            let frame = body.frame().await.expect("the stream ended").unwrap();
            if let Ok(d) = frame.into_data() {
                got.extend_from_slice(&d);
            }
        }
        assert_eq!(String::from_utf8_lossy(&got), event);
    }

    // Several requests in flight at once: each is answered only when all have arrived.
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        tasks.push(tokio::spawn(async move {
            text(public(addr, "GET", "/together", empty()).await).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), (StatusCode::OK, "together".to_string()));
    }
}

/// `ptth-serve` on 127.0.0.1:0 with a short long-poll deadline (polls end in `204` and are
/// sent again during the test): the child and its address.
async fn relay() -> (Child, impl Sized, SocketAddr) {
    let mut relay = serve(&["--listen", "127.0.0.1:0", "--long-poll-timeout", "2s"]);
    let (text, out) = banner(&mut relay, "agents:").await;
    // The rest of its output stays open: a relay must not write into a closed pipe.
    (relay, out, agent_addr(&text, "http"))
}

/// `ptth-connect` for `relay_url`, forwarding to `to`, with `args`; its stderr piped.
fn agent(relay_url: &str, to: &str, args: &[&str]) -> Child {
    let n = IN_FLIGHT.to_string();
    let first = [relay_url, "--to", to, "--connections", &n];
    support::bins::connect(&[&first[..], args].concat(), Some("info"))
}

#[tokio::test]
async fn a_long_polling_agent_serves_get_a_large_post_sse_and_many_at_once() {
    deadline(async {
        let (_relay, _out, addr) = relay().await;
        let up = upstream().await;
        let mut agent = agent(
            &format!("http://{addr}/demo"),
            &up.url,
            &["--transport", "long-poll"],
        );
        let mut err = BufReader::new(agent.stderr.take().unwrap());
        let connected = line_with(&mut err, "connected to the relay").await;
        assert!(connected.is_ok(), "{connected:?}");
        // Past the poll deadline: the held polls were answered 204 and sent again.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        serves_everything(addr, &up).await;
    })
    .await;
}

/// Debian's nginx, or why the nginx test cannot run here.
fn nginx() -> Result<PathBuf, String> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| "nginx is not installed (apt-get install nginx-light)".to_string())
}

/// nginx in the foreground (`daemon off`, `master_process off`: one process, its PID ours),
/// with its configuration, pid file, logs and temporary files in a temporary directory.
struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// A plain reverse proxy to `relay` on a free loopback port. What it does not do is the
    /// point: no `Upgrade`/`Connection` pass-through (nginx drops both, as by default). It
    /// streams both ways (`proxy_request_buffering off`, `proxy_buffering off`) and takes
    /// bodies of any size: the settings a long-poll deployment needs (README).
    fn start(binary: &PathBuf, relay: SocketAddr) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
                   proxy_pass http://{relay};\n      proxy_http_version 1.1;\n\
                   proxy_set_header Host $http_host;\n      proxy_request_buffering off;\n\
                   proxy_buffering off;\n      client_max_body_size 0;\n    }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nginx did not listen: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn behind_an_nginx_that_drops_upgrade_the_agent_falls_back_by_itself() {
    let binary = match nginx() {
        Ok(b) => b,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    deadline(async {
        let (_relay, _out, addr) = relay().await;
        let nginx = Nginx::start(&binary, addr);
        let up = upstream().await;
        // The default transport (auto), through nginx.
        let mut agent = agent(&format!("http://{}/demo", nginx.addr), &up.url, &[]);
        let mut err = BufReader::new(agent.stderr.take().unwrap());
        let fell = line_with(&mut err, "falling back to long polling").await;
        // The offer reached the relay without its Upgrade, marked as an offer: 426.
        assert!(fell.as_ref().is_ok_and(|l| l.contains("426")), "{fell:?}");
        // Public requests through nginx too.
        serves_everything(nginx.addr, &up).await;
    })
    .await;
}

/// One long-poll request (`kind`) to the in-process relay at `addr` for `/demo`, on a
/// connection of its own.
async fn lp(
    addr: SocketAddr,
    method: &str,
    kind: &str,
    token: Option<&str>,
    exchange: Option<&str>,
    body: Body,
) -> Response<Incoming> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut fields = vec![("ptth-long-poll", kind)];
    if let Some(b) = &bearer {
        fields.push(("authorization", b));
    }
    if let Some(x) = exchange {
        fields.push(("ptth-exchange", x));
    }
    with_fields(addr, method, &fields, body).await
}

/// The wire as spec-notes/long-poll.md states it, by hand: the refusals and what each status
/// means, a held poll's `204`, and one exchange (the request as the poll's body, the response
/// as the reply's body).
#[tokio::test]
async fn the_long_poll_wire_statuses_and_one_exchange_by_hand() {
    use ptth::relay::Tokens;
    deadline(async {
        let mut cfg = support::anonymous();
        cfg.tokens = Some(Tokens::parse("demo good\nother rival\n").unwrap());
        cfg.long_poll_timeout = Duration::from_millis(300);
        let relay = support::start_relay(cfg).await;
        let addr = relay.addr;
        let status = |r: Response<Incoming>| r.status();

        let no_token = lp(addr, "POST", "poll", None, None, empty()).await;
        assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(no_token.headers()["www-authenticate"], "Bearer");
        let other = lp(addr, "POST", "poll", Some("rival"), None, empty()).await;
        assert_eq!(status(other), StatusCode::FORBIDDEN);
        let get = lp(addr, "GET", "poll", Some("good"), None, empty()).await;
        assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(get.headers()["allow"], "POST");
        let bad = lp(addr, "POST", "pol", Some("good"), None, empty()).await;
        assert_eq!(status(bad), StatusCode::BAD_REQUEST);
        let unnamed = lp(addr, "POST", "reply", Some("good"), None, empty()).await;
        assert_eq!(status(unnamed), StatusCode::BAD_REQUEST);
        let unknown = lp(addr, "POST", "reply", Some("good"), Some("1-2"), empty()).await;
        assert_eq!(status(unknown), StatusCode::NOT_FOUND);

        // Nothing to do before the deadline: 204, and the connection is no longer counted.
        let idle = lp(addr, "POST", "poll", Some("good"), None, empty()).await;
        assert_eq!(status(idle), StatusCode::NO_CONTENT);
        relay
            .handle
            .wait_until(|h| support::connections(h, "demo") == 0)
            .await;

        // One exchange by hand.
        let polling = tokio::spawn(lp(addr, "POST", "poll", Some("good"), None, empty()));
        relay
            .handle
            .wait_until(|h| support::connections(h, "demo") == 1)
            .await;
        let public =
            tokio::spawn(async move { text(public(addr, "GET", "/x?y=1", empty()).await).await });
        let res = polling.await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "message/http");
        let id = res.headers()["ptth-exchange"].to_str().unwrap().to_string();
        let mut body = res.into_body();
        let mut request = Vec::new();
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let frame = body.frame().await.expect("the request ended").unwrap();
            request.extend_from_slice(&frame.into_data().unwrap());
        }
        let request = String::from_utf8(request).unwrap();
        assert!(request.starts_with("GET /x?y=1 HTTP/1.1\r\n"), "{request}");
        // A reply for the exchange needs the name's token too.
        let wrong = lp(addr, "POST", "reply", Some("rival"), Some(&id), empty()).await;
        assert_eq!(status(wrong), StatusCode::FORBIDDEN);
        let response = full("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let replied = lp(addr, "POST", "reply", Some("good"), Some(&id), response).await;
        assert_eq!(status(replied), StatusCode::NO_CONTENT);
        assert_eq!(public.await.unwrap(), (StatusCode::OK, "ok".to_string()));
        // The exchange over, the poll's body ends; a second reply finds nothing.
        while let Some(frame) = body.frame().await {
            frame.unwrap();
        }
        let again = lp(addr, "POST", "reply", Some("good"), Some(&id), empty()).await;
        assert_eq!(status(again), StatusCode::NOT_FOUND);
    })
    .await;
}

/// A request to `addr` for `/demo` with `fields`, on a connection of its own.
async fn with_fields(
    addr: SocketAddr,
    method: &str,
    fields: &[(&str, &str)],
    body: Body,
) -> Response<Incoming> {
    let mut req = Request::builder()
        .method(method)
        .uri("/demo")
        .header("host", addr.to_string());
    for (k, v) in fields {
        req = req.header(*k, *v);
    }
    support::send(addr, req.body(body).unwrap()).await
}

/// What a browser needs, by hand: CORS preflights and fields for an allowed origin only, and
/// a response sent as reply parts (`PTTH-More: ?1`) reaching the public client part by part.
#[tokio::test]
async fn cors_for_allowed_origins_and_a_response_in_reply_parts() {
    deadline(async {
        let mut cfg = support::anonymous();
        cfg.long_poll_origins = Some(vec!["http://page.example".into()]);
        let relay = support::start_relay(cfg).await;
        let addr = relay.addr;
        let ask = [
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, ptth-long-poll",
            ),
        ];
        let good = with_fields(
            addr,
            "OPTIONS",
            &[ask[0], ask[1], ("origin", "http://page.example")],
            empty(),
        )
        .await;
        assert_eq!(good.status(), StatusCode::NO_CONTENT);
        let h = good.headers();
        assert_eq!(h["access-control-allow-origin"], "http://page.example");
        assert_eq!(h["access-control-allow-methods"], "POST");
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        assert!(allowed.contains("ptth-long-poll") && allowed.contains("authorization"));
        let other = with_fields(
            addr,
            "OPTIONS",
            &[ask[0], ask[1], ("origin", "http://other.example")],
            empty(),
        )
        .await;
        assert!(!other.headers().contains_key("access-control-allow-origin"));

        let polling = tokio::spawn(with_fields(
            addr,
            "POST",
            &[
                ("ptth-long-poll", "poll"),
                ("origin", "http://page.example"),
            ],
            empty(),
        ));
        relay
            .handle
            .wait_until(|h| support::connections(h, "demo") == 1)
            .await;
        let res_public = tokio::spawn(public(addr, "GET", "/parts", empty()));
        let res = polling.await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()["access-control-allow-origin"],
            "http://page.example"
        );
        let exposed = res.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap();
        assert!(exposed.contains("ptth-exchange"), "{exposed}");
        let id = res.headers()["ptth-exchange"].to_str().unwrap().to_string();
        let part = |body: &'static str, more: bool| {
            let mut f = vec![("ptth-long-poll", "reply"), ("ptth-exchange", id.as_str())];
            if more {
                f.push(("ptth-more", "?1"));
            }
            async move { with_fields(addr, "POST", &f, full(body)).await }
        };
        let first = part(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n",
            true,
        )
        .await;
        assert_eq!(first.status(), StatusCode::NO_CONTENT);
        let public_res = res_public.await.unwrap();
        assert_eq!(public_res.status(), StatusCode::OK);
        let mut body = public_res.into_body();
        let got = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&got[..], b"first\n");
        let last = part("7\r\nsecond\n\r\n0\r\n\r\n", false).await;
        assert_eq!(last.status(), StatusCode::NO_CONTENT);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(&rest[..], b"second\n");
        let late = part("", true).await;
        assert_eq!(late.status(), StatusCode::NOT_FOUND);
    })
    .await;
}
