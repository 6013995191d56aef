//! The admin listener: `/metrics` (Prometheus text format) and `/agents` (JSON).
//!
//! Off by default; bind it to a private address. Counters are plain atomics updated on the hot
//! path without locks.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// Upper bounds of the latency histogram, in seconds (time to the response head).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Relay-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class: index 1..=5 for 1xx..5xx.
    by_class: [AtomicU64; 6],
    /// Cumulative histogram counts, one per bucket, plus `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_micros: AtomicU64,
    /// Public request body bytes sent to agents.
    pub(crate) bytes_in: Arc<AtomicU64>,
    /// Response body bytes sent to public clients.
    pub(crate) bytes_out: Arc<AtomicU64>,
}

impl Metrics {
    /// Count one public response.
    pub(crate) fn record(&self, status: StatusCode, latency: Duration) {
        let class = (status.as_u16() / 100) as usize;
        self.by_class[class.min(5)].fetch_add(1, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.latency_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }
}

/// The Prometheus text exposition.
pub(crate) fn render(shared: &Shared) -> String {
    let m = &shared.metrics;
    let mut out = String::new();
    let stats = shared.registry.stats();
    let _ = writeln!(out, "# HELP ptth_agent_connections Live agent connections.");
    let _ = writeln!(out, "# TYPE ptth_agent_connections gauge");
    let _ = writeln!(out, "ptth_agent_connections {}", shared.registry.total());
    for (metric, help) in [
        (
            "ptth_parked_connections",
            "Idle parked connections per name.",
        ),
        (
            "ptth_busy_connections",
            "Connections carrying a request per name.",
        ),
        ("ptth_waiting_requests", "Public requests waiting per name."),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
        for s in &stats {
            let v = match metric {
                "ptth_parked_connections" => s.idle,
                "ptth_busy_connections" => s.busy,
                _ => s.waiting,
            };
            let _ = writeln!(out, "{metric}{{name=\"{}\"}} {v}", s.name);
        }
    }
    let _ = writeln!(
        out,
        "# HELP ptth_requests_total Public responses by status class.\n# TYPE ptth_requests_total counter"
    );
    for (i, c) in m.by_class.iter().enumerate().skip(1) {
        let _ = writeln!(
            out,
            "ptth_requests_total{{code=\"{i}xx\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP ptth_response_seconds Time to the response head.\n# TYPE ptth_response_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, b) in m.buckets.iter().enumerate() {
        cumulative += b.load(Ordering::Relaxed);
        let le = LATENCY_BUCKETS
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(
            out,
            "ptth_response_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let sum = m.latency_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "ptth_response_seconds_sum {sum}");
    let _ = writeln!(out, "ptth_response_seconds_count {cumulative}");
    let _ = writeln!(
        out,
        "# HELP ptth_bytes_total Body bytes relayed.\n# TYPE ptth_bytes_total counter"
    );
    let _ = writeln!(
        out,
        "ptth_bytes_total{{direction=\"to_agent\"}} {}",
        m.bytes_in.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "ptth_bytes_total{{direction=\"to_public\"}} {}",
        m.bytes_out.load(Ordering::Relaxed)
    );
    out
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", render(&shared)),
        "/agents" => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&shared.registry.stats()).unwrap_or_else(|_| "[]".into()),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /agents\n".into(),
        ),
    };
    let mut res = Response::new(Full::from(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    Ok(res)
}

/// Serve the admin endpoints until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(%e, "admin accept failed");
                    tokio::time::sleep(super::ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
