//! Operating the agent (issue 19): which `Host` the upstream sees (`--host-header`), and what a
//! `502` tells the public about the upstream (nothing internal).

mod agent_support;

use agent_support::*;
use http::{Request, StatusCode};
use ptth::agent::proxy::{HostHeader, Proxy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// An agent proxying to `upstream` with `host`, and the relay stand-in it parked on.
async fn agent_with(upstream: std::net::SocketAddr, host: HostHeader) -> (RunningAgent, Client) {
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::new(&format!("http://{upstream}"))
        .unwrap()
        .host_header(host);
    let agent = builder(relay.local_addr().unwrap(), "demo")
        .connections(1)
        .build()
        .unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.serve_proxy(proxy, async move {
        let _ = rx.await;
    }));
    let (_, client) = accept_parked(&relay).await;
    (
        RunningAgent {
            stop: Some(stop),
            task,
        },
        client,
    )
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
