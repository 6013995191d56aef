//! Operating the relay (issue 19): `/metrics` (requests by name and exact status code, 502, 503
//! and 504 told apart, client errors apart from gateway errors, no series for names nobody
//! holds; claims and refusals; per-name series gone when the name is forgotten; the process and
//! build series), `--access-log` (one line per public request), the INFO log of names coming
//! and going, and errors that say what is wrong (a 404 naming the domain, plain HTTP on the TLS
//! port).

mod support;

use support::global_logs::{global_logs, log_lines};
use support::pki;

use std::time::Duration;

use http::{Response, StatusCode};
use ptth::relay::{AccessLogTarget, Tokens};
use support::*;
use tokio::sync::mpsc;

fn with_admin(mut cfg: ptth::relay::Config) -> ptth::relay::Config {
    cfg.admin = Some("127.0.0.1:0".parse().unwrap());
    cfg
}

async fn scrape(relay: &TestRelay) -> String {
    let (s, headers, text) = get(relay.handle.admin_addr().unwrap(), "/metrics", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    text
}

/// The value of the series `series` (name and labels exactly as exposed), if present.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    })
}

#[tokio::test]
async fn gateway_errors_are_told_apart_by_exact_code() {
    deadline(async {
        let mut cfg = with_admin(anonymous());
        cfg.response_timeout = Duration::from_millis(200);
        cfg.reconnect_window = Duration::from_millis(100);
        let relay = start_relay(cfg).await;
        let (hung_tx, mut hung) = mpsc::unbounded_channel();
        let app = handler(move |req: http::Request<hyper::body::Incoming>| {
            let hung_tx = hung_tx.clone();
            async move {
                match req.uri().path() {
                    "/teapot" => {
                        let mut r = Response::new(full("short and stout"));
                        *r.status_mut() = StatusCode::IM_A_TEAPOT;
                        r
                    }
                    "/hang" => {
                        hung_tx.send(()).unwrap();
                        std::future::pending().await
                    }
                    _ => Response::new(full("ok")),
                }
            }
        });
        let _app = start_agent(&relay, "app", 2, None, app.clone()).await;
        assert_eq!(get(relay.addr, "/app/", None).await.0, 200);
        assert_eq!(get(relay.addr, "/app/teapot", None).await.0, 418);
        // 504: the agent takes its request and never answers.
        assert_eq!(get(relay.addr, "/app/hang", None).await.0, 504);
        hung.recv().await.unwrap();

        // 502: the agent dies while it holds the request.
        let doomed = start_agent(&relay, "doomed", 1, None, app).await;
        let relay_addr = relay.addr;
        let pending = tokio::spawn(async move { get(relay_addr, "/doomed/hang", None).await.0 });
        hung.recv().await.unwrap();
        doomed.kill();
        assert_eq!(pending.await.unwrap(), 502);
        // 503: it stays away past the reconnect window.
        relay
            .handle
            .wait_until(|h| state(h, "doomed") == Some(ptth::relay::NameState::Offline))
            .await;
        assert_eq!(get(relay.addr, "/doomed/", None).await.0, 503);
        // 404: nobody ever held this name; it gets no series of its own.
        assert_eq!(get(relay.addr, "/nobody/", None).await.0, 404);

        let m = scrape(&relay).await;
        let count = |s: &str| value(&m, &format!("ptth_requests_total{s}"));
        assert_eq!(count("{name=\"app\",code=\"200\"}"), Some(1.0), "{m}");
        assert_eq!(count("{name=\"app\",code=\"418\"}"), Some(1.0), "{m}");
        assert_eq!(count("{name=\"app\",code=\"504\"}"), Some(1.0), "{m}");
        assert_eq!(count("{name=\"doomed\",code=\"502\"}"), Some(1.0), "{m}");
        assert_eq!(count("{name=\"doomed\",code=\"503\"}"), Some(1.0), "{m}");
        assert_eq!(count("{name=\"\",code=\"404\"}"), Some(1.0), "{m}");
        assert!(!m.contains("nobody"), "{m}");
        // The histogram saw every response; the bodies were counted.
        assert_eq!(value(&m, "ptth_response_seconds_count"), Some(6.0), "{m}");
        let to_public = value(&m, "ptth_bytes_total{direction=\"to_public\"}").unwrap();
        assert!(
            to_public >= ("ok".len() + "short and stout".len()) as f64,
            "{m}"
        );
        assert_eq!(value(&m, "ptth_agent_connects_total"), Some(3.0), "{m}");
        assert_eq!(
            value(&m, "ptth_names{state=\"connected\"}"),
            Some(1.0),
            "{m}"
        );
        assert_eq!(value(&m, "ptth_names{state=\"offline\"}"), Some(1.0), "{m}");
        // The standard process series and the build.
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            value(&m, &format!("ptth_build_info{{version=\"{version}\"}}")),
            Some(1.0),
            "{m}"
        );
        for series in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(value(&m, series).is_some_and(|v| v > 0.0), "{series}: {m}");
        }
    })
    .await
}

