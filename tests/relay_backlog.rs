//! The relay's listen backlog is deep enough for a reconnect storm (issue 15, scenario 2).
//!
//! With tokio's default backlog of 1024, 10,000 agent connections returning to a restarted
//! relay overflowed its accept queue (12,769 overflows) and 99% took 3.2 s to park again instead
//! of 1.4 s: every dropped SYN waits for the kernel's retransmission. The kernel reports a
//! listening socket's backlog as its `Send-Q` in `ss`.

mod support;

use std::process::Stdio;

use support::deadline;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// `Send-Q` of the socket listening on `port`, as `ss` prints it: the backlog in force.
fn backlog(port: u16) -> Option<u32> {
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(2)?.parse().ok()
}

#[tokio::test]
async fn ptth_serve_listens_with_the_kernels_deepest_backlog() {
    if std::process::Command::new("ss").arg("-V").output().is_err() {
        println!("SKIPPED: `ss` (iproute2) is not installed, so the backlog cannot be read");
        return;
    }
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("somaxconn")
        .trim()
        .parse()
        .expect("a number");
    deadline(async {
        let mut relay = Command::new(env!("CARGO_BIN_EXE_ptth-serve"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(relay.stdout.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("agents:") {
            line.clear();
            assert!(
                out.read_line(&mut line).await.unwrap() > 0,
                "no URL printed"
            );
        }
        // "agents:  dial http://127.0.0.1:PORT/NAME ..."
        let port: u16 = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("the printed port");
        let expected = ptth::relay::LISTEN_BACKLOG.min(somaxconn);
        assert_eq!(backlog(port), Some(expected), "somaxconn is {somaxconn}");
        if somaxconn > 1024 {
            assert!(expected > 1024, "deeper than tokio's default of 1024");
        }
    })
    .await;
}
