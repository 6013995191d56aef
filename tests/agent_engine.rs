//! The agent's proxy on the forwarding engine (`src/h1`), against hostile bytes from either
//! side: a relay that sends what no relay should (bad framing, oversize heads, stalled heads,
//! pipelined requests) and an upstream that answers what no origin should. Every case ends in
//! a clear status or a closed connection, never a hang and never one request's bytes in
//! another's. The relay here is a raw TCP peer that parks the agent by hand.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use ptth::limits::Limits;
use support::{RunningAgent, SWITCH_09, builder, deadline, read_head, spawn_proxy_agent, write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Accept the agent's next connection and switch it, by hand: the raw reversed stream.
/// A relay stand-in on 127.0.0.1 port 0, and a proxy agent to `up` dialling it with one
/// connection and `limits`.
async fn stand_in_proxy(up: SocketAddr, limits: Limits) -> (TcpListener, RunningAgent) {
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = spawn_proxy_agent(
        builder(relay.local_addr().unwrap(), "demo")
            .connections(1)
            .limits(limits),
        up,
    );
    (relay, agent)
}

async fn park_raw(relay: &TcpListener) -> TcpStream {
    let (mut tcp, _) = relay.accept().await.unwrap();
    read_head(&mut tcp).await;
    write(&mut tcp, SWITCH_09).await;
    tcp
}

/// Everything until the peer closes.
async fn read_all(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// An upstream whose `n`th connection answers its requests with `script[n]` in turn (one
/// answer per request head it reads), and reports each connection and each head it got.
async fn scripted_upstream(
    script: Vec<Vec<&'static [u8]>>,
) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (l, addr) = support::bind_local().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut script = script.into_iter();
        loop {
            let (mut tcp, _) = l.accept().await.unwrap();
            let _ = tx.send("connection".to_string());
            let tx = tx.clone();
            let mine = script.next().unwrap_or_default();
            tokio::spawn(async move {
                for a in mine {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if tcp.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                    if tcp.write_all(a).await.is_err() {
                        return;
                    }
                }
                let mut rest = Vec::new();
                let _ = tcp.read_to_end(&mut rest).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn bad_request_framing_from_the_relay_is_a_400_and_a_closed_connection() {
    deadline(async {
        let (up, mut heads) = scripted_upstream(vec![]).await;
        let (relay, agent) = stand_in_proxy(up, Limits::default()).await;
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
        ] {
            let mut tcp = park_raw(&relay).await;
            write(&mut tcp, bad).await;
            let out = read_all(&mut tcp).await;
            assert!(out.starts_with("HTTP/1.1 400 "), "{bad:?}: {out}");
            assert!(out.contains("connection: close\r\n"), "{out}");
        }
        assert!(heads.try_recv().is_err(), "nothing reached the upstream");
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_bad_chunk_mid_body_is_cut_at_the_upstream_and_a_400_at_the_relay() {
    deadline(async {
        let (up, mut heads) =
            scripted_upstream(vec![vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]]).await;
        let (relay, agent) = stand_in_proxy(up, Limits::default()).await;
        let mut tcp = park_raw(&relay).await;
        write(
            &mut tcp,
            b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
        )
        .await;
        let out = read_all(&mut tcp).await;
        // The upstream may have answered before the bad chunk came; either way the relay
        // never sees a body of one request run into another.
        assert!(
            out.starts_with("HTTP/1.1 400 ") || out.starts_with("HTTP/1.1 200 OK\r\n"),
            "{out}"
        );
        assert_eq!(heads.recv().await.unwrap(), "connection");
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_oversize_head_from_the_relay_is_431() {
    deadline(async {
        let (up, _heads) = scripted_upstream(vec![]).await;
        let (relay, agent) = stand_in_proxy(up, Limits::default()).await;
        let mut tcp = park_raw(&relay).await;
        let mut head = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
        head.resize(Limits::default().max_head_bytes + 100, b'c');
        head.extend_from_slice(b"\r\n\r\n");
        // The agent may stop reading once it has answered.
        let _ = tcp.write_all(&head).await;
        let out = read_all(&mut tcp).await;
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        agent.shutdown().await.unwrap();
    })
    .await;
}

/// The head clock on the engine: an idle parked connection lives, a head that stalls after its
/// first byte is cut at the head timeout.
#[tokio::test]
async fn a_stalled_head_is_cut_and_an_idle_connection_lives() {
    deadline(async {
        let (up, _heads) = scripted_upstream(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ]])
        .await;
        let limits = Limits {
            head_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (relay, agent) = stand_in_proxy(up, limits).await;
        let mut idle = park_raw(&relay).await;
        let mut stalled = {
            // The stalled one is the next the agent parks (its pool grows when one is busy).
            write(&mut idle, b"GET /first HTTP/1.1\r\n").await;
            idle
        };
        let out = read_all(&mut stalled).await;
        assert_eq!(out, "", "cut without an answer");
        // The replacement idles far longer than the head timeout and still serves.
        let mut fresh = park_raw(&relay).await;
        let mut probe = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_millis(900), fresh.read(&mut probe)).await;
        assert!(
            waited.is_err(),
            "an idle parked connection was closed: {waited:?}"
        );
        write(&mut fresh, b"GET /late HTTP/1.1\r\n\r\n").await;
        let head = read_head(&mut fresh).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn pipelined_requests_from_the_relay_get_their_own_answers_in_order() {
    deadline(async {
        let (up, mut heads) = scripted_upstream(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nConnection: close\r\n\r\nthree",
        ]])
        .await;
        let (relay, agent) = stand_in_proxy(up, Limits::default()).await;
        let mut tcp = park_raw(&relay).await;
        write(
            &mut tcp,
            b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nbodyGET /b HTTP/1.1\r\n\r\n\
              GET /c HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        let out = read_all(&mut tcp).await;
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none\
             HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n\
             HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\nconnection: close\r\n\r\nthree"
        );
        assert_eq!(heads.recv().await.unwrap(), "connection");
        let a = heads.recv().await.unwrap();
        assert!(
            a.starts_with("POST /a HTTP/1.1\r\n") && a.contains("content-length: 4\r\n"),
            "{a}"
        );
        // The script reads heads only: the body of /a comes before the head of /b, intact.
        let b = heads.recv().await.unwrap();
        assert!(b.starts_with("bodyGET /b "), "{b}");
        assert!(heads.recv().await.unwrap().starts_with("GET /c "));
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn hostile_upstream_answers_are_502_and_the_agent_stays_up() {
    deadline(async {
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.resize(70 * 1024, b'h');
        huge.extend_from_slice(b"\r\n\r\n");
        let huge: &'static [u8] = Box::leak(huge.into_boxed_slice());
        let cases: Vec<&'static [u8]> = vec![
            b"HELLO\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            huge,
        ];
        let n = cases.len();
        // One answer per connection: after a bad answer the agent dials anew.
        let (up, _heads) = scripted_upstream(cases.into_iter().map(|c| vec![c]).collect()).await;
        let (relay, agent) = stand_in_proxy(up, Limits::default()).await;
        let mut tcp = park_raw(&relay).await;
        for i in 0..n {
            write(&mut tcp, b"GET /x HTTP/1.1\r\n\r\n").await;
            let head = read_head(&mut tcp).await;
            assert!(
                head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
                "case {i}: {head}"
            );
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            let mut body = vec![0u8; len];
            tcp.read_exact(&mut body).await.unwrap();
            assert!(String::from_utf8_lossy(&body).contains("could not reach its upstream"));
        }
        agent.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_upstream_that_closes_mid_body_cuts_the_response_it_began() {
    deadline(async {
        let (l, up) = support::bind_local().await;
        tokio::spawn(async move {
            let (mut tcp, _) = l.accept().await.unwrap();
            read_head(&mut tcp).await;
            tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                .await
                .unwrap();
        });
        let (relay, agent) = stand_in_proxy(up, Limits::default()).await;
        let mut tcp = park_raw(&relay).await;
        write(&mut tcp, b"GET /x HTTP/1.1\r\n\r\n").await;
        let out = read_all(&mut tcp).await;
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial");
        agent.shutdown().await.unwrap();
    })
    .await;
}
