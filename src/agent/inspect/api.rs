//! The inspector's HTTP side: the page and ngrok's agent API, served by hyper on a local
//! address (not the forwarding path, so hyper's server is plenty).
//!
//! | Route | What |
//! |---|---|
//! | `GET /` | the page (`page.html`, self-contained) |
//! | `GET /api/status` | counts and settings |
//! | `GET /api/requests/http?limit=N` | ngrok's list, newest first |
//! | `GET /api/requests/http/{id}` | one entry |
//! | `GET /api/requests/http/{id}/curl` | the request as a curl command |
//! | `POST /api/requests/http` | `{"id": ...}` replays it (edits: `method`, `path`, `headers`, `body`, `body_base64`); `204` |
//! | `DELETE /api/requests/http` | clears the history; `204` |
//! | `GET /api/har` | the history as HAR 1.2 |
//! | `GET /api/events` | new entries as they come, and entries in progress when they end (server-sent events) |
//!
//! A request whose `Host` is not a loopback name is refused unless the inspector is public (a
//! web page elsewhere cannot reach it by DNS rebinding), and a replay must be sent as
//! `application/json` (which a cross-site form cannot send without a CORS preflight, which is
//! never granted).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

use super::entry::Entry;
use super::{Event, Inspector, QUEUE_WAIT_FIELD, ReplayTap};
use crate::agent::config::{INSPECT_MAX_API_BODY, REPLAY_TIMEOUT};
use crate::agent::proxy::Proxy;
use crate::limits::Limits;

/// The page, one file with its script and style.
const PAGE: &str = include_str!("page.html");

/// Events a live page may fall behind by before it is told to reload the list.
const SSE_QUEUE: usize = 64;

type ApiBody = BoxBody<Bytes, Infallible>;

/// Serve the inspector on `listener` until the task is dropped. Replays go to `proxy`'s
/// upstream. With `public` false, only requests naming a loopback host are answered.
pub async fn serve(listener: TcpListener, inspector: Inspector, proxy: Proxy, public: bool) {
    crate::admin::accept_loop(listener, "inspector", std::future::pending(), move || {
        let inspector = inspector.clone();
        let proxy = proxy.clone();
        hyper::service::service_fn(move |req| {
            let inspector = inspector.clone();
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(route(req, &inspector, &proxy, public).await) }
        })
    })
    .await;
}

async fn route(
    req: Request<Incoming>,
    inspector: &Inspector,
    proxy: &Proxy,
    public: bool,
) -> Response<ApiBody> {
    if !public && !loopback_host(&req) {
        return text(
            StatusCode::FORBIDDEN,
            "the inspector answers only requests to a loopback host (localhost, 127.0.0.1, [::1])\n",
        );
    }
    let shown = inspector.config();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, &segments[..]) {
        (&Method::GET, [""]) => Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(full(PAGE))
            .expect("a valid response"),
        (&Method::GET, ["api", "status"]) => {
            let (requests, bytes, dropped) = inspector.counts();
            let c = inspector.config();
            json_response(
                StatusCode::OK,
                &json!({
                    "uri": "/api/status",
                    "status": "online",
                    "agent_version": env!("CARGO_PKG_VERSION"),
                    "requests": requests,
                    "bytes": bytes,
                    "dropped": dropped,
                    "body_limit": c.body_limit,
                    "max_requests": c.max_requests,
                    "max_bytes": c.max_bytes,
                    "redact": c.redact,
                }),
            )
        }
        (&Method::GET, ["api", "requests", "http"]) => {
            let limit = match query_limit(req.uri().query()) {
                Ok(l) => l,
                Err(e) => return text(StatusCode::BAD_REQUEST, &e),
            };
            let list: Vec<Value> = inspector
                .list(limit)
                .iter()
                .map(|e| e.to_json(shown))
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"uri": "/api/requests/http", "requests": list}),
            )
        }
        (&Method::GET, ["api", "requests", "http", id]) => match inspector.get(id) {
            Some(e) => json_response(StatusCode::OK, &e.to_json(shown)),
            None => not_found(id),
        },
        (&Method::GET, ["api", "requests", "http", id, "curl"]) => match inspector.get(id) {
            Some(e) => text(StatusCode::OK, &format!("{}\n", e.curl(shown))),
            None => not_found(id),
        },
        (&Method::DELETE, ["api", "requests", "http"]) => {
            inspector.clear();
            empty(StatusCode::NO_CONTENT)
        }
        (&Method::POST, ["api", "requests", "http"]) => replay(req, inspector, proxy).await,
        (&Method::GET, ["api", "har"]) => {
            let mut list = inspector.list(usize::MAX);
            list.reverse();
            let entries: Vec<Value> = list.iter().map(|e| e.to_har(shown)).collect();
            let har = json!({"log": {
                "version": "1.2",
                "creator": {"name": "ptth-connect", "version": env!("CARGO_PKG_VERSION")},
                "entries": entries,
            }});
            let mut res = json_response(StatusCode::OK, &har);
            res.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                http::HeaderValue::from_static("attachment; filename=\"ptth.har\""),
            );
            res
        }
        (&Method::GET, ["api", "events"]) => events(inspector),
        (_, ["api", ..]) | (_, [""]) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "no such method on this resource\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `Host` names a loopback address: `localhost`, `127.0.0.0/8`, `[::1]`, with any port.
