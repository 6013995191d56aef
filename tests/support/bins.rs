//! Running the real binaries in tests: spawning them with their output piped, reading their
//! output line by line, a raw HTTP/1.1 exchange on loopback, and an upstream for an agent.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout, Command};

/// The next line of `lines` that contains `want`, or every line read when the stream ended.
pub async fn line_with(
    lines: &mut (impl AsyncBufReadExt + Unpin),
    want: &str,
) -> Result<String, String> {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line).await.unwrap() == 0 {
            return Err(seen);
        }
        if line.contains(want) {
            return Ok(line);
        }
        seen.push_str(&line);
    }
}

/// `ptth-serve` with `args`, stdout piped (the banner), stderr as given.
pub fn serve_with(args: &[&str], stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ptth-serve"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `ptth-serve` with `args`, stdout piped, stderr dropped.
pub fn serve(args: &[&str]) -> Child {
    serve_with(args, Stdio::null())
}

/// `ptth-connect` with `args`, `RUST_LOG` at `log` (`None`: unset) and no `PTTH_TOKEN`: its
/// stdout dropped, its stderr (the log) piped; killed when dropped.
pub fn connect(args: &[&str], log: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ptth-connect"));
    cmd.args(args).env_remove("PTTH_TOKEN");
    match log {
        Some(level) => cmd.env("RUST_LOG", level),
        None => cmd.env_remove("RUST_LOG"),
    };
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The banner `ptth-serve` prints once it listens, up to and including the line with `last`.
pub async fn banner(relay: &mut Child, last: &str) -> (String, Lines<BufReader<ChildStdout>>) {
    let mut out = BufReader::new(relay.stdout.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(out.read_line(&mut line).await.unwrap(), 0, "banner: {text}");
        text.push_str(&line);
        if line.contains(last) {
            return (text, out.lines());
        }
    }
}

/// `ptth-serve` with `args` (stderr dropped), once its banner is printed up to the line with
/// `last`: the child, the banner, the rest of its stdout (keep it open: a relay must not write
/// into a closed pipe) and the plain-HTTP address agents dial.
pub async fn serve_ready(
    args: &[&str],
    last: &str,
) -> (Child, String, Lines<BufReader<ChildStdout>>, SocketAddr) {
    let mut relay = serve(args);
    let (text, out) = banner(&mut relay, last).await;
    let addr = agent_addr(&text, "http");
    (relay, text, out, addr)
}

/// The address in the first `agents:  dial http://ADDR/NAME` line of a banner.
pub fn agent_addr(banner: &str, scheme: &str) -> SocketAddr {
    let prefix = format!("agents:  dial {scheme}://");
    let line = banner
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix} line in\n{banner}"));
    line.split('/').next().unwrap().parse().unwrap()
}

/// Run a binary to its end with `args`: (exit code, stdout, stderr).
pub async fn run(bin: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin)
        .args(args)
        .env_remove("PTTH_TOKEN")
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// One `GET` with `Connection: close` to `addr`; the whole raw response.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

/// An upstream on 127.0.0.1:0 that answers every request `200 hello`; its `http://` URL.
pub async fn upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let svc = hyper::service::service_fn(|_req| async {
                let hello = http_body_util::Full::<bytes::Bytes>::from("hello");
                Ok::<_, std::convert::Infallible>(http::Response::new(hello))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
            );
        }
    });
    format!("http://{addr}")
}
