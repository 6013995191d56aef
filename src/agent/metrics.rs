//! The agent's metrics, for `ptth-connect --admin` ([`super::Agent::serve_admin`]).
//!
//! ```text
//! pool ── parked / reconnected / failure counted ──▶ connected(), reconnected(), failed()
//! conn ── each exchange: status, time to the response head ──▶ request()
//! scrape ── the pool's gauge (dialling, parked, busy) as it is now
//! ```
//!
//! Series (Prometheus text format, from `prometheus-client`, as the relay's):
//! - `ptth_agent_relay_connections{state="connecting"|"parked"|"busy"}`: the agent's connections to
//!   the relay at the scrape: being dialled (TCP, TLS, upgrade), parked and idle, parked and
//!   carrying a request.
//! - `ptth_agent_requests_total{code}`: responses sent back through the relay, by exact status
//!   code (the upstream's, or the agent's own `502` / `400`). An exchange cut before any
//!   response head is not counted.
//! - `ptth_agent_upstream_seconds`: histogram of the time from a request's head to the response
//!   head (the upstream's latency, as the agent sees it).
//! - `ptth_agent_relay_connects_total`: connections that parked (the relay answered the upgrade).
//! - `ptth_agent_reconnects_total`: times the service was reachable again after an outage.
//! - `ptth_agent_relay_failures_total`: failures to reach or stay with the relay, counted as
//!   the backoff counts them (once per outage step, not once per connection).
//! - `ptth_build_info{version}`, `process_*`: as the relay's (`crate::metrics`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::conn::Gauge;
use crate::admin::{self, Pages};
use crate::relay::LATENCY_BUCKETS;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: u16,
}

/// The agent's series. One per [`super::Agent`], shared by its clones.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<CodeLabels, Counter>,
    upstream_seconds: Histogram,
    connects: Counter,
    reconnects: Counter,
    failures: Counter,
    /// The running pool's gauge, read at each scrape (none while no pool runs).
    pool: Mutex<Weak<Gauge>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = crate::metrics::registry();
        let requests = Family::<CodeLabels, Counter>::default();
        registry.register(
            "ptth_agent_requests",
            "Responses sent back through the relay, by status code",
            requests.clone(),
        );
        let upstream_seconds = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "ptth_agent_upstream_seconds",
            "Time from a request's head to the upstream's response head",
            upstream_seconds.clone(),
        );
        let connects = Counter::default();
        registry.register(
            "ptth_agent_relay_connects",
            "Connections to the relay that parked (the upgrade succeeded)",
            connects.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "ptth_agent_reconnects",
            "Times the service was reachable through the relay again after an outage",
            reconnects.clone(),
        );
        let failures = Counter::default();
        registry.register(
            "ptth_agent_relay_failures",
            "Failures to reach or stay with the relay, counted as the backoff counts them",
            failures.clone(),
        );
        Metrics {
            registry,
            requests,
            upstream_seconds,
            connects,
            reconnects,
            failures,
            pool: Mutex::new(Weak::new()),
        }
    }
}

impl Metrics {
    /// The pool now running reads its numbers from `gauge`.
    pub(crate) fn attach(&self, gauge: &Arc<Gauge>) {
        *self.pool.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(gauge);
    }

    /// One exchange answered `status`, its response head `head` after its request head.
    pub(crate) fn request(&self, status: StatusCode, head: Duration) {
        self.requests
            .get_or_create(&CodeLabels {
                code: status.as_u16(),
            })
            .inc();
        self.upstream_seconds.observe(head.as_secs_f64());
    }

    /// A connection parked.
    pub(crate) fn connected(&self) {
        self.connects.inc();
    }

    /// The service is reachable again after an outage.
    pub(crate) fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// The pool counted a failure.
    pub(crate) fn failed(&self) {
        self.failures.inc();
    }

    /// The text exposition, with the connections as they are now.
    pub(crate) fn render(&self) -> String {
        let gauge = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade();
        let mut now = Registry::default();
        now.register_collector(Box::new(Connections::of(gauge.as_deref())));
        crate::metrics::encode(&[&self.registry, &now])
    }
}

/// The agent's admin pages: `/metrics`.
pub(crate) struct AgentPages(pub(crate) Arc<Metrics>);

impl Pages for AgentPages {
    fn page(&self, path: &str) -> Option<(&'static str, String)> {
        match path {
            "/metrics" => admin::metrics_page(self.0.render()),
            _ => None,
        }
    }

    fn index(&self) -> &'static str {
        "try /metrics\n"
    }
}

/// The connections at a scrape.
#[derive(Debug, Default)]
struct Connections {
    connecting: usize,
    parked: usize,
    busy: usize,
}

impl Connections {
    fn of(gauge: Option<&Gauge>) -> Self {
        let Some(g) = gauge else {
            return Connections::default();
        };
        let parked = g.parked.load(Ordering::Relaxed);
        // Busy connections are parked ones; read apart, the two may be a moment out of step.
        let busy = g.busy.load(Ordering::Relaxed).min(parked);
        Connections {
            connecting: g.dialing.load(Ordering::Relaxed),
            parked: parked - busy,
            busy,
        }
    }
}

impl Collector for Connections {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kind = ConstGauge::new(0i64).metric_type();
        let mut family = encoder.encode_descriptor(
            "ptth_agent_relay_connections",
            "Connections to the relay by state: being dialled, parked and idle, carrying a request.",
            None,
            kind,
        )?;
        for (state, n) in [
            ("connecting", self.connecting),
            ("parked", self.parked),
            ("busy", self.busy),
        ] {
            let g = ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            g.encode(family.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }
}
