//! The request inspector (`ptth-connect --inspect`) through a real relay and a real upstream:
//! ngrok's agent API (list, limit, get, replay, delete), replay with edits, the ring's count
//! and byte bounds, the body cap (the public client still gets the whole body), a streamed SSE
//! response passing unbuffered with the inspector on, an open SSE stream listed in progress,
//! redaction, curl and HAR.
//!
//! Entries appear when a response head goes (in progress while a body follows) and are
//! complete when the exchange ends, which may be just after the public client has its
//! response: the tests wait on the inspector's own live feed (`/api/events`), never on time.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use ptth::agent::Agent;
use ptth::agent::Proxy;
use ptth::agent::inspect::{self, InspectConfig, Inspector, TIMING_FIELD, TIMING_QUEUE_WAIT};
use ptth::relay::Config;
use serde_json::Value;
use support::{deadline, start_relay};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

/// Size of the upstream's `/big` body: larger than any body cap here.
const BIG: usize = 200 * 1024;

/// The upstream: `/sse` streams two events, the second only once `second` is notified;
/// `/big` is [`BIG`] bytes; anything else echoes its method, path, a few fields and its body
/// as JSON.
async fn upstream(second: Arc<Notify>) -> SocketAddr {
    support::http_server(move || {
        let second = second.clone();
        hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let second = second.clone();
            async move { Ok::<_, Infallible>(answer(req, second).await) }
        })
    })
    .await
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(req: http::Request<Incoming>, second: Arc<Notify>) -> http::Response<UpBody> {
    match req.uri().path() {
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("data: one\n\n")))).await;
                second.notified().await;
                let _ = tx.send(Ok(Frame::data(Bytes::from("data: two\n\n")))).await;
            });
            http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(ChannelBody(rx)))
                .unwrap()
        }
        "/big" => http::Response::new(BodyExt::boxed(Full::new(Bytes::from(vec![b'x'; BIG])))),
        _ => {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let field = |n: &str| {
                req.headers()
                    .get(n)
                    .map(|v| v.to_str().unwrap_or("").to_string())
            };
            let (auth, edited, queue) = (
                field("authorization"),
                field("x-edited"),
                field("ptth-queue-wait"),
            );
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let text = serde_json::json!({
                "method": method, "uri": uri, "authorization": auth, "edited": edited,
                "queue_wait_seen": queue, "body": String::from_utf8_lossy(&body),
            });
            http::Response::builder()
                .header("content-type", "application/json")
                .header("set-cookie", "session=s3cret")
                .body(BodyExt::boxed(Full::new(Bytes::from(text.to_string()))))
                .unwrap()
        }
    }
}

/// A body fed piece by piece from a channel: each piece goes out as it is sent.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}

/// A relay, an upstream and an agent with an inspector: where each is.
struct Setup {
    relay: SocketAddr,
    inspector: SocketAddr,
    second: Arc<Notify>,
    _stop: oneshot::Sender<()>,
    _relay: support::TestRelay,
}

async fn setup(config: InspectConfig, ask_queue_wait: bool) -> Setup {
    let second = Arc::new(Notify::new());
    let up = upstream(second.clone()).await;
    let relay = start_relay(Config::default()).await;
    let mut builder = Agent::builder(format!("http://{}/app", relay.addr)).connections(2);
    if ask_queue_wait {
        builder = builder.header(TIMING_FIELD, TIMING_QUEUE_WAIT);
    }
    let agent = builder.build().unwrap();
    // As ptth-connect does: curl commands and the HAR name the agent's public URL.
    let inspector = Inspector::new(InspectConfig {
        public_url: Some(agent.public_url().to_string()),
        ..config
    });
    let proxy = Proxy::new(&format!("http://{up}"))
        .unwrap()
        .inspect(inspector.clone());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inspector_addr = l.local_addr().unwrap();
    tokio::spawn(inspect::serve(l, inspector, proxy.clone(), false));
    let (stop, rx) = oneshot::channel::<()>();
    tokio::spawn(agent.serve_proxy(proxy, async move {
        let _ = rx.await;
    }));
    relay.handle.wait_idle("app", 2).await;
    Setup {
        relay: relay.addr,
        inspector: inspector_addr,
        second,
        _stop: stop,
        _relay: relay,
    }
}

