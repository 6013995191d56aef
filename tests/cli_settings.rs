//! `ptth-serve` and `ptth-connect` settings as a user types them: names for listen addresses,
//! what `--listen-tls` alone opens, the admin address guard, `--domain` without a port, a banner
//! whose URLs can be dialled, and `-V`.

mod support;

use std::process::{Command as StdCommand, Stdio};

use support::deadline;

use bins::{agent_addr, banner, get, run, serve};
use support::bins;

use pki::Pki;
use support::pki;

const SERVE: &str = env!("CARGO_BIN_EXE_ptth-serve");
const CONNECT: &str = env!("CARGO_BIN_EXE_ptth-connect");

#[tokio::test]
async fn version_names_each_binary() {
    deadline(async {
        for (bin, name) in [(SERVE, "ptth-serve"), (CONNECT, "ptth-connect")] {
            let (code, out, _) = run(bin, &["-V"]).await;
            assert_eq!(code, Some(0));
            assert!(
                out.starts_with(&format!("{name} {}", env!("CARGO_PKG_VERSION"))),
                "{out}"
            );
        }
    })
    .await;
}

/// `--listen localhost:0` resolves the name (to loopback only) and serves there.
#[tokio::test]
async fn listen_takes_a_host_name() {
    deadline(async {
        let (_relay, text, _out, addr) =
            bins::serve_ready(&["--listen", "localhost:0"], "public:").await;
        assert!(addr.ip().is_loopback(), "{text}");
        let res = get(addr, "localhost", "/nobody/").await;
        assert!(res.starts_with("HTTP/1.1 404"), "{res}");
    })
    .await;
}

/// Settings that cannot work are refused before anything is bound, each with its reason.
#[tokio::test]
async fn unusable_settings_are_refused_with_a_reason() {
    deadline(async {
        for (args, code, want) in [
            (
                &["--domain", "relay.example:8080"][..],
                2,
                &["has a port (8080)", "give the domain alone (relay.example)"][..],
            ),
            (&["--domain", "http://relay.example"], 2, &["no scheme"]),
            (&["--listen", "localhost"], 2, &["--listen", "has no port"]),
            (&["--listen", "localhost:http"], 2, &["is not HOST:PORT"]),
            (
                &["--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0"],
                1,
                &[
                    "--admin 0.0.0.0:0 is not a loopback address",
                    "--allow-public-admin",
                ],
            ),
        ] {
            let (got, _, err) = run(SERVE, args).await;
            assert_eq!(got, Some(code), "{args:?}: {err}");
            for w in want {
                assert!(err.contains(w), "{args:?}: {w:?} not in {err}");
            }
        }
    })
    .await;
}

/// `--listen-tls` alone serves TLS only: no plain listener opens beside it (the help says so).
#[tokio::test]
async fn listen_tls_alone_opens_no_plain_listener() {
    deadline(async {
        let (_pki, cert, key) = Pki::localhost_relay();
        let (cert, key) = (cert.as_str(), key.as_str());
        let args = [
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--admin",
            "127.0.0.1:0",
        ];
        let mut relay = serve(&args);
        let (text, _out) = banner(&mut relay, "admin:").await;
        assert!(text.contains("agents:  dial https://127.0.0.1:"), "{text}");
        assert!(!text.contains("dial http://"), "{text}");
        let (_, help, _) = run(SERVE, &["--help"]).await;
        assert!(help.contains("unless --listen-tls is given"), "{help}");
    })
    .await;
}

/// On `0.0.0.0` and `[::]` the banner prints loopback URLs that work, and says what to use
/// from elsewhere. Run in a network namespace of its own (only `lo`), so that binding every
/// address exposes nothing.
#[tokio::test]
async fn the_banner_never_prints_an_unspecified_address() {
    let probe = StdCommand::new("unshare")
        .args(["-n", "true"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        println!("SKIPPED: needs `unshare -n` (root, util-linux) for a private network namespace");
        return;
    }
    deadline(async {
        let script = format!(
            "ip link set lo up && exec {SERVE} --listen 0.0.0.0:0 --listen [::]:0 \
             --allow-anonymous --admin 0.0.0.0:0 --allow-public-admin"
        );
        let mut relay = tokio::process::Command::new("unshare")
            .args(["-n", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (text, _out) = banner(&mut relay, "admin:").await;
        assert!(
            !text.contains("0.0.0.0:") || text.contains("note:"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with("note:")) {
            assert!(
                !line.contains("//0.0.0.0") && !line.contains("//[::]"),
                "{line}\n{text}"
            );
        }
        assert!(text.contains("dial http://127.0.0.1:"), "{text}");
        assert!(text.contains("dial http://[::1]:"), "{text}");
        assert!(text.contains("admin:   http://127.0.0.1:"), "{text}");
        assert!(
            text.contains("is every address of this host: from another machine, use its name"),
            "{text}"
        );
    })
    .await;
}

/// `ptth-connect --token-file`: the file's content, trimmed, is the token (it wins over
/// `PTTH_TOKEN`); a file that is missing, empty or holds more than a token is a usage error
/// naming the file.
#[tokio::test]
async fn ptth_connect_reads_its_token_from_a_file() {
    deadline(async {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "demo s3cret\n").unwrap();
        let mut relay = serve(&[
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            tokens.to_str().unwrap(),
        ]);
        let (text, _out) = banner(&mut relay, "public:").await;
        let url = format!("http://{}/demo", agent_addr(&text, "http"));
        let agent = |file: &std::path::Path| {
            let mut cmd = tokio::process::Command::new(CONNECT);
            cmd.args([
                url.as_str(),
                "--to",
                "http://127.0.0.1:9",
                "--connections",
                "1",
            ])
            .arg("--token-file")
            .arg(file)
            .env("PTTH_TOKEN", "not-the-token")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
            cmd
        };

        let good = dir.path().join("good");
        std::fs::write(&good, "  s3cret\n\n").unwrap();
        let mut ok = agent(&good).spawn().unwrap();
        let mut err = tokio::io::BufReader::new(ok.stderr.take().unwrap());
        let line = bins::line_with(&mut err, "connected to the relay").await;
        assert!(line.is_ok(), "{line:?}");

        let wrong = dir.path().join("wrong");
        std::fs::write(&wrong, "guess\n").unwrap();
        let out = agent(&wrong).output().await.unwrap();
        assert_eq!(out.status.code(), Some(3), "{out:?}");

        let missing = dir.path().join("missing");
        let (empty, two) = (dir.path().join("empty"), dir.path().join("two"));
        std::fs::write(&empty, " \n").unwrap();
        std::fs::write(&two, "s3cret\nother\n").unwrap();
        for (file, want) in [
            (&missing, "cannot read it"),
            (&empty, "it is empty"),
            (&two, "it holds more than one line"),
        ] {
            let out = agent(file).output().await.unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            let named = format!("--token-file {}: {want}", file.display());
            assert!(stderr.contains(&named), "{named:?} not in {stderr}");
        }
    })
    .await;
}
