//! `--access-log`: one JSON object per line for each public request, written by a task of its
//! own so that a request never waits for the disk.
//!
//! ```text
//! metrics::request ── try_send (bounded, ACCESS_LOG_QUEUE) ──▶ writer task ──▶ file | stdout
//!                      full: the line is dropped and counted
//! ```
//!
//! JSON lines rather than the common log format: the relay's line has fields CLF has no place
//! for (the agent name, bytes in both directions, the duration), every log shipper parses JSON
//! without a custom pattern, and JSON escaping keeps a hostile path from forging a line.

use std::io;
use std::time::SystemTime;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};

use super::metrics::Finished;
use super::{ACCESS_LOG_FLUSH_WAIT, ACCESS_LOG_QUEUE, AccessLogTarget};

enum Msg {
    Line(String),
    /// Answered once every line queued before it is written and flushed.
    Flush(oneshot::Sender<()>),
}

/// The sending side of the access log.
pub(crate) struct AccessLog {
    tx: mpsc::Sender<Msg>,
}

/// One line's fields, in order.
#[derive(serde::Serialize)]
struct Line<'a> {
    time: String,
    name: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    client: String,
}

impl AccessLog {
    /// Open `target` and start its writer task (it ends when the `AccessLog` is dropped).
    pub(crate) async fn open(target: &AccessLogTarget) -> io::Result<AccessLog> {
        let out: Box<dyn AsyncWrite + Send + Unpin> = match target {
            AccessLogTarget::Stdout => Box::new(tokio::io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?,
            ),
        };
        let (tx, rx) = mpsc::channel(ACCESS_LOG_QUEUE);
        tokio::spawn(write_lines(rx, BufWriter::new(out)));
        Ok(AccessLog { tx })
    }

    /// Queue the line for `r`; `false` when the queue is full (the line is dropped).
    pub(crate) fn write(&self, r: &Finished<'_>) -> bool {
        self.tx
            .try_send(Msg::Line(line(r, SystemTime::now())))
            .is_ok()
    }

    /// Wait until what was queued so far is written, for at most [`ACCESS_LOG_FLUSH_WAIT`].
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        let done = async {
            if self.tx.send(Msg::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        };
        let _ = tokio::time::timeout(ACCESS_LOG_FLUSH_WAIT, done).await;
    }
}

/// The JSON line for `r`, newline included.
fn line(r: &Finished<'_>, now: SystemTime) -> String {
    let line = Line {
        time: humantime::format_rfc3339_millis(now).to_string(),
        name: r.name,
        method: r.method.as_str(),
        path: r.path,
        status: r.status.as_u16(),
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        duration_ms: r.duration.as_micros() as f64 / 1000.0,
        client: r.client.to_string(),
    };
    // Serialising plain strings and numbers cannot fail.
    let mut s = serde_json::to_string(&line).unwrap_or_default();
    s.push('\n');
    s
}

/// Write lines as they come, flushing whenever the queue is empty (so a quiet relay's log is
/// up to date, and a busy one writes in large pieces).
async fn write_lines(
    mut rx: mpsc::Receiver<Msg>,
    mut out: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
) {
    let mut failed = false;
    while let Some(msg) = rx.recv().await {
        let mut next = Some(msg);
        let mut flushed = Vec::new();
        while let Some(msg) = next {
            match msg {
                Msg::Line(l) => {
                    if let Err(e) = out.write_all(l.as_bytes()).await
                        && !std::mem::replace(&mut failed, true)
                    {
                        tracing::warn!("writing the access log failed: {e}");
                    }
                }
                Msg::Flush(tx) => flushed.push(tx),
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush().await
            && !std::mem::replace(&mut failed, true)
        {
            tracing::warn!("writing the access log failed: {e}");
        }
        for tx in flushed {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_queue_drops_lines_and_counts_them_without_waiting() {
        // A writer that never reads: the queue holds two lines, the third is dropped at once.
        let (tx, _writer_stalled) = mpsc::channel(2);
        let metrics = super::super::metrics::Metrics::new(Some(AccessLog { tx }));
        let method = http::Method::GET;
        let r = Finished {
            name: None,
            known: false,
            method: &method,
            path: "/",
            status: http::StatusCode::NOT_FOUND,
            bytes_in: 0,
            bytes_out: 0,
            head: Duration::ZERO,
            duration: Duration::ZERO,
            client: "127.0.0.1:4000".parse().unwrap(),
        };
        for _ in 0..3 {
            metrics.request(&r);
        }
        let text = metrics.render(super::super::metrics::Pool {
            agents: 0,
            names: Vec::new(),
            http_connections: 0,
        });
        assert!(text.contains("ptth_access_log_dropped_total 1\n"), "{text}");
        assert!(
            text.contains("ptth_requests_total{name=\"\",code=\"404\"} 3\n"),
            "{text}"
        );
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let method = http::Method::GET;
        let r = Finished {
            name: Some("app"),
            known: true,
            method: &method,
            path: "/a\"b\n?q=1",
            status: http::StatusCode::BAD_GATEWAY,
            bytes_in: 3,
            bytes_out: 17,
            head: Duration::from_millis(1),
            duration: Duration::from_micros(2500),
            client: "127.0.0.1:4000".parse().unwrap(),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        let l = line(&r, now);
        assert_eq!(l.matches('\n').count(), 1, "{l}");
        assert!(l.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:01.500Z");
        assert_eq!(v["name"], "app");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a\"b\n?q=1");
        assert_eq!(v["status"], 502);
        assert_eq!(v["bytes_in"], 3);
        assert_eq!(v["bytes_out"], 17);
        assert_eq!(v["duration_ms"], 2.5);
        assert_eq!(v["client"], "127.0.0.1:4000");
    }
}
