//! The README as a user reads it: the TLS recipe runs as written, and the flag tables list
//! exactly the flags each binary's `--help` shows.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use support::deadline;
use tokio::io::BufReader;
use tokio::process::{Child, Command};

use bins::{line_with, upstream};
use support::bins;

const README: &str = include_str!("../README.md");

/// The lines of the first fenced block after the heading `heading`, with `\`-continued lines
/// joined.
fn block_after(heading: &str) -> Vec<String> {
    let (_, rest) = README.split_once(heading).expect("heading in README");
    let (_, rest) = rest.split_once("```sh\n").expect("a sh block");
    let (block, _) = rest.split_once("```").expect("the block ends");
    block
        .replace("\\\n", " ")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether `tool` runs (`tool --version` or `tool version`).
fn have(tool: &str) -> bool {
    ["--version", "version"].iter().any(|arg| {
        std::process::Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A port that was free a moment ago (bound to 127.0.0.1:0, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `line` run by bash in `dir`.
fn bash(line: &str, dir: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &format!("exec {line}")])
        .current_dir(dir)
        .env_remove("PTTH_TOKEN")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// The README's TLS recipe, line by line: the openssl commands make the files, the relay and the
/// agent start (each waited for: the relay's banner, the agent's "connected" line), and each
/// curl line must print the upstream's answer. Only the port (8443), the upstream
/// (127.0.0.1:3000) and the binaries' directory are replaced.
#[tokio::test]
async fn the_tls_recipe_runs_as_written() {
    for tool in ["openssl", "curl"] {
        if !have(tool) {
            println!("SKIPPED: the README's TLS recipe needs {tool} (Debian package {tool})");
            return;
        }
    }
    deadline(async {
        let dir = tempfile::tempdir().unwrap();
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_ptth-serve"))
            .parent()
            .unwrap();
        let port = free_port().to_string();
        let to = upstream().await;
        let upstream_addr = to.strip_prefix("http://").unwrap();
        let mut running: Vec<Child> = Vec::new();
        let mut curls = 0;
        for line in block_after("## TLS: a self-signed setup to copy") {
            let line = line
                .replace("./target/release/", &format!("{}/", bin_dir.display()))
                .replace("8443", &port)
                .replace("127.0.0.1:3000", upstream_addr);
            let command = line.split('#').next().unwrap().trim();
            if command.is_empty() {
                continue;
            }
            let program = Path::new(command.split(' ').next().unwrap());
            match program.file_name().unwrap().to_str().unwrap() {
                "ptth-serve" => {
                    let mut relay = bash(command, dir.path())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap();
                    let mut out = BufReader::new(relay.stdout.take().unwrap());
                    let banner = line_with(&mut out, "public:").await;
                    assert!(banner.is_ok(), "{command}: {banner:?}");
                    running.push(relay);
                }
                "ptth-connect" => {
                    let mut agent = bash(command, dir.path())
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap();
                    let mut err = BufReader::new(agent.stderr.take().unwrap());
                    let up = line_with(&mut err, "connected to the relay").await;
                    assert!(up.is_ok(), "{command}: {up:?}");
                    running.push(agent);
                }
                tool => {
                    let out = bash(command, dir.path()).output().await.unwrap();
                    let (stdout, stderr) = (
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr),
                    );
                    assert!(out.status.success(), "{command}: {stderr}");
                    if tool == "curl" {
                        assert_eq!(stdout, "hello", "{command}: {stderr}");
                        curls += 1;
                    }
                }
            }
        }
        assert_eq!((running.len(), curls), (2, 2), "the recipe changed shape");
    })
    .await;
}

/// The flags a `--help` lists (`--name`), without `--help` and `--version`, each with the
/// default it prints (`[default: X]`), if any.
async fn help_flags(bin: &str) -> BTreeMap<String, Option<String>> {
    let out = Command::new(bin).arg("--help").output().await.unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let mut flags = BTreeMap::new();
    let mut current = None;
    for line in help.lines() {
        let l = line
            .trim_start()
            .trim_start_matches("-h, ")
            .trim_start_matches("-V, ");
        if let Some(flag) = l
            .strip_prefix("--")
            .and_then(|f| f.split([' ', '<']).next())
        {
            let flag = format!("--{flag}");
            flags.insert(flag.clone(), None);
            current = Some(flag);
        }
        if let (Some(flag), Some((_, default))) = (&current, line.split_once("[default: ")) {
            let default = default.split(']').next().unwrap().to_string();
            flags.insert(flag.clone(), Some(default));
        }
    }
    flags.remove("--help");
    flags.remove("--version");
    flags
}

/// The flags in the first column of the first table after `heading`, each with its row's
/// second column (the default), backticks removed.
fn table_flags(heading: &str) -> BTreeMap<String, String> {
    let (_, rest) = README.split_once(heading).expect("heading in README");
    let rows = rest
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'));
    let mut flags = BTreeMap::new();
    for row in rows {
        let mut columns = row.split('|').skip(1);
        let (first, default) = (columns.next().unwrap(), columns.next().unwrap_or_default());
        for part in first.split("`--").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            flags.insert(format!("--{name}"), default.replace('`', ""));
        }
    }
    flags
}

/// Every flag of `--help` has a row in the README's table, every row is a flag, and a row's
/// default column shows the default `--help` prints.
#[tokio::test]
async fn the_flag_tables_match_the_help() {
    deadline(async {
        for (bin, heading) in [
            (
                env!("CARGO_BIN_EXE_ptth-serve"),
                "### The relay (`ptth-serve`)",
            ),
            (
                env!("CARGO_BIN_EXE_ptth-connect"),
                "### The agent (`ptth-connect`)",
            ),
        ] {
            let (help, table) = (help_flags(bin).await, table_flags(heading));
            assert!(help.len() > 10, "{bin}: {help:?}");
            let missing: Vec<_> = help.keys().filter(|f| !table.contains_key(*f)).collect();
            let extra: Vec<_> = table.keys().filter(|f| !help.contains_key(*f)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{heading}: in --help, not in the README: {missing:?}; in the README, not in \
                 --help: {extra:?}"
            );
            for (flag, default) in &help {
                let Some(default) = default else { continue };
                let row = &table[flag];
                assert!(
                    row.contains(default.as_str()),
                    "{heading}: {flag}: --help says the default is {default:?}, the README {row:?}"
                );
            }
        }
    })
    .await;
}
