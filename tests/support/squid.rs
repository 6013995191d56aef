//! A real forward proxy for the tests: Debian's squid, run by the test itself in the foreground
//! (`squid -N`) with a generated configuration on a loopback port, its pid file, logs and
//! password file in a temporary directory, and stopped by its PID when dropped. No system
//! service is used or touched.
//!
//! The configuration allows CONNECT only to 127.0.0.1 on the ports the test names (squid's own
//! default allows CONNECT to 443 only), and with users, only with their Basic credentials
//! (`basic_ncsa_auth` and an htpasswd file of `openssl passwd -apr1` hashes).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// squid's Basic authentication helper, as Debian installs it.
const NCSA_AUTH: &str = "/usr/lib/squid/basic_ncsa_auth";

/// How long squid may take to listen, and to exit after SIGTERM.
const STARTUP: Duration = Duration::from_secs(20);
const SHUTDOWN: Duration = Duration::from_secs(5);
/// How long a line may take to reach the access log.
const LOG_WAIT: Duration = Duration::from_secs(20);

/// The squid binary, or why the squid tests cannot run here.
pub fn available(with_auth: bool) -> Result<PathBuf, String> {
    let squid = ["/usr/sbin/squid", "/usr/bin/squid"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or("squid is not installed (apt-get install squid)")?;
    if with_auth {
        if !Path::new(NCSA_AUTH).exists() {
            return Err(format!("{NCSA_AUTH} is missing (apt-get install squid)"));
        }
        let openssl = Command::new("openssl")
            .arg("version")
            .stdout(Stdio::null())
            .status();
        if !openssl.is_ok_and(|s| s.success()) {
            return Err("openssl is missing (needed to hash the test password)".into());
        }
    }
    Ok(squid)
}

/// The squid binary, or `None` after printing why the calling test is skipped.
pub fn or_skip(with_auth: bool) -> Option<PathBuf> {
    available(with_auth)
        .map_err(|why| eprintln!("SKIPPED: {why}"))
        .ok()
}

/// A running squid.
pub struct Squid {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Squid {
    /// Start squid allowing CONNECT to 127.0.0.1 on `ports`, requiring Basic credentials of one
    /// of `users` (user, password) when there are any.
    pub fn start(binary: &Path, ports: &[u16], users: &[(&str, &str)]) -> Squid {
        let dir = tempfile::tempdir().unwrap();
        // squid started as root runs as the `proxy` user: it must be able to write its logs
        // and read the password file here.
        set_mode(dir.path(), 0o777);
        if !users.is_empty() {
            let mut lines = String::new();
            for (user, password) in users {
                let out = Command::new("openssl")
                    .args(["passwd", "-apr1", password])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "openssl passwd failed");
                lines.push_str(&format!(
                    "{user}:{}\n",
                    String::from_utf8(out.stdout).unwrap().trim()
                ));
            }
            std::fs::write(dir.path().join("passwd"), lines).unwrap();
            set_mode(&dir.path().join("passwd"), 0o644);
        }
        // The port is picked by binding port 0 and letting it go; another process may take it
        // in between, so a squid that cannot bind is started again on another one.
        let mut last_log = String::new();
        for attempt in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = dir.path().join("squid.conf");
            std::fs::write(&conf, config(dir.path(), port, ports, !users.is_empty())).unwrap();
            let mut child = Command::new(binary)
                // -N: foreground, no daemon, no SMP workers; -n: a service name of its own, so
                // that parallel squids share nothing.
                .args(["-N", "-n", &format!("ptthtest{port}"), "-f"])
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting squid");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if wait_listening(&mut child, addr) {
                return Squid { child, addr, dir };
            }
            terminate(&mut child);
            last_log = std::fs::read_to_string(dir.path().join("cache.log")).unwrap_or_default();
            eprintln!("squid attempt {attempt} did not start:\n{last_log}");
        }
        panic!("squid did not start; its cache.log:\n{last_log}");
    }

    /// squid's access log so far (one line per finished transaction).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// squid's own log.
    pub fn cache_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cache.log")).unwrap_or_default()
    }

    /// Wait (bounded by the test deadline) until the access log satisfies `done`.
    pub async fn wait_log(&self, done: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + LOG_WAIT;
        loop {
            let log = self.access_log();
            if done(&log) {
                return log;
            }
            assert!(Instant::now() < until, "access log never matched:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// Wait (bounded) until squid accepts connections; false if it exited or took too long.
fn wait_listening(child: &mut Child, addr: SocketAddr) -> bool {
    let until = Instant::now() + STARTUP;
    while Instant::now() < until {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Stop squid: SIGTERM to its PID (it exits at once with `shutdown_lifetime 0`, taking its
/// helpers with it), then SIGKILL if it lingers; and reap it.
fn terminate(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let until = Instant::now() + SHUTDOWN;
    while Instant::now() < until {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The configuration: listen on 127.0.0.1:`port`, everything in `dir`, no cache, no pinger,
/// CONNECT to 127.0.0.1 on `ports` only, with credentials when `auth`.
fn config(dir: &Path, port: u16, ports: &[u16], auth: bool) -> String {
    let d = dir.display();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut c = format!(
        "http_port 127.0.0.1:{port}\n\
         visible_hostname ptth-test\n\
         pid_filename {d}/squid.pid\n\
         access_log stdio:{d}/access.log\n\
         cache_log {d}/cache.log\n\
         cache_store_log none\n\
         coredump_dir {d}\n\
         logfile_rotate 0\n\
         cache deny all\n\
         pinger_enable off\n\
         shutdown_lifetime 0 seconds\n\
         acl CONNECT method CONNECT\n\
         acl relay_port port {}\n\
         acl relay_host dst 127.0.0.1\n",
        ports.join(" ")
    );
    if auth {
        c.push_str(&format!(
            "auth_param basic program {NCSA_AUTH} {d}/passwd\n\
             auth_param basic realm ptth-test\n\
             acl authed proxy_auth REQUIRED\n\
             http_access allow CONNECT relay_host relay_port authed\n"
        ));
    } else {
        c.push_str("http_access allow CONNECT relay_host relay_port\n");
    }
    c.push_str("http_access deny all\n");
    c
}
