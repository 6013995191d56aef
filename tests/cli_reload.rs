//! SIGHUP on a real `ptth-serve` process: the token file and the TLS certificate and key are
//! read again, parked agents and public keep-alive connections stay, new claims and new
//! handshakes use the new files, and a bad file keeps the settings in force.

mod support;

use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use support::deadline;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStderr, Command};

use bins::{agent_addr, banner, upstream};
use support::bins;

use pki::Pki;
use support::pki;

/// `ptth-serve` with `args`: the process, its banner up to `last`, and its log lines.
async fn relay(args: &[&str], last: &str) -> (Child, String, Lines<BufReader<ChildStderr>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ptth-serve"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (text, _) = banner(&mut child, last).await;
    let logs = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, text, logs)
}

/// SIGHUP to the relay we started, by its PID; then its log line that contains `want`.
async fn hup(relay: &Child, logs: &mut Lines<BufReader<ChildStderr>>, want: &str) -> String {
    let pid = relay.id().expect("the relay runs").to_string();
    let status = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    loop {
        let line = logs.next_line().await.unwrap().expect("relay log ended");
        if line.contains(want) {
            return line;
        }
    }
}

/// A `ptth-connect` for `url` with one connection (so that it dials only once) and `extra`.
fn agent(url: &str, to: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ptth-connect"));
    cmd.args([
        url,
        "--to",
        to,
        "--connections",
        "1",
        "--max-connections",
        "1",
    ])
    .args(extra)
    .env_remove("PTTH_TOKEN")
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    cmd
}

/// Start `cmd` and wait for its connection to park.
async fn parked(mut cmd: Command) -> Child {
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let line = bins::line_with(&mut err, "connected to the relay").await;
    assert!(line.is_ok(), "{line:?}");
    // Keep reading, so the agent never blocks on a full pipe.
    tokio::spawn(
        async move { while err.read_line(&mut String::new()).await.is_ok_and(|n| n > 0) {} },
    );
    child
}

/// The exit status of an agent that the relay refuses.
async fn refused(cmd: Command) -> Option<i32> {
    let mut cmd = cmd;
    cmd.output().await.unwrap().status.code()
}

/// A public HTTP/1.1 keep-alive connection over `io`.
async fn public<IO>(io: IO) -> SendRequest<Empty<Bytes>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// `GET /demo/` on `send`: status and body.
async fn get_demo(send: &mut SendRequest<Empty<Bytes>>, host: &str) -> (u16, Bytes) {
    let req = http::Request::get("/demo/")
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let res = send
        .send_request(req)
        .await
        .expect("the connection is open");
    let status = res.status().as_u16();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn sighup_reloads_the_token_file_and_keeps_connections() {
    deadline(async {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "demo old\ngone gone-token\n").unwrap();
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            tokens.to_str().unwrap(),
        ];
        let (relay, text, mut logs) = relay(&args, "public:").await;
        let addr = agent_addr(&text, "http");
        let to = upstream().await;
        let url = |name: &str| format!("http://{addr}/{name}");

        let demo = parked(agent(&url("demo"), &to, &["--token", "old"])).await;
        let mut client = public(TcpStream::connect(addr).await.unwrap()).await;
        let host = addr.to_string();
        assert_eq!(
            get_demo(&mut client, &host).await,
            (200, Bytes::from("hello"))
        );
        let fresh = || agent(&url("fresh"), &to, &["--token", "new"]);
        assert_eq!(refused(fresh()).await, Some(3), "fresh has no token yet");

        // The new file drops both old lines and adds one.
        std::fs::write(&tokens, "fresh new\n").unwrap();
        let line = hup(&relay, &mut logs, "reloaded the tokens").await;
        assert!(line.contains(tokens.to_str().unwrap()), "{line}");
        // The parked agent and the public keep-alive connection are still there.
        assert_eq!(
            get_demo(&mut client, &host).await,
            (200, Bytes::from("hello"))
        );
        let _fresh = parked(fresh()).await;
        let gone = agent(&url("gone"), &to, &["--token", "gone-token"]);
        assert_eq!(refused(gone).await, Some(3), "gone's token was removed");

        // A bad file keeps the tokens in force, and the log says why.
        std::fs::write(&tokens, "fresh\n").unwrap();
        let line = hup(&relay, &mut logs, "keeping the tokens in force").await;
        assert!(
            line.contains(tokens.to_str().unwrap()) && line.contains("line 1"),
            "{line}"
        );
        let _again = parked(fresh()).await;
        assert_eq!(
            get_demo(&mut client, &host).await,
            (200, Bytes::from("hello"))
        );
        drop(demo);
    })
    .await;
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

#[tokio::test]
async fn sighup_reloads_the_tls_certificate_for_new_handshakes_only() {
    deadline(async {
        let (first, second) = (Pki::new("first"), Pki::new("second"));
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("relay.pem"), dir.path().join("relay.key"));
        let (c1, k1) = first.issue("relay", &["localhost"], false);
        let (c2, k2) = second.issue("relay", &["localhost"], false);
        copy(&c1, &cert);
        copy(&k1, &key);
        let args = [
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
        ];
        let (relay, text, mut logs) = relay(&args, "admin:").await;
        let addr = agent_addr(&text, "https");
        let to = upstream().await;
        let url = format!("https://localhost:{}/demo", addr.port());
        let ca1 = first.ca_file();
        let _demo = parked(agent(&url, &to, &["--ca-cert", ca1.to_str().unwrap()])).await;

        let handshake = |ca: &Path| {
            let tls = ptth::tls::client_config(Some(ca), None).unwrap();
            async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                ptth::tls::connect(tcp, "localhost", tls).await
            }
        };
        let host = format!("localhost:{}", addr.port());
        let mut client = public(handshake(&ca1).await.unwrap()).await;
        assert_eq!(
            get_demo(&mut client, &host).await,
            (200, Bytes::from("hello"))
        );
        assert!(handshake(&second.ca_file()).await.is_err());

        copy(&c2, &cert);
        copy(&k2, &key);
        hup(&relay, &mut logs, "reloaded the TLS certificate").await;
        // The connection made with the first certificate, and the agent's, stay.
        assert_eq!(
            get_demo(&mut client, &host).await,
            (200, Bytes::from("hello"))
        );
        // New handshakes get the second certificate.
        let mut renewed = public(handshake(&second.ca_file()).await.unwrap()).await;
        assert_eq!(
            get_demo(&mut renewed, &host).await,
            (200, Bytes::from("hello"))
        );
        let old = handshake(&ca1).await.map(drop).unwrap_err().to_string();
        assert!(old.contains("unknown CA"), "{old}");

        // A certificate file that is not PEM keeps the second certificate, and the log says so.
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let line = hup(&relay, &mut logs, "keeping the TLS certificate in force").await;
        assert!(line.contains(cert.to_str().unwrap()), "{line}");
        assert!(handshake(&second.ca_file()).await.is_ok());
        assert_eq!(
            get_demo(&mut client, &host).await,
            (200, Bytes::from("hello"))
        );
    })
    .await;
}