#[tokio::test]
async fn claim_refusals_are_counted_by_reason() {
    deadline(async {
        let mut cfg = with_admin(anonymous());
        cfg.tokens = Some(Tokens::parse("app secret-a\nother secret-b\n").unwrap());
        let relay = start_relay(cfg).await;
        let _app = start_agent(&relay, "app", 1, Some("secret-a"), echo_handler("a")).await;
        for (name, token) in [
            ("app", None),                   // no token
            ("app", Some("wrong")),          // a wrong token
            ("app", Some("secret-b")),       // another name's token
            ("bad_name!", Some("secret-a")), // not a name
        ] {
            let req = claim_request(relay.addr, name, token);
            assert!(
                connect_one(relay.addr, &req, echo_handler("x"))
                    .await
                    .is_err()
            );
        }
        let m = scrape(&relay).await;
        let refused = |r: &str| value(&m, &format!("ptth_claim_refusals_total{{reason=\"{r}\"}}"));
        assert_eq!(refused("token"), Some(2.0), "{m}");
        assert_eq!(refused("wrong_name"), Some(1.0), "{m}");
        assert_eq!(refused("bad_name"), Some(1.0), "{m}");
        assert_eq!(value(&m, "ptth_agent_connects_total"), Some(1.0), "{m}");
    })
    .await
}

#[tokio::test]
async fn a_name_conflict_is_counted() {
    deadline(async {
        let mut cfg = with_admin(anonymous());
        cfg.tokens = Some(Tokens::parse("* one\n* two\n").unwrap());
        let relay = start_relay(cfg).await;
        let _app = start_agent(&relay, "app", 1, Some("one"), echo_handler("a")).await;
        let req = claim_request(relay.addr, "app", Some("two"));
        assert!(
            connect_one(relay.addr, &req, echo_handler("x"))
                .await
                .is_err()
        );
        let m = scrape(&relay).await;
        assert_eq!(
            value(&m, "ptth_claim_refusals_total{reason=\"conflict\"}"),
            Some(1.0),
            "{m}"
        );
    })
    .await
}