fn loopback_host(req: &Request<Incoming>) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn query_limit(query: Option<&str>) -> Result<usize, String> {
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("limit=") {
            return v
                .parse()
                .map_err(|_| format!("limit={v:?} is not a count\n"));
        }
    }
    Ok(usize::MAX)
}

/// `POST /api/requests/http`: replay an entry, maybe edited; `204` with the new entry's
/// address in `Location`.
async fn replay(req: Request<Incoming>, inspector: &Inspector, proxy: &Proxy) -> Response<ApiBody> {
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json_type {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a replay is asked for with Content-Type: application/json\n",
        );
    }
    let body = match Limited::new(req.into_body(), INSPECT_MAX_API_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("reading the replay request: {e}\n"),
            );
        }
    };
    let ask: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("bad JSON: {e}\n")),
    };
    let Some(id) = ask.get("id").and_then(Value::as_str) else {
        return text(
            StatusCode::BAD_REQUEST,
            "give the \"id\" of the request to replay\n",
        );
    };
    let Some(entry) = inspector.get(id) else {
        return not_found(id);
    };
    let message = match replay_message(&entry, &ask) {
        Ok(m) => m,
        Err((status, why)) => return text(status, &format!("{why}\n")),
    };
    let tap = ReplayTap {
        inspector,
        of: entry.id.clone(),
        id: std::sync::Mutex::new(None),
    };
    let limits = Limits::default();
    if tokio::time::timeout(REPLAY_TIMEOUT, proxy.replay(&message, &tap, &limits))
        .await
        .is_err()
    {
        return text(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("the replay did not end within {REPLAY_TIMEOUT:?}\n"),
        );
    }
    let mut res = empty(StatusCode::NO_CONTENT);
    if let Some(new) = tap.id.into_inner().unwrap_or_else(|p| p.into_inner())
        && let Ok(v) = http::HeaderValue::from_str(&format!("/api/requests/http/{new}"))
    {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// The message a replay sends: the recorded request with the edits in `ask` (`method`,
/// `path`, `headers` as an object of name to value or `null` to remove, `body` as text or
/// `body_base64`).
fn replay_message(entry: &Entry, ask: &Value) -> Result<Vec<u8>, (StatusCode, String)> {
    let bad = |why: String| (StatusCode::BAD_REQUEST, why);
    let method = match ask.get("method") {
        Some(Value::String(m)) => m.clone(),
        None | Some(Value::Null) => entry.request.first.clone(),
        Some(_) => return Err(bad("\"method\" is a string".into())),
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(bad(format!("bad method {method:?}")));
    }
    let path = match ask.get("path") {
        Some(Value::String(p)) => p.clone(),
        None | Some(Value::Null) => entry.request.second.clone(),
        Some(_) => return Err(bad("\"path\" is a string".into())),
    };
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad(format!(
            "bad path {path:?}: it starts with / and has no spaces or controls"
        )));
    }
    let body: Vec<u8> = match (ask.get("body"), ask.get("body_base64")) {
        (Some(Value::String(t)), _) => t.clone().into_bytes(),
        (_, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| bad(format!("\"body_base64\": {e}")))?,
        _ if entry.request_body.truncated() => {
            return Err((
                StatusCode::CONFLICT,
                format!(
                    "only {} of the body's {} bytes were kept: give a \"body\" to replay it",
                    entry.request_body.bytes.len(),
                    entry.request_body.total
                ),
            ));
        }
        _ => entry.request_body.bytes.clone(),
    };
    let framing = |n: &str| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    };
    let had_body = entry.request.fields.iter().any(|(n, _)| framing(n));
    let mut fields: Vec<(String, String)> = entry
        .request
        .fields
        .iter()
        // The relay's queue wait belonged to the first trip; a replay does not pass the relay.
        .filter(|(n, _)| !framing(n) && !n.eq_ignore_ascii_case(QUEUE_WAIT_FIELD))
        .cloned()
        .collect();
    match ask.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(edits)) => {
            for (name, value) in edits {
                if name.is_empty() || !name.bytes().all(is_tchar) || framing(name) {
                    return Err(bad(format!("bad or framing header name {name:?}")));
                }
                fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                match value {
                    Value::String(v) if !v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) => {
                        fields.push((name.clone(), v.clone()))
                    }
                    Value::Null => {}
                    _ => {
                        return Err(bad(format!(
                            "header {name:?}: a value is a string without CR or LF, or null"
                        )));
                    }
                }
            }
        }
        Some(_) => return Err(bad("\"headers\" is an object of name to value".into())),
    }
    let mut m = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    for (n, v) in &fields {
        m.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if had_body || !body.is_empty() {
        m.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    m.extend_from_slice(b"\r\n");
    m.extend_from_slice(&body);
    Ok(m)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `GET /api/events`: one `request` event per new entry (its JSON; `in_progress` while its
/// response body has not ended), `update` when an entry in progress ends (the entry, same id),
/// `clear` when the history is cleared, `lagged` when this page fell behind (it reloads the
/// list).
fn events(inspector: &Inspector) -> Response<ApiBody> {
    let mut feed = inspector.subscribe();
    let shown = inspector.config().clone();
    let (tx, rx) = mpsc::channel::<Bytes>(SSE_QUEUE);
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b"retry: 1000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let next = tokio::select! {
                // The page went away while nothing happened: no task is left behind.
                () = tx.closed() => return,
                next = feed.recv() => next,
            };
            let event = match next {
                Ok(Event::Added(e)) => format!("event: request\ndata: {}\n\n", e.to_json(&shown)),
                Ok(Event::Updated(e)) => format!("event: update\ndata: {}\n\n", e.to_json(&shown)),
                Ok(Event::Cleared) => "event: clear\ndata: {}\n\n".to_string(),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    "event: lagged\ndata: {}\n\n".to_string()
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            // The page went away.
            if tx.send(Bytes::from(event)).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(BoxBody::new(Feed(rx)))
        .expect("a valid response")
}

/// A body of what a channel gives, piece by piece.
struct Feed(mpsc::Receiver<Bytes>);

impl Body for Feed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn full(b: impl Into<Bytes>) -> ApiBody {
    BoxBody::new(Full::new(b.into()))
}

fn empty(status: StatusCode) -> Response<ApiBody> {
    let mut res = Response::new(full(Bytes::new()));
    *res.status_mut() = status;
    res
}

fn text(status: StatusCode, body: &str) -> Response<ApiBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(body.to_string()))
        .expect("a valid response")
}

fn json_response(status: StatusCode, v: &Value) -> Response<ApiBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(v.to_string()))
        .expect("a valid response")
}

fn not_found(id: &str) -> Response<ApiBody> {
    text(
        StatusCode::NOT_FOUND,
        &format!("no request {id:?} in the history\n"),
    )
}