/// One request on a fresh connection: status, head, body (the whole response, read to the
/// close).
async fn http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut msg = head.replace('\n', "\r\n").into_bytes();
    msg.extend_from_slice(body);
    s.write_all(&msg).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head[9..12].parse().unwrap();
    let mut body = out[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = unchunk(&body);
    }
    (status, head, body)
}

fn unchunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap(), 16).unwrap();
        raw = &raw[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// A request to the inspector's API; the body parsed as JSON when there is one.
async fn api(s: &Setup, method: &str, path: &str, json: Option<&Value>) -> (u16, String, Value) {
    let body = json.map(|j| j.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\nHost: 127.0.0.1:{}\nConnection: close\n\
         Content-Type: application/json\nContent-Length: {}\n\n",
        s.inspector.port(),
        body.len()
    );
    let (status, head, body) = http(s.inspector, &head, body.as_bytes()).await;
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, head, v)
}

/// A public request through the relay to the agent `app`.
async fn public(s: &Setup, method: &str, path: &str, extra: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let head = format!(
        "{method} /app{path} HTTP/1.1\nHost: {}\nConnection: close\n{extra}Content-Length: {}\n\n",
        s.relay,
        body.len()
    );
    let (status, _, body) = http(s.relay, &head, body).await;
    (status, body)
}

/// The inspector's live feed, read event by event.
struct Feed(BufReader<TcpStream>);

