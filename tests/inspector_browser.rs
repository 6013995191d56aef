//! The inspector's page in a real headless Chromium (Debian's `chromium`), driven over the
//! DevTools protocol by `tests/browser/inspector_cdp.py` (Python's websocket-client: a short
//! script instead of a CDP crate and its dependency tree in the build): the real `ptth-serve`
//! and `ptth-connect --inspect`, a request through the relay appearing live, a click on
//! Replay, the replay appearing live, JSON bodies pretty-printed, and an SSE stream that stays
//! open listed at once as streaming and completed in place when it ends. Skips with a printed reason without chromium, python3 or
//! websocket-client (`.ci/run` installs them). The screenshot is written to
//! `$CARGO_TARGET_TMPDIR/inspector.png`, or to `PTTH_INSPECTOR_SCREENSHOT` when set (the
//! README's `docs/inspector.png` is made that way).

mod support;
use support::bins;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;

/// An upstream on 127.0.0.1:0 that answers every request with a small JSON document, except
/// `/events`: an SSE stream that sends one event, then a second and ends only once a request
/// to `/release` has come.
async fn json_upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let release = release.clone();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let release = release.clone();
                    async move {
                        let res = match req.uri().path() {
                            "/events" => {
                                let (tx, body) = support::channel_body();
                                tokio::spawn(async move {
                                    let _ = tx.send(bytes::Bytes::from("data: one\n\n")).await;
                                    release.notified().await;
                                    let _ = tx.send(bytes::Bytes::from("data: two\n\n")).await;
                                });
                                http::Response::builder()
                                    .header("content-type", "text/event-stream")
                                    .body(body)
                                    .unwrap()
                            }
                            path => {
                                if path == "/release" {
                                    release.notify_one();
                                }
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(support::full(r#"{"ok":true,"queued":1}"#))
                                    .unwrap()
                            }
                        };
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
            );
        }
    });
    format!("http://{addr}")
}

fn chromium() -> Option<String> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_string)
}

#[tokio::test]
async fn the_page_shows_a_request_live_and_replays_it_in_chromium() {
    let Some(chromium) = chromium() else {
        println!("skipped: chromium is not installed (apt-get install chromium)");
        return;
    };
    // The whole run, Chromium's start included.
    support::deadline_of(support::SLOW_PEER_DEADLINE, async {
        let (_relay, _, _out, relay_addr) =
            bins::serve_ready(&["--listen", "127.0.0.1:0"], "public:").await;
        let to = json_upstream().await;
        let mut agent = bins::connect(
            &[
                &format!("http://{relay_addr}/demo"),
                "--to",
                &to,
                "--connections",
                "1",
                "--inspect",
                "127.0.0.1:0",
            ],
            Some("info"),
        );
        let mut err = BufReader::new(agent.stderr.take().unwrap());
        let line = bins::line_with(&mut err, "inspector on http://")
            .await
            .unwrap();
        let url = line
            .split("inspector on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_string();
        bins::line_with(&mut err, "connected to the relay")
            .await
            .unwrap();
        // Keep reading, so the agent never blocks on a full pipe.
        tokio::spawn(async move {
            while err.read_line(&mut String::new()).await.is_ok_and(|n| n > 0) {}
        });
        let shot = std::env::var("PTTH_INSPECTOR_SCREENSHOT")
            .unwrap_or_else(|_| format!("{}/inspector.png", env!("CARGO_TARGET_TMPDIR")));
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/inspector_cdp.py"
        );
        let out = match Command::new("python3")
            .args([
                script,
                &chromium,
                &url,
                &relay_addr.to_string(),
                "demo",
                &shot,
            ])
            .kill_on_drop(true)
            .output()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                println!("skipped: python3 cannot be run: {e}");
                return;
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(77) {
            println!("{stdout}");
            return;
        }
        assert!(
            out.status.success(),
            "the browser run failed:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("ok: the replay appears live"), "{stdout}");
        assert!(
            stdout.contains("ok: the stream's row is complete"),
            "{stdout}"
        );
        let png = std::fs::read(&shot).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        println!("{stdout}");
    })
    .await;
}

#[tokio::test]
async fn a_public_inspector_address_needs_its_flag() {
    let (code, _, err) = bins::run(
        env!("CARGO_BIN_EXE_ptth-connect"),
        &[
            "http://127.0.0.1:9/demo",
            "--to",
            "http://127.0.0.1:9",
            "--inspect",
            "0.0.0.0:0",
        ],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(err.contains("--allow-public-inspect"), "{err}");
}
