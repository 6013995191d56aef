//! A fleet (issue 17): three `ptth-serve --registry` relays sharing names through a real
//! `redis-server`, behind a real HAProxy running `deploy/haproxy.cfg` (its addresses rewritten
//! to loopback ports), with `ptth-connect` agents claiming through the balancer. Shows requests
//! served with and without a forward, no name taken with another token on any relay, a
//! partitioned relay answered by a bounded timeout, a relay killed (its in-flight requests get
//! 502, its names heal, the others never notice), Redis stopped and started again, and an
//! agent's grace held across relays.
//!
//! Skips, saying why, without `redis-server` or `haproxy` (`.ci/run` installs both).

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The whole scenario's deadline: it only catches hangs.
const SCENARIO: Duration = Duration::from_secs(150);
/// How long any one wait for a state may take.
const WAIT: Duration = Duration::from_secs(25);
/// Agent names; the consistent hash spreads them over the three relays.
const NAMES: [&str; 6] = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];

fn found(bin: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A loopback port free now (the programs under test take fixed ports from their flags).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One `GET` with `Connection: close`: the status (0: no response) and the raw response, or
/// `None` when nothing listens. Bounded by `limit`.
async fn get(addr: SocketAddr, host: &str, path: &str, limit: Duration) -> (u16, String) {
    let exchange = async {
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            return (0, String::from("connection refused"));
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let _ = tcp.write_all(req.as_bytes()).await;
        let mut raw = Vec::new();
        let _ = tcp.read_to_end(&mut raw).await;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        (support::status_of(&raw), raw)
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or((0, "timed out".into()))
}

/// Poll `what` every 100 ms until it holds, for at most [`WAIT`].
async fn until<F: Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < WAIT, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An agent's upstream: `/slow` answers after 4 s; everything else at once with the agent's
/// name, the `Forwarded` field it got, and whether the fleet's hop marker reached it.
async fn upstream(name: &'static str) -> String {
    let addr = support::http_server(move || {
        hyper::service::service_fn(move |req: http::Request<_>| async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
            let fwd = req
                .headers()
                .get("forwarded")
                .map(|v| v.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            let hop = req.headers().contains_key("ptth-fleet-hop");
            let body = format!("from {name}\nforwarded: {fwd}\nhop: {hop}\n");
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::from(body)))
        })
    })
    .await;
    format!("http://{addr}")
}

/// A relay of the fleet: its public, admin and peer ports.
struct Relay {
    public: u16,
    admin: u16,
    peer: u16,
    child: Option<Child>,
    /// Kept open: the relay's standard output after its banner.
    _stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Relay {
    fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().unwrap().to_string()
    }