impl Feed {
    async fn open(s: &Setup) -> Feed {
        let mut tcp = TcpStream::connect(s.inspector).await.unwrap();
        let head = format!(
            "GET /api/events HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            s.inspector.port()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut feed = Feed(BufReader::new(tcp));
        // The head, then the first event (`retry:`), which says the feed is subscribed.
        let mut line = String::new();
        loop {
            line.clear();
            feed.0.read_line(&mut line).await.unwrap();
            if line.starts_with("retry:") {
                return feed;
            }
        }
    }

    /// The next `request` or `update` event: its name and entry (chunk size lines and other
    /// events are skipped).
    async fn next_event(&mut self) -> (String, Value) {
        let mut line = String::new();
        let mut event = None;
        loop {
            line.clear();
            assert!(
                self.0.read_line(&mut line).await.unwrap() > 0,
                "feed closed"
            );
            if let Some(name) = line.strip_prefix("event: ") {
                event = Some(name.trim().to_string()).filter(|n| n == "request" || n == "update");
            } else if let Some(data) = line.strip_prefix("data: ")
                && let Some(name) = event.take()
            {
                return (name, serde_json::from_str(data.trim()).unwrap());
            }
        }
    }

    /// The next entry whose exchange has ended: a `request` event not in progress, or the
    /// `update` of one that was.
    async fn next_request(&mut self) -> Value {
        loop {
            let (_, e) = self.next_event().await;
            if e["in_progress"] == false {
                return e;
            }
        }
    }
}

/// [`setup`], and the feed of its inspector opened.
async fn watched(config: InspectConfig, ask_queue_wait: bool) -> (Setup, Feed) {
    let s = setup(config, ask_queue_wait).await;
    let feed = Feed::open(&s).await;
    (s, feed)
}

/// Ask the inspector to replay entry `id` as it was.
async fn replay_as_it_was(s: &Setup, id: &str) -> (u16, String, Value) {
    api(
        s,
        "POST",
        "/api/requests/http",
        Some(&serde_json::json!({"id": id})),
    )
    .await
}

fn b64(v: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn a_request_is_listed_with_ngroks_fields_and_replayed_with_and_without_edits() {
    deadline(async {
        let (s, mut feed) = watched(InspectConfig::default(), false).await;
        let (status, body) = public(
            &s,
            "POST",
            "/hook?x=1",
            "Content-Type: application/json\nAuthorization: Bearer s3cret\n",
            br#"{"a":1}"#,
        )
        .await;
        assert_eq!(status, 200);
        let seen: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            seen["authorization"], "Bearer s3cret",
            "forwarded untouched"
        );
        let live = feed.next_request().await;
        let id = live["id"].as_str().unwrap().to_string();

        let (status, _, list) = api(&s, "GET", "/api/requests/http", None).await;
        assert_eq!(status, 200);
        assert_eq!(list["uri"], "/api/requests/http");
        let e = &list["requests"][0];
        assert_eq!(e["id"], id.as_str());
        assert_eq!(e["uri"], format!("/api/requests/http/{id}"));
        assert_eq!(e["remote_addr"], "127.0.0.1");
        assert!(
            e["start"].as_str().unwrap().ends_with('Z'),
            "{}",
            e["start"]
        );
        assert!(e["duration"].as_u64().unwrap() > 0);
        assert_eq!(e["request"]["method"], "POST");
        assert_eq!(e["request"]["uri"], "/hook?x=1");
        assert_eq!(e["request"]["proto"], "HTTP/1.1");
        assert_eq!(
            e["request"]["headers"]["Content-Type"][0],
            "application/json"
        );
        assert_eq!(e["response"]["status_code"], 200);
        assert_eq!(e["response"]["status"], "200 OK");
        assert_eq!(e["request"]["body"]["text"], r#"{"a":1}"#);
        // Redacted by default, in the fields and in the raw bytes.
        assert_eq!(e["request"]["headers"]["Authorization"][0], "[redacted]");
        assert_eq!(e["response"]["headers"]["Set-Cookie"][0], "[redacted]");
        let raw = String::from_utf8(b64(&e["request"]["raw"])).unwrap();
        assert!(raw.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{raw}");
        assert!(
            raw.to_ascii_lowercase()
                .contains("authorization: [redacted]\r\n")
                && !raw.contains("s3cret")
        );
        assert!(raw.ends_with(r#"{"a":1}"#), "{raw}");
        assert!(!e["curl"].as_str().unwrap().contains("s3cret"));
        let timing = &e["timing"];
        assert!(timing["total_ms"].as_f64().unwrap() >= timing["upstream_ms"].as_f64().unwrap());
        assert!(timing["relay_queue_ms"].is_null(), "not asked for");

        // By id; an unknown id is a 404.
        let (status, _, one) = api(&s, "GET", &format!("/api/requests/http/{id}"), None).await;
        assert_eq!((status, &one["id"]), (200, &Value::from(id.as_str())));
        let (status, _, _) = api(&s, "GET", "/api/requests/http/ffff", None).await;
        assert_eq!(status, 404);

        // A replay is a new entry, and reaches the upstream with the credentials kept.
        let (status, head, _) = replay_as_it_was(&s, &id).await;
        assert_eq!(status, 204, "{head}");
        let replay = feed.next_request().await;
        assert_ne!(replay["id"], id.as_str());
        assert_eq!(replay["replay_of"], id.as_str());
        assert!(
            head.contains(&format!(
                "location: /api/requests/http/{}",
                replay["id"].as_str().unwrap()
            )),
            "{head}"
        );
        assert_eq!(replay["request"]["uri"], "/hook?x=1");
        let seen: Value =
            serde_json::from_str(replay["response"]["body"]["text"].as_str().unwrap()).unwrap();
        assert_eq!(seen["authorization"], "Bearer s3cret");
        assert_eq!(seen["body"], r#"{"a":1}"#);

        // With edits: method, path, a header set and one removed, the body.
        let edits = serde_json::json!({
            "id": id, "method": "PUT", "path": "/edited?y=2",
            "headers": {"X-Edited": "yes", "Authorization": null}, "body": "new body",
        });
        let (status, _, _) = api(&s, "POST", "/api/requests/http", Some(&edits)).await;
        assert_eq!(status, 204);
        let edited = feed.next_request().await;
        let seen: Value =
            serde_json::from_str(edited["response"]["body"]["text"].as_str().unwrap()).unwrap();
        assert_eq!(seen["method"], "PUT");
        assert_eq!(seen["uri"], "/edited?y=2");
        assert_eq!(seen["edited"], "yes");
        assert!(seen["authorization"].is_null());
        assert_eq!(seen["body"], "new body");

        // Bad edits are refused with a reason, and nothing is sent.
        for bad in [
            serde_json::json!({"id": id, "path": "no-slash"}),
            serde_json::json!({"id": id, "method": "G T"}),
            serde_json::json!({"id": id, "headers": {"X": "a\r\nInjected: 1"}}),
            serde_json::json!({"nothing": 1}),
        ] {
            let (status, _, _) = api(&s, "POST", "/api/requests/http", Some(&bad)).await;
            assert_eq!(status, 400, "{bad}");
        }

        // limit=N: the newest N, newest first.
        let (_, _, list) = api(&s, "GET", "/api/requests/http?limit=2", None).await;
        let ids: Vec<&str> = list["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                edited["id"].as_str().unwrap(),
                replay["id"].as_str().unwrap()
            ]
        );

        // curl and HAR.
        let (status, _, _) = api(&s, "GET", &format!("/api/requests/http/{id}/curl"), None).await;
        assert_eq!(status, 200);
        let (status, head, har) = api(&s, "GET", "/api/har", None).await;
        assert_eq!(status, 200, "{head}");
        assert_eq!(har["log"]["version"], "1.2");
        assert_eq!(har["log"]["entries"].as_array().unwrap().len(), 3);
        assert_eq!(har["log"]["entries"][0]["request"]["method"], "POST");
        assert_eq!(
            har["log"]["entries"][0]["request"]["url"],
            format!("http://{}/app/hook?x=1", s.relay)
        );
        assert_eq!(har["log"]["entries"][0]["response"]["status"], 200);

        // Status, then delete.
        let (status, _, st) = api(&s, "GET", "/api/status", None).await;
        assert_eq!((status, st["requests"].as_u64()), (200, Some(3)));
        let (status, _, _) = api(&s, "DELETE", "/api/requests/http", None).await;
        assert_eq!(status, 204);
        let (_, _, list) = api(&s, "GET", "/api/requests/http", None).await;
        assert_eq!(list["requests"], serde_json::json!([]));
        let (status, _, _) = replay_as_it_was(&s, &id).await;
        assert_eq!(status, 404, "a cleared entry cannot be replayed");
    })
    .await;
}

#[tokio::test]
async fn bodies_are_kept_up_to_the_cap_while_the_client_gets_them_whole() {
    deadline(async {
        let config = InspectConfig {
            body_limit: 1024,
            ..InspectConfig::default()
        };
        let (s, mut feed) = watched(config, false).await;
        let (status, body) = public(&s, "GET", "/big", "", b"").await;
        assert_eq!((status, body.len()), (200, BIG));
        assert!(body.iter().all(|&b| b == b'x'));
        let e = feed.next_request().await;
        let kept = &e["response"]["body"];
        assert_eq!(kept["size"], BIG as u64);
        assert_eq!(kept["kept"], 1024);
        assert_eq!(kept["truncated"], true);
        assert_eq!(kept["text"].as_str().unwrap().len(), 1024);

        // A request body past the cap cannot be replayed as it was, only with a new body.
        let upload = vec![b'u'; 5000];
        let (status, _) = public(&s, "POST", "/upload", "", &upload).await;
        assert_eq!(status, 200);
        let e = feed.next_request().await;
        assert_eq!(e["request"]["body"]["size"], 5000);
        let id = e["id"].as_str().unwrap();
        let (status, _, _) = replay_as_it_was(&s, id).await;
        assert_eq!(status, 409);
        let (status, _, _) = api(
            &s,
            "POST",
            "/api/requests/http",
            Some(&serde_json::json!({"id": id, "body": "short"})),
        )
        .await;
        assert_eq!(status, 204);
    })
    .await;
}

#[tokio::test]
async fn the_ring_holds_its_count_and_byte_bounds() {
    deadline(async {
        let config = InspectConfig {
            body_limit: 4096,
            max_requests: 3,
            max_bytes: 3 * 4096,
            ..InspectConfig::default()
        };
        let (s, mut feed) = watched(config, false).await;
        // By count: five small requests, three kept, the newest.
        let mut ids = Vec::new();
        for i in 0..5 {
            public(&s, "GET", &format!("/n{i}"), "", b"").await;
            ids.push(
                feed.next_request().await["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        let (_, _, list) = api(&s, "GET", "/api/requests/http", None).await;
        let kept: Vec<&str> = list["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request"]["uri"].as_str().unwrap())
            .collect();
        assert_eq!(kept, ["/n4", "/n3", "/n2"]);
        // By bytes: each /big keeps 4 KiB of body plus heads, so two fit in 12 KiB, not three.
        for _ in 0..3 {
            public(&s, "GET", "/big", "", b"").await;
            feed.next_request().await;
        }
        let (_, _, st) = api(&s, "GET", "/api/status", None).await;
        assert!(st["bytes"].as_u64().unwrap() <= 3 * 4096, "{st}");
        assert_eq!(st["requests"], 2, "{st}");
        assert!(st["dropped"].as_u64().unwrap() >= 4, "{st}");
    })
    .await;
}

#[tokio::test]
async fn a_streamed_response_passes_unbuffered_with_the_inspector_on() {
    deadline(async {
        let (s, mut feed) = watched(InspectConfig::default(), false).await;
        let mut tcp = TcpStream::connect(s.relay).await.unwrap();
        let head = format!(
            "GET /app/sse HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.relay
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        // The first event reaches the public client while the upstream holds the second.
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("data: one") {
            let mut buf = [0u8; 1024];
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before the first event: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert!(!String::from_utf8_lossy(&got).contains("data: two"));
        s.second.notify_one();
        tcp.read_to_end(&mut got).await.unwrap();
        assert!(String::from_utf8_lossy(&got).contains("data: two"));
        let e = feed.next_request().await;
        assert_eq!(e["request"]["uri"], "/sse");
        let text = e["response"]["body"]["text"].as_str().unwrap();
        assert_eq!(text, "data: one\n\ndata: two\n\n");
    })
    .await;
}

/// Copy-as-curl names the public URL the request came to (the relay's, with the service's
/// path), not the upstream or localhost, leaves out what the relay and curl add, and runs as
/// given: the request goes through the relay to the upstream again.
#[tokio::test]
async fn copy_as_curl_targets_the_public_url_and_runs_as_given() {
    deadline(async {
        let (s, mut feed) = watched(InspectConfig::default(), false).await;
        let (status, _) = public(
            &s,
            "PUT",
            "/items/7?v=2",
            "Content-Type: application/json\nX-Client: it's me\n",
            br#"{"n":7}"#,
        )
        .await;
        assert_eq!(status, 200);
        let e = feed.next_request().await;
        let id = e["id"].as_str().unwrap();
        let (status, _, _) = api(&s, "GET", &format!("/api/requests/http/{id}/curl"), None).await;
        assert_eq!(status, 200);
        let curl = e["curl"].as_str().unwrap().to_string();
        let url = format!("'http://{}/app/items/7?v=2'", s.relay);
        assert!(curl.ends_with(&url), "{curl}");
        let lower = curl.to_ascii_lowercase();
        for absent in [
            "'host:",
            "'x-forwarded-",
            "'forwarded:",
            "'content-length:",
            "'connection:",
        ] {
            assert!(!lower.contains(absent), "{absent} in {curl}");
        }
        assert!(curl.contains(r"-H 'X-Client: it'\''s me'"), "{curl}");
        if std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_err()
        {
            println!("skipped running the command: curl is not installed");
            return;
        }
        let out = tokio::process::Command::new("sh")
            .args(["-c", &format!("{curl} -sS")])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{curl}: {out:?}");
        let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(seen["method"], "PUT");
        assert_eq!(seen["uri"], "/items/7?v=2");
        assert_eq!(seen["body"], r#"{"n":7}"#);
        let again = feed.next_request().await;
        assert_eq!(again["request"]["uri"], "/items/7?v=2");
    })
    .await;
}

/// An SSE stream that stays open is listed once its response head has gone, marked in
/// progress (on the feed and in the API), and the same entry is updated when the stream ends.
#[tokio::test]
async fn an_open_sse_stream_is_listed_in_progress_and_updated_when_it_ends() {
    deadline(async {
        let (s, mut feed) = watched(InspectConfig::default(), false).await;
        let mut tcp = TcpStream::connect(s.relay).await.unwrap();
        let head = format!(
            "GET /app/sse HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.relay
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let (name, live) = feed.next_event().await;
        assert_eq!(name, "request");
        assert_eq!(live["in_progress"], true, "{live}");
        assert_eq!(live["request"]["uri"], "/sse");
        assert_eq!(live["response"]["status_code"], 200);
        assert_eq!(
            live["response"]["headers"]["Content-Type"][0],
            "text/event-stream"
        );
        let id = live["id"].as_str().unwrap().to_string();
        // The API shows it while the upstream holds the second event back.
        let (_, _, list) = api(&s, "GET", "/api/requests/http", None).await;
        assert_eq!(list["requests"].as_array().unwrap().len(), 1, "{list}");
        assert_eq!(list["requests"][0]["id"], id.as_str());
        assert_eq!(list["requests"][0]["in_progress"], true);
        let (status, _, one) = api(&s, "GET", &format!("/api/requests/http/{id}"), None).await;
        assert_eq!((status, &one["in_progress"]), (200, &Value::Bool(true)));
        let (_, _, har) = api(&s, "GET", "/api/har", None).await;
        assert_eq!(har["log"]["entries"].as_array().unwrap().len(), 1);
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("data: one") {
            let mut buf = [0u8; 1024];
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the first event");
            got.extend_from_slice(&buf[..n]);
        }

        // The stream ends: the same entry, whole.
        s.second.notify_one();
        tcp.read_to_end(&mut got).await.unwrap();
        let (name, done) = feed.next_event().await;
        assert_eq!(name, "update");
        assert_eq!(done["id"], id.as_str());
        assert_eq!(done["in_progress"], false);
        assert_eq!(
            done["response"]["body"]["text"],
            "data: one\n\ndata: two\n\n"
        );
        let (_, _, list) = api(&s, "GET", "/api/requests/http", None).await;
        let all = list["requests"].as_array().unwrap();
        assert_eq!(all.len(), 1, "replaced, not added: {list}");
        assert_eq!(all[0]["in_progress"], false);
        let (_, _, st) = api(&s, "GET", "/api/status", None).await;
        assert_eq!(st["requests"], 1, "{st}");

        // A response without a body is never in progress: one `request` event, ended.
        public(&s, "HEAD", "/x", "", b"").await;
        let (name, e) = feed.next_event().await;
        assert_eq!(
            (name.as_str(), &e["in_progress"]),
            ("request", &Value::Bool(false))
        );
    })
    .await;
}

#[tokio::test]
async fn credentials_are_shown_only_when_asked_and_the_host_must_be_loopback() {
    deadline(async {
        let config = InspectConfig {
            redact: false,
            ..InspectConfig::default()
        };
        let (s, mut feed) = watched(config, false).await;
        public(&s, "GET", "/c", "Cookie: a=b\n", b"").await;
        let e = feed.next_request().await;
        assert_eq!(e["request"]["headers"]["Cookie"][0], "a=b");
        assert_eq!(e["response"]["headers"]["Set-Cookie"][0], "session=s3cret");
        // A page on another name (DNS rebinding) is not answered.
        let head =
            "GET /api/requests/http HTTP/1.1\nHost: evil.example:4040\nConnection: close\n\n";
        let (status, _, _) = http(s.inspector, head, b"").await;
        assert_eq!(status, 403);
        // A replay asked for by a form (not JSON) is refused.
        let head = "POST /api/requests/http HTTP/1.1\nHost: localhost\nConnection: close\n\
                    Content-Type: text/plain\nContent-Length: 2\n\n";
        let (status, _, _) = http(s.inspector, head, b"{}").await;
        assert_eq!(status, 415);
        // The page itself.
        let head = "GET / HTTP/1.1\nHost: localhost\nConnection: close\n\n";
        let (status, _, page) = http(s.inspector, head, b"").await;
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&page).contains("new EventSource(\"/api/events\")"));
    })
    .await;
}

#[tokio::test]
async fn the_relay_reports_its_queue_wait_only_when_asked_and_the_upstream_never_sees_it() {
    deadline(async {
        let (s, mut feed) = watched(InspectConfig::default(), true).await;
        // A client's own field is dropped by the relay: the figure is the relay's.
        let (status, body) = public(&s, "GET", "/q", "PTTH-Queue-Wait: 999999999\n", b"").await;
        assert_eq!(status, 200);
        let seen: Value = serde_json::from_slice(&body).unwrap();
        assert!(seen["queue_wait_seen"].is_null(), "{seen}");
        let e = feed.next_request().await;
        let wait = e["timing"]["relay_queue_ms"].as_f64().expect("reported");
        assert!((0.0..999_999.0).contains(&wait), "{wait}");
        // A replay does not pass the relay: it has no queue wait of its own.
        let id = e["id"].as_str().unwrap();
        let (status, _, _) = replay_as_it_was(&s, id).await;
        assert_eq!(status, 204);
        let replay = feed.next_request().await;
        assert!(
            replay["timing"]["relay_queue_ms"].is_null(),
            "{}",
            replay["timing"]
        );

        // Not asked for: not reported, whatever the client sends.
        let (s, mut feed) = watched(InspectConfig::default(), false).await;
        public(&s, "GET", "/q", "PTTH-Queue-Wait: 999999999\n", b"").await;
        let e = feed.next_request().await;
        assert!(e["timing"]["relay_queue_ms"].is_null(), "{}", e["timing"]);
    })
    .await;
}
