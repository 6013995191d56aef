//! Operating the agent (issue 19): which `Host` the upstream sees (`--host-header`), what a
//! `502` tells the public about the upstream (nothing internal), and the one log line when the
//! service is reachable again after an outage.

mod support;
use support::global_logs::{global_logs, log_lines};

use http::{Request, StatusCode};
use ptth::agent::{HostHeader, Proxy};
use support::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// An agent proxying to `upstream` with `host`, and the relay stand-in it parked on.
async fn agent_with(upstream: std::net::SocketAddr, host: HostHeader) -> (RunningAgent, Client) {
    let (relay, agent) = stand_in("demo").await;
    let proxy = Proxy::new(&format!("http://{upstream}"))
        .unwrap()
        .host_header(host);
    let running = run_proxy(agent, proxy);
    let (_, client) = accept_parked(&relay).await;
    (running, client)
}

fn public_get(path: &str, host: &str) -> Request<TestBody> {
    Request::get(path)
        .header("host", host)
        .body(full(""))
        .unwrap()
}

#[tokio::test]
async fn the_upstream_sees_its_own_host_unless_told_to_keep_the_public_one() {
    deadline(async {
        let (up, _arrivals, _release) = spawn_upstream().await;
        let (agent, mut client) = agent_with(up, HostHeader::Upstream).await;
        let res = client.send(public_get("/x", "app.example")).await.unwrap();
        assert_eq!(body_string(res).await, format!("GET /x host={up}"));
        agent.shutdown().await.unwrap();

        let (agent, mut client) = agent_with(up, HostHeader::Keep).await;
        let res = client.send(public_get("/x", "app.example")).await.unwrap();
        assert_eq!(body_string(res).await, "GET /x host=app.example");
        // One Host only: the public one is not sent beside the upstream's.
        let res = client
            .send(public_get("/y", "other.example:8080"))
            .await
            .unwrap();
        assert_eq!(body_string(res).await, "GET /y host=other.example:8080");
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_502_names_neither_the_upstream_nor_the_os_error() {
    deadline(async {
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let (agent, mut client) = agent_with(dead_addr, HostHeader::Upstream).await;
        let res = client.send(public_get("/", "app.example")).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        let text = body_string(res).await;
        assert!(text.contains("could not reach its upstream"), "{text}");
        for internal in [
            dead_addr.to_string(),
            dead_addr.port().to_string(),
            "127.0.0.1".to_string(),
            "refused".to_string(),
            "os error".to_string(),
        ] {
            assert!(!text.contains(&internal), "{internal:?} in {text:?}");
        }
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn serving_again_after_an_outage_is_logged_once_with_its_length() {
    const AGAIN: &str = "connected to the relay again";
    global_logs();
    let lines = deadline(async {
        let (up, _arrivals, _release) = spawn_upstream().await;
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = format!("/{}/demo/", relay.local_addr().unwrap());
        let agent = spawn_proxy_agent(
            builder(relay.local_addr().unwrap(), "demo").connections(1),
            up,
        );
        let (_, first) = accept_parked(&relay).await;
        // The relay goes away: its connection closes, and the next dial is cut before any answer.
        outage(&relay, first).await;
        let (_, mut back) = accept_parked(&relay).await;
        let res = back.send(get_request("/x")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        // The pool logs when it takes in the park, in its own task: wait for the line (bounded).
        let mine = || -> Vec<String> {
            log_lines(AGAIN)
                .into_iter()
                .filter(|l| l.contains(&ours))
                .collect()
        };
        let mut tries = 0;
        while mine().is_empty() {
            tries += 1;
            assert!(tries < 2000, "no line {AGAIN:?} for {ours}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        agent.shutdown().await.unwrap();
        let announced = log_lines("connected to the relay: service reachable");
        assert_eq!(
            announced.iter().filter(|l| l.contains(&ours)).count(),
            1,
            "{announced:#?}"
        );
        mine()
    })
    .await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(" INFO "), "{}", lines[0]);
    assert!(lines[0].contains("after an outage of "), "{}", lines[0]);
    assert!(lines[0].contains("outage="), "{}", lines[0]);
}

/// A tower service that is `Send` and `Clone` but not `Sync` (as `BoxCloneService` is not).
#[derive(Clone, Default)]
struct NotSync {
    _not_sync: std::cell::Cell<u8>,
}

impl tower_service::Service<Request<hyper::body::Incoming>> for NotSync {
    type Response = http::Response<TestBody>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(full(format!(
            "not sync {}",
            req.uri()
        )))))
    }
}

#[tokio::test]
async fn serve_tower_takes_a_service_that_is_not_sync() {
    deadline(async {
        let (relay, agent) = stand_in("demo").await;
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.serve_tower(NotSync::default(), async move {
            let _ = rx.await;
        }));
        let running = RunningAgent {
            stop: Some(stop),
            task,
        };
        let (_, mut client) = accept_parked(&relay).await;
        let res = client.send(get_request("/x")).await.unwrap();
        assert_eq!(body_string(res).await, "not sync /x");
        running.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_state_watch_follows_connect_outage_reconnect_and_stop() {
    use ptth::agent::AgentState;
    deadline(async {
        let (up, _arrivals, _release) = spawn_upstream().await;
        let (relay, agent) = stand_in("demo").await;
        let url = agent.public_url().to_string();
        let mut state = agent.state();
        assert_eq!(*state.borrow(), AgentState::Connecting);
        let proxy = Proxy::new(&format!("http://{up}")).unwrap();
        let running = run_proxy(agent, proxy);
        let connected = AgentState::Connected {
            public_url: url.clone(),
        };
        let (_, first) = accept_parked(&relay).await;
        state.wait_for(|s| *s == connected).await.unwrap();
        // The relay goes away: its connection closes, the next dial is cut.
        outage(&relay, first).await;
        let out = state
            .wait_for(|s| matches!(s, AgentState::Reconnecting { .. }))
            .await
            .unwrap()
            .clone();
        let AgentState::Reconnecting {
            public_url,
            failures,
        } = out
        else {
            unreachable!()
        };
        assert_eq!(public_url, url);
        assert!(failures >= 1);
        let (_, _back) = accept_parked(&relay).await;
        state.wait_for(|s| *s == connected).await.unwrap();
        running.shutdown().await.unwrap();
        assert_eq!(*state.borrow(), AgentState::Stopped);
    })
    .await;
}

#[tokio::test]
async fn the_state_watch_says_refused_with_the_relays_answer() {
    use ptth::agent::AgentState;
    use tokio::io::AsyncWriteExt;
    deadline(async {
        let (relay, agent) = stand_in("demo").await;
        let mut state = agent.state();
        let task = tokio::spawn(agent.serve_proxy(
            Proxy::new("http://127.0.0.1:9").unwrap(),
            std::future::pending(),
        ));
        let (mut tcp, _) = relay.accept().await.unwrap();
        read_head(&mut tcp).await;
        tcp.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 8\r\n\r\nno token")
            .await
            .unwrap();
        let refused = state
            .wait_for(|s| matches!(s, AgentState::Refused { .. }))
            .await
            .unwrap()
            .clone();
        let AgentState::Refused { status, detail } = refused else {
            unreachable!()
        };
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(detail.contains("no token"), "{detail}");
        assert!(task.await.unwrap().unwrap_err().is_unauthorized());
    })
    .await;
}
