//! The browser agent (`/.ptth/agent.js`) in a real headless Chromium (Debian's `chromium`): a
//! page served from another origin (another port) loads the library from the relay, claims a
//! name with a token, and public requests get the page handler's answers: a GET, a POST body,
//! and a streamed response whose second part is produced only after the public client has read
//! the first. Chromium is started by the test with a fresh profile and killed by its PID.
//! Skipped with the reason when chromium is not installed (`.ci/run` installs it).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ptth::relay::Tokens;
use support::{TestBody, deadline, full, status_text as text};

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// The page: loads the library from the relay and serves the name `web` from a handler.
fn page(relay: SocketAddr) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>ptth page agent</title>
<script src="http://{relay}/.ptth/agent.js"></script>
<script>
let release;
const released = new Promise((r) => (release = r));
const text = (s) => new TextEncoder().encode(s);
window.handle = ptth.serve("http://{relay}", "web", async (req) => {{
  // request.url is the public URL: the page's paths are under handle.url.
  const path = "/" + req.url.slice(window.handle.url.length).split("?")[0];
  if (path === "/hello") return new Response("hello from the page");
  if (path === "/echo") {{
    const body = await req.text();
    return new Response(req.method + " " + body.toUpperCase(), {{ headers: {{ "x-from": "page" }} }});
  }}
  if (path === "/release") {{ release(); return new Response("released"); }}
  if (path === "/stream") {{
    return new Response(new ReadableStream({{
      async start(c) {{
        c.enqueue(text("first\n"));
        await released;
        c.enqueue(text("second\n"));
        c.close();
      }},
    }}), {{ headers: {{ "content-type": "text/plain" }} }});
  }}
  return new Response("no such page path", {{ status: 404 }});
}}, {{ token: "tok" }});
document.title = "serving " + window.handle.url;
</script>"#
    )
}

/// A server for the page, on its own port (another origin than the relay's).
async fn page_server(html: String) -> SocketAddr {
    support::http_server(move || {
        let html = html.clone();
        hyper::service::service_fn(move |_req: Request<Incoming>| {
            let html = html.clone();
            async move {
                let mut res = Response::new(full(html));
                res.headers_mut()
                    .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
                Ok::<_, Infallible>(res)
            }
        })
    })
    .await
}

/// A public request to the relay for `/web{path}`.
async fn public(addr: SocketAddr, method: &str, path: &str, body: TestBody) -> Response<Incoming> {
    support::request(addr, method, &format!("/web{path}"), body).await
}

/// Chromium, killed by its PID when dropped.
struct Browser(std::process::Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_page_in_chromium_serves_a_name_through_the_relay() {
    let Some(chromium) = chromium() else {
        return eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
    };
    deadline(async {
        let mut cfg = support::anonymous();
        cfg.tokens = Some(Tokens::parse("web tok\n").unwrap());
        let relay = support::start_relay(cfg).await;
        let addr = relay.addr;

        // The library as the relay serves it.
        let js = Request::get("/.ptth/agent.js")
            .header("host", addr.to_string())
            .body(full(""))
            .unwrap();
        let res = support::send(addr, js).await;
        assert_eq!(
            res.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        let (status, js) = text(res).await;
        assert_eq!(status, StatusCode::OK);
        assert!(js.contains("function serve("), "{js}");

        let page = page_server(page(addr)).await;
        let profile = tempfile::tempdir().unwrap();
        let _browser = Browser(
            std::process::Command::new(chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(format!("http://{page}/"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );

        // The page claims the name once Chromium has loaded it.
        let mut served = None;
        for _ in 0..600 {
            let (status, body) = text(public(addr, "GET", "/hello", full("")).await).await;
            if status == StatusCode::OK {
                served = Some(body);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(served.as_deref(), Some("hello from the page"));
        let (status, _) = text(public(addr, "GET", "/nothing", full("")).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let res = public(addr, "POST", "/echo", full("a body from curl")).await;
        assert_eq!(res.headers()["x-from"], "page");
        assert_eq!(
            text(res).await,
            (StatusCode::OK, "POST A BODY FROM CURL".to_string())
        );

        // Streamed: the first part arrives while the handler still waits to send the second.
        let res = public(addr, "GET", "/stream", full("")).await;
        assert_eq!(res.status(), StatusCode::OK);
        let mut body = res.into_body();
        let mut got = Vec::new();
        while !got.ends_with(b"first\n") {
            let frame = body.frame().await.expect("the stream ended").unwrap();
            got.extend_from_slice(&frame.into_data().unwrap_or_default());
        }
        assert_eq!(
            text(public(addr, "GET", "/release", full("")).await).await,
            (StatusCode::OK, "released".to_string())
        );
        while let Some(frame) = body.frame().await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap_or_else(|_| Bytes::new()));
        }
        assert_eq!(String::from_utf8_lossy(&got), "first\nsecond\n");
    })
    .await;
}
