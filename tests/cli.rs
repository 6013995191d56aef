//! The two binaries as a user runs them: `ptth-serve`'s settings file under its flags, and
//! `ptth-connect` naming the flag that fixes a TLS failure the library reports.

mod support;

use support::deadline;
use tokio::io::BufReader;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use bins::{line_with, serve};
use support::bins;

use pki::Pki;
use support::pki;

/// The host-mode line `ptth-serve` prints once it listens names the domain in force.
async fn printed_domain(mut relay: Child) -> String {
    let mut out = BufReader::new(relay.stdout.take().unwrap());
    let line = line_with(&mut out, "public:").await.unwrap();
    let (_, host) = line.split_once("://NAME.").expect("host-mode URL");
    host.split(':').next().unwrap().to_string()
}

#[tokio::test]
async fn ptth_serve_reads_its_file_under_its_flags() {
    deadline(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(
            &file,
            "listen = [\"127.0.0.1:0\"]\ndomain = \"from-file.test\"\nmax-agents = 8\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        assert_eq!(
            printed_domain(serve(&["--config", file])).await,
            "from-file.test"
        );
        assert_eq!(
            printed_domain(serve(&["--config", file, "--domain", "flag.test"])).await,
            "flag.test"
        );

        // A bad value in the file is reported against the file, and the relay does not start.
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            "listen = [\"127.0.0.1:0\"]\nqueue-timeout = \"soon\"\n",
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ptth-serve"))
            .args(["--config", bad.to_str().unwrap()])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("bad.toml") && stderr.contains("queue-timeout"),
            "{stderr}"
        );
    })
    .await;
}

#[tokio::test]
async fn ptth_connect_names_the_flag_for_an_unknown_ca() {
    deadline(async {
        let (relay_pki, other) = (Pki::new("relay"), Pki::new("other"));
        let (cert, key) = relay_pki.issue("relay", &["localhost"], false);
        let tls = ptth::tls::server_config(&cert, &key, None).unwrap();
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = relay.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = relay.accept().await.unwrap();
                // The agent refuses the certificate; nothing more happens on this side.
                let _ = ptth::tls::accept(tcp, tls.clone()).await;
            }
        });
        let relay_url = format!("https://localhost:{port}/demo");
        let ca = other.ca_file();
        let mut agent = bins::connect(
            &[
                &relay_url,
                "--to",
                "http://127.0.0.1:9",
                "--connections",
                "1",
                "--ca-cert",
                ca.to_str().unwrap(),
            ],
            Some("warn"),
        );
        let mut err = BufReader::new(agent.stderr.take().unwrap());
        let failure = line_with(&mut err, "unknown CA").await.unwrap();
        assert!(
            failure.contains("the certificate of localhost was rejected"),
            "{failure}"
        );
        let hint = line_with(&mut err, "hint:").await.unwrap();
        assert!(hint.contains("--ca-cert"), "{hint}");
    })
    .await;
}