    /// The names it has live agent connections for (`/agents`).
    async fn names(&self) -> Vec<String> {
        let (status, raw) = get(local(self.admin), "localhost", "/agents", WAIT).await;
        if status != 200 {
            return Vec::new();
        }
        let body = raw.split("\r\n\r\n").nth(1).unwrap_or("[]");
        let stats: Vec<serde_json::Value> = serde_json::from_str(body).unwrap_or_default();
        stats
            .iter()
            .filter(|s| s["connections"].as_u64().unwrap_or(0) > 0)
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// A counter of its `/metrics` (0 when absent or the relay is gone).
    async fn metric(&self, series: &str) -> f64 {
        let (_, raw) = get(local(self.admin), "localhost", "/metrics", WAIT).await;
        raw.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

fn start_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn listening(port: u16) {
    until(&format!("something listens on {port}"), || async move {
        TcpStream::connect(local(port)).await.is_ok()
    })
    .await;
}

async fn signal(sig: &str, pid: &str) {
    let ok = Command::new("kill")
        .args([sig, pid])
        .status()
        .await
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A claim with `token` for `name`, straight to a relay: its status.
async fn claim_status(port: u16, name: &str, token: &str) -> u16 {
    let req = format!(
        "POST /{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: PTTH/0.9\r\n\
         Connection: Upgrade\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    let raw = tokio::time::timeout(WAIT, support::raw_exchange(local(port), req.as_bytes()))
        .await
        .unwrap();
    support::status_of(&raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_haproxy_shares_names_and_heals() {
    for bin in ["redis-server", "haproxy"] {
        if !found(bin) {
            eprintln!(
                "skipping the fleet test: {bin} is not installed (apt-get install redis-server haproxy)"
            );
            return;
        }
    }
    tokio::time::timeout(SCENARIO, scenario())
        .await
        .expect("the fleet scenario hung");
}

async fn scenario() {
    let tmp = tempfile::Builder::new()
        .prefix("ptth-fleet")
        .tempdir()
        .unwrap();
    let root = tmp.path().to_path_buf();
    // PTTH_FLEET_KEEP=1 keeps the relays' and HAProxy's logs.
    let _tmp = match std::env::var_os("PTTH_FLEET_KEEP") {
        Some(_) => {
            eprintln!("logs in {}", tmp.keep().display());
            None
        }
        None => Some(tmp),
    };
    let tokens = root.as_path().join("tokens");
    std::fs::write(&tokens, "* tok-a\n* tok-b\n").unwrap();

    let redis_port = free_port();
    let mut redis = start_redis(redis_port);
    listening(redis_port).await;

    let mut relays = Vec::new();
    for i in 0..3 {
        let (public, admin, peer) = (free_port(), free_port(), free_port());
        let log = std::fs::File::create(root.as_path().join(format!("relay{i}.log"))).unwrap();
        let args = [
            "--listen".to_string(),
            format!("127.0.0.1:{public}"),
            "--admin".into(),
            format!("127.0.0.1:{admin}"),
            "--registry".into(),
            format!("redis://127.0.0.1:{redis_port}"),
            "--advertise".into(),
            format!("http://127.0.0.1:{peer}"),
            "--registry-ttl".into(),
            "3s".into(),
            "--tokens".into(),
            tokens.display().to_string(),
            "--queue-timeout".into(),
            "1s".into(),
            "--response-timeout".into(),
            "2s".into(),
            "--reconnect-window".into(),
            "2s".into(),
            "--grace".into(),
            "10s".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = support::bins::serve_with(&args, Stdio::from(log));
        let (_, stdout) = support::bins::banner(&mut child, "fleet:").await;
        relays.push(Relay {
            public,
            admin,
            peer,
            child: Some(child),
            _stdout: stdout,
        });
    }

    // The shipped HAProxy configuration, on loopback.
    let lb_port = free_port();
    let mut cfg =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg"))
            .unwrap()
            .replace("bind :80", &format!("bind 127.0.0.1:{lb_port}"))
            .replace("relay\\.example", "localhost");
    for (i, r) in relays.iter().enumerate() {
        cfg = cfg.replace(
            &format!("10.0.0.1{}:8080", i + 1),
            &format!("127.0.0.1:{}", r.public),
        );
    }
    let cfg_path = root.as_path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let _haproxy = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(root.as_path().join("haproxy.log")).unwrap(),
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    listening(lb_port).await;
    let lb = local(lb_port);

    // Agents claim through the balancer.
    let mut agents = Vec::new();
    for name in NAMES {
        let to = upstream(name).await;
        let relay_url = format!("http://127.0.0.1:{lb_port}/{name}");
        agents.push(
            Command::new(env!("CARGO_BIN_EXE_ptth-connect"))
                .args(["--to", &to, "--token", "tok-a", &relay_url])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    let served = |addr: SocketAddr, name: &'static str| async move {
        let (status, raw) = get(addr, "localhost", &format!("/{name}/"), WAIT).await;
        status == 200 && raw.contains(&format!("from {name}\n"))
    };
    for name in NAMES {
        until(&format!("{name} served through the balancer"), || {
            served(lb, name)
        })
        .await;
    }

    // Each name is held by one relay (the balancer kept an agent's connections together).
    let mut holder = std::collections::HashMap::new();
    for (i, r) in relays.iter().enumerate() {
        for n in r.names().await {
            assert!(holder.insert(n.clone(), i).is_none(), "{n} on two relays");
        }
    }
    assert_eq!(holder.len(), NAMES.len(), "{holder:?}");
    eprintln!("holders: {holder:?}");

    // Host mode through the balancer lands on the same relay as the claim: no forward.
    let out = |relays: &Vec<Relay>| {
        let admins: Vec<u16> = relays.iter().map(|r| r.admin).collect();
        async move {
            let mut sum = 0.0;
            for a in admins {
                let (_, raw) = get(local(a), "localhost", "/metrics", WAIT).await;
                sum += raw
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("ptth_fleet_forwards_total{direction=\"out\"} ")?
                            .parse::<f64>()
                            .ok()
                    })
                    .unwrap_or(0.0);
            }
            sum
        }
    };
    let before = out(&relays).await;
    for name in NAMES {
        let (status, raw) = get(lb, &format!("{name}.localhost:{lb_port}"), "/", WAIT).await;
        assert_eq!(status, 200, "{raw}");
        assert!(raw.contains(&format!("from {name}\n")), "{raw}");
    }
    assert_eq!(
        out(&relays).await,
        before,
        "host mode through the balancer forwarded"
    );

    // Straight to every relay: the holder serves itself, the two others forward once.
    for name in NAMES {
        for (i, r) in relays.iter().enumerate() {
            let (status, raw) = get(local(r.public), "localhost", &format!("/{name}/"), WAIT).await;
            assert_eq!(status, 200, "{name} at relay {i}: {raw}");
            assert!(raw.contains(&format!("from {name}\n")), "{raw}");
            assert!(
                raw.contains("hop: false"),
                "the hop marker reached the agent: {raw}"
            );
            if holder[name] != i {
                // The client's element first, then the forwarding relay's.
                let fwd = raw.lines().find(|l| l.starts_with("forwarded:")).unwrap();
                assert_eq!(fwd.matches("for=127.0.0.1").count(), 2, "{raw}");
            }
        }
    }
    assert_eq!(out(&relays).await - before, 2.0 * NAMES.len() as f64);
    let ins: f64 = {
        let mut s = 0.0;
        for r in &relays {
            s += r
                .metric("ptth_fleet_forwards_total{direction=\"in\"}")
                .await;
        }
        s
    };
    assert_eq!(ins, 2.0 * NAMES.len() as f64);

    // A client's own hop marker stops the forward, and earns its `Forwarded` no trust.
    let marked = |port: u16| async move {
        let req = "GET /alpha/ HTTP/1.1\r\nHost: localhost\r\nPTTH-Fleet-Hop: 1\r\n\
                   Forwarded: for=6.6.6.6\r\nConnection: close\r\n\r\n";
        tokio::time::timeout(WAIT, support::raw_exchange(local(port), req.as_bytes()))
            .await
            .unwrap()
    };
    let h = holder["alpha"];
    let raw = marked(relays[(h + 1) % 3].public).await;
    assert_eq!(support::status_of(&raw), 404, "{raw}");
    let raw = marked(relays[h].public).await;
    assert_eq!(support::status_of(&raw), 200, "{raw}");
    assert!(!raw.contains("6.6.6.6"), "{raw}");

    // No name is taken with another token, on any relay.
    for (i, r) in relays.iter().enumerate() {
        assert_eq!(
            claim_status(r.public, "alpha", "tok-b").await,
            409,
            "relay {i}"
        );
        // The peer listener is for forwards only.
        assert_eq!(
            claim_status(r.peer, "zulu", "tok-a").await,
            403,
            "relay {i}"
        );
    }
    assert!(served(lb, "alpha").await);

    // A partition: the holder of `bravo` stops answering (SIGSTOP). A forward to it ends in a
    // bounded time with a gateway error, never a hang.
    let p = holder["bravo"];
    let other = (p + 1) % 3;
    signal("-STOP", &relays[p].pid()).await;
    let started = Instant::now();
    let (status, raw) = get(local(relays[other].public), "localhost", "/bravo/", WAIT).await;
    let took = started.elapsed();
    signal("-CONT", &relays[p].pid()).await;
    assert!((502..=504).contains(&status), "{status}: {raw}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    eprintln!("partitioned forward: {status} after {took:?}");
    until("bravo served again after the partition", || {
        served(local(relays[other].public), "bravo")
    })
    .await;

    // A relay killed with requests in flight: those get 502; its names heal; the others are
    // served throughout.
    let k = holder["charlie"];
    let other = (k + 1) % 3;
    let slow_lb = tokio::spawn(async move { get(lb, "localhost", "/charlie/slow", WAIT).await });
    let slow_peer = {
        let port = relays[other].public;
        tokio::spawn(async move { get(local(port), "localhost", "/charlie/slow", WAIT).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut killed = relays[k].child.take().unwrap();
    killed.start_kill().unwrap();
    killed.wait().await.unwrap();
    let (s1, r1) = slow_lb.await.unwrap();
    let (s2, r2) = slow_peer.await.unwrap();
    assert_eq!(s1, 502, "in flight through the balancer: {r1}");
    assert_eq!(s2, 502, "in flight through a forward: {r2}");
    for name in NAMES.iter().filter(|n| holder[**n] != k) {
        for (i, r) in relays.iter().enumerate().filter(|(i, _)| *i != k) {
            let (status, raw) = get(local(r.public), "localhost", &format!("/{name}/"), WAIT).await;
            assert_eq!(
                status, 200,
                "{name} at relay {i} right after the kill: {raw}"
            );
        }
    }
    let healed = Instant::now();
    for name in NAMES.iter().filter(|n| holder[**n] == k) {
        until(&format!("{name} healed through the balancer"), || {
            served(lb, name)
        })
        .await;
        for r in relays.iter().filter(|r| r.child.is_some()) {
            until(&format!("{name} healed at every relay"), || {
                served(local(r.public), name)
            })
            .await;
        }
    }
    eprintln!("names of the killed relay healed in {:?}", healed.elapsed());
    // Still nobody else's.
    for (i, r) in relays.iter().enumerate().filter(|(i, _)| *i != k) {
        assert_eq!(
            claim_status(r.public, "charlie", "tok-b").await,
            409,
            "relay {i}"
        );
    }

    // Redis stopped: every relay serves the names it holds, says so in its metrics, and
    // forwards again once Redis is back (empty: the relays write their names back).
    let mut now_holder = std::collections::HashMap::new();
    for (i, r) in relays.iter().enumerate().filter(|(i, _)| *i != k) {
        for n in r.names().await {
            now_holder.insert(n, i);
        }
    }
    assert_eq!(now_holder.len(), NAMES.len(), "{now_holder:?}");
    redis.start_kill().unwrap();
    redis.wait().await.unwrap();
    for name in NAMES {
        let r = &relays[now_holder[name]];
        let (status, raw) = get(local(r.public), "localhost", &format!("/{name}/"), WAIT).await;
        assert_eq!(status, 200, "{name} at its relay with Redis down: {raw}");
    }
    let live: Vec<usize> = (0..3).filter(|i| *i != k).collect();
    until("registry errors counted", || {
        let r = &relays[live[0]];
        async move { r.metric("ptth_fleet_registry_errors_total").await > 0.0 }
    })
    .await;
    let _redis = start_redis(redis_port);
    listening(redis_port).await;
    for name in NAMES {
        let h = now_holder[name];
        let o = live.iter().copied().find(|i| *i != h).unwrap();
        until(
            &format!("{name} forwarded again after Redis returned"),
            || served(local(relays[o].public), name),
        )
        .await;
    }

    // The grace holds across relays: an agent that left keeps its name (503 offline, not 404,
    // at every relay; another token refused everywhere).
    let echo = NAMES.iter().position(|n| *n == "echo").unwrap();
    let mut gone = agents.remove(echo);
    gone.start_kill().unwrap();
    gone.wait().await.unwrap();
    let h = now_holder["echo"];
    until("echo's agent gone at its relay", || {
        let r = &relays[h];
        async move { !r.names().await.contains(&"echo".to_string()) }
    })
    .await;
    for i in live.iter().copied() {
        let (status, raw) = get(local(relays[i].public), "localhost", "/echo/", WAIT).await;
        assert_eq!(status, 503, "echo at relay {i} in its grace: {raw}");
        assert_eq!(
            claim_status(relays[i].public, "echo", "tok-b").await,
            409,
            "relay {i}"
        );
    }
    drop(agents);
}

/// `deploy/nginx.conf`, the balancer's nginx equivalent, is a valid nginx configuration.
#[tokio::test]
async fn the_nginx_equivalent_is_valid() {
    let nginx = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|n| found(n) || std::path::Path::new(n).exists());
    let Some(nginx) = nginx else {
        eprintln!("skipping the nginx check: nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(nginx)
        .args(["-t", "-c", conf, "-p"])
        .arg(dir.path())
        .args(["-e", "stderr"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nginx -t: {text}");
    assert!(text.contains("test is successful"), "{text}");
}