#[tokio::test]
async fn a_forgotten_name_loses_its_series() {
    deadline(async {
        let mut cfg = with_admin(anonymous());
        cfg.grace = Duration::from_millis(200);
        cfg.reconnect_window = Duration::from_millis(100);
        let relay = start_relay(cfg).await;
        let _steady = start_agent(&relay, "steady", 1, None, echo_handler("s")).await;
        let brief = start_agent(&relay, "brief", 1, None, echo_handler("b")).await;
        assert_eq!(get(relay.addr, "/brief/", None).await.0, 200);
        assert_eq!(get(relay.addr, "/steady/", None).await.0, 200);
        let m = scrape(&relay).await;
        assert!(
            m.contains("ptth_requests_total{name=\"brief\",code=\"200\"} 1"),
            "{m}"
        );
        brief.kill();
        relay
            .handle
            .wait_until(|h| h.stats().iter().all(|s| s.name != "brief"))
            .await;
        let m = scrape(&relay).await;
        assert!(!m.contains("brief"), "{m}");
        assert!(
            m.contains("ptth_requests_total{name=\"steady\",code=\"200\"} 1"),
            "{m}"
        );
    })
    .await
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request() {
    deadline(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut cfg = anonymous();
        cfg.access_log = Some(AccessLogTarget::File(path.clone()));
        let mut relay = start_relay(cfg).await;
        let _app = start_agent(&relay, "app", 1, None, echo_handler("a")).await;
        let (status, _, body) = get(relay.addr, "/app/x?q=1", None).await;
        assert_eq!(status, 200);
        assert_eq!(get(relay.addr, "/nobody/y", None).await.0, 404);
        // The relay writes what it queued before `run` returns.
        relay.shutdown();
        (&mut relay.task).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let (ok, missing) = (&lines[0], &lines[1]);
        assert_eq!(ok["name"], "app");
        assert_eq!(ok["method"], "GET");
        assert_eq!(ok["path"], "/app/x?q=1");
        assert_eq!(ok["status"], 200);
        assert_eq!(ok["bytes_in"], 0);
        assert_eq!(ok["bytes_out"], body.len());
        assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(ok["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(ok["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(missing["name"], "nobody");
        assert_eq!(missing["status"], 404);
    })
    .await
}

#[tokio::test]
async fn a_name_coming_and_going_is_logged_once_at_info() {
    global_logs();
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let app = start_agent(&relay, "comings", 3, None, echo_handler("a")).await;
        app.kill();
        relay
            .handle
            .wait_until(|h| connections(h, "comings") == 0)
            .await;
    })
    .await;
    // This test's name is its own: other tests' lines are left out.
    let info = |what: &str| -> Vec<String> {
        log_lines(what)
            .into_iter()
            .filter(|l| l.contains(" INFO ") && l.contains("name=comings"))
            .collect()
    };
    // Three connections, one name: one line when it arrives, one when the last one leaves.
    for what in [
        "agent claimed the name",
        "the name's last agent connection left",
    ] {
        let lines = info(what);
        assert_eq!(lines.len(), 1, "{what}: {lines:#?}");
        for field in ["peer=127.0.0.1:", "proto=\"http\""] {
            assert!(lines[0].contains(field), "{field} in {}", lines[0]);
        }
    }
}

#[tokio::test]
async fn a_request_naming_no_agent_gets_a_404_with_the_domain() {
    deadline(async {
        let mut cfg = anonymous();
        cfg.domain = "relay.example".into();
        let relay = start_relay(cfg).await;
        let (status, _, body) = get(relay.addr, "/", Some("relay.example")).await;
        assert_eq!(status, 404);
        assert!(
            body.contains("http://NAME.relay.example/ or /NAME/"),
            "{body}"
        );
    })
    .await
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_logged_as_such() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    global_logs();
    let client = deadline(async {
        let pki = pki::Pki::new("relay");
        let (cert, key) = pki.issue("relay", &["localhost"], false);
        let config = ptth::relay::Config {
            tls: Some(ptth::tls::server_config(&cert, &key, None).unwrap()),
            ..anonymous()
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = ptth::relay::Relay::new(
            ptth::relay::Listeners {
                plain: vec![],
                tls: vec![l],
            },
            config,
        )
        .await
        .unwrap();
        let addr = relay.handle().tls_addrs()[0];
        let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(relay.run(async move {
            let _ = rx.await;
        }));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /demo/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        // The relay closes the connection once it has logged why.
        let _ = tcp.read_to_end(&mut Vec::new()).await;
        tcp.local_addr().unwrap()
    })
    .await;
    // The connection's span names its peer: this test's client.
    let lines = log_lines("is it plain HTTP?");
    let line = lines
        .iter()
        .find(|l| l.contains(" INFO ") && l.contains(&format!("peer={client}")))
        .unwrap_or_else(|| panic!("no INFO line about plain HTTP from {client}: {lines:#?}"));
    assert!(line.contains("this port serves HTTPS only"), "{line}");
}
