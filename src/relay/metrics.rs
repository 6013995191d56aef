//! The relay's metrics: one entry point per event, and everything `/metrics` shows.
//!
//! ```text
//! forward ── Finished (name, method, path, status, bytes, durations, client) ──▶ request()
//!                                                       ├─▶ counters, histogram, bytes
//!                                                       └─▶ access log (if configured)
//! claim ── claimed() / refused(reason)      registry sweep ── forget(name)
//! ```
//!
//! Series (Prometheus text format, from `prometheus-client`):
//! - `ptth_requests_total{name,code}`: public responses by name and exact status code. `name`
//!   is empty for requests that named no agent the relay knows (so a client cannot make up
//!   series), and a name's series are removed when the relay forgets the name.
//! - `ptth_response_seconds`: histogram of the time to the response head.
//! - `ptth_bytes_total{direction="to_agent"|"to_public"}`: body bytes (and tunnelled bytes),
//!   added when a request or tunnel ends.
//! - `ptth_agent_connects_total`, `ptth_claim_refusals_total{reason}` (`bad_name`, `token`,
//!   `wrong_name`, `certificate`, `conflict`, `limit`).
//! - `ptth_agent_connections`, `ptth_parked_connections{name}`, `ptth_busy_connections{name}`,
//!   `ptth_waiting_requests{name}`, `ptth_names{state}`, `ptth_http_connections`: the pool as
//!   it is at the scrape.
//! - `ptth_access_log_dropped_total`, `ptth_build_info{version}`, `process_*`.
//! - The fleet (`--registry`): `ptth_fleet_forwards_total{direction="out"|"in"}` (requests sent
//!   to the relay that holds their name, and received from another relay),
//!   `ptth_fleet_registry_errors_total` (Redis calls that failed or timed out) and
//!   `ptth_fleet_registry_seconds` (histogram of the Redis round trips that succeeded).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::access_log::AccessLog;
use super::registry::{NameState, NameStats};

/// Upper bounds of the latency histogram, in seconds (time to the response head).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One finished public request: everything the metrics and the access log record of it.
#[derive(Debug, Clone)]
pub(crate) struct Finished<'a> {
    /// The name the request was routed to, if routing got that far (for the log).
    pub name: Option<&'a str>,
    /// Whether the relay knew that name (only then is it a metrics label).
    pub known: bool,
    pub method: &'a Method,
    /// The request target as received (path and query).
    pub path: &'a str,
    pub status: StatusCode,
    /// Request body bytes sent towards the agent.
    pub bytes_in: u64,
    /// Response body bytes sent to the public client.
    pub bytes_out: u64,
    /// From the request head to the response head.
    pub head: Duration,
    /// From the request head to the end of the response body (or the client leaving).
    pub duration: Duration,
    pub client: SocketAddr,
}

/// Why a claim was refused, as a label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) enum Refusal {
    BadName,
    Token,
    WrongName,
    Certificate,
    Conflict,
    Limit,
}

impl prometheus_client::encoding::EncodeLabelValue for Refusal {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Refusal::BadName => "bad_name",
            Refusal::Token => "token",
            Refusal::WrongName => "wrong_name",
            Refusal::Certificate => "certificate",
            Refusal::Conflict => "conflict",
            Refusal::Limit => "limit",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    name: String,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: Refusal,
}

/// The relay's series, and the access log they share the entry point with.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// Each name's `requests` series by code, looked up by `&str` so that a request of a
    /// series seen before allocates nothing (the family's own lookup wants owned labels); and
    /// what forgetting a name removes.
    series: RwLock<HashMap<String, Vec<(u16, Counter)>>>,
    response_seconds: Histogram,
    /// The two `ptth_bytes` series, made at start: a family lookup hashes and locks, and
    /// these are counted on every request.
    to_agent: Counter,
    to_public: Counter,
    connects: Counter,
    refusals: Family<ReasonLabels, Counter>,
    log_dropped: Counter,
    access_log: Option<AccessLog>,
    fleet_forwards: Family<DirectionLabels, Counter>,
    fleet_errors: Counter,
    fleet_seconds: Histogram,
}

/// Upper bounds of the Redis round-trip histogram, in seconds.
const REGISTRY_BUCKETS: [f64; 8] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0];

const TO_AGENT: DirectionLabels = DirectionLabels {
    direction: "to_agent",
};
const TO_PUBLIC: DirectionLabels = DirectionLabels {
    direction: "to_public",
};

impl Metrics {
    /// Fresh series; `access_log` gets a line per finished request.
    pub(crate) fn new(access_log: Option<AccessLog>) -> Metrics {
        let mut registry = crate::metrics::registry();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "ptth_requests",
            "Public responses by agent name (empty: no known agent) and status code",
            requests.clone(),
        );
        let response_seconds = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "ptth_response_seconds",
            "Time from a public request's head to its response head",
            response_seconds.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "ptth_bytes",
            "Body and tunnel bytes relayed, by direction",
            bytes.clone(),
        );
        let to_agent = bytes.get_or_create(&TO_AGENT).clone();
        let to_public = bytes.get_or_create(&TO_PUBLIC).clone();
        let connects = Counter::default();
        registry.register(
            "ptth_agent_connects",
            "Agent connections admitted (claims answered 101)",
            connects.clone(),
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ptth_claim_refusals",
            "Agent claims refused, by reason",
            refusals.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "ptth_access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            log_dropped.clone(),
        );
        let fleet_forwards = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "ptth_fleet_forwards",
            "Requests forwarded to the relay that holds their name (out) or from another relay (in)",
            fleet_forwards.clone(),
        );
        let fleet_errors = Counter::default();
        registry.register(
            "ptth_fleet_registry_errors",
            "Calls to the shared registry (Redis) that failed or timed out",
            fleet_errors.clone(),
        );
        let fleet_seconds = Histogram::new(REGISTRY_BUCKETS);
        registry.register(
            "ptth_fleet_registry_seconds",
            "Round trips to the shared registry (Redis) that succeeded",
            fleet_seconds.clone(),
        );
        Metrics {
            fleet_forwards,
            fleet_errors,
            fleet_seconds,
            registry,
            requests,
            series: RwLock::default(),
            response_seconds,
            to_agent,
            to_public,
            connects,
            refusals,
            log_dropped,
            access_log,
        }
    }

    /// Whether requests are written to an access log (which wants each request's target).
    pub(crate) fn logs_requests(&self) -> bool {
        self.access_log.is_some()
    }

    /// Record one finished public request (and log it).
    pub(crate) fn request(&self, r: &Finished<'_>) {
        let name = r.name.filter(|_| r.known).unwrap_or_default();
        let code = r.status.as_u16();
        self.series_of(name, code).inc();
        self.response_seconds.observe(r.head.as_secs_f64());
        self.to_agent.inc_by(r.bytes_in);
        self.to_public.inc_by(r.bytes_out);
        if let Some(log) = &self.access_log
            && !log.write(r)
        {
            self.log_dropped.inc();
        }
    }

    /// A tunnel (WebSocket) closed after `up` bytes from the client and `down` to it.
    pub(crate) fn tunnel_closed(&self, up: u64, down: u64) {
        self.to_agent.inc_by(up);
        self.to_public.inc_by(down);
    }

    /// An agent connection was admitted.
    pub(crate) fn claimed(&self) {
        self.connects.inc();
    }

    /// An agent's claim was refused.
    pub(crate) fn refused(&self, reason: Refusal) {
        self.refusals.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// The relay forgot `name` (its grace ended): its series go.
    pub(crate) fn forget(&self, name: &str) {
        let codes = self
            .series
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        for (code, _) in codes.unwrap_or_default() {
            self.requests.remove(&RequestLabels {
                name: name.to_string(),
                code,
            });
        }
    }

    /// The `requests` counter of (`name`, `code`), made on first use.
    fn series_of(&self, name: &str, code: u16) -> Counter {
        let found = |series: &HashMap<String, Vec<(u16, Counter)>>| {
            let codes = series.get(name)?;
            codes
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, n)| n.clone())
        };
        if let Some(n) = found(&self.series.read().unwrap_or_else(|e| e.into_inner())) {
            return n;
        }
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = found(&series) {
            return n;
        }
        let labels = RequestLabels {
            name: name.to_string(),
            code,
        };
        let counter = self.requests.get_or_create(&labels).clone();
        series
            .entry(labels.name)
            .or_default()
            .push((code, counter.clone()));
        counter
    }

    /// A request was forwarded to another relay of the fleet (`out`) or arrived from one.
    pub(crate) fn fleet_forward(&self, out: bool) {
        let direction = if out { "out" } else { "in" };
        self.fleet_forwards
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// A call to the shared registry failed.
    pub(crate) fn registry_error(&self) {
        self.fleet_errors.inc();
    }

    /// A call to the shared registry took `took`.
    pub(crate) fn registry_call(&self, took: Duration) {
        self.fleet_seconds.observe(took.as_secs_f64());
    }

    /// The text exposition, with the pool as it is now.
    pub(crate) fn render(&self, pool: Pool) -> String {
        let mut now = Registry::default();
        now.register_collector(Box::new(pool));
        crate::metrics::encode(&[&self.registry, &now])
    }

    /// Wait (briefly) until the access log has written what it was given.
    pub(crate) async fn flush(&self) {
        if let Some(log) = &self.access_log {
            log.flush().await;
        }
    }
}

/// The pool at a scrape: agent connections, per-name numbers, HTTP connections.
#[derive(Debug)]
pub(crate) struct Pool {
    pub agents: usize,
    pub names: Vec<NameStats>,
    pub http_connections: usize,
}

impl Collector for Pool {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "ptth_agent_connections",
            "Live agent connections.",
            [(NO_LABELS, self.agents)],
        )?;
        let per_name = |f: fn(&NameStats) -> usize| {
            self.names
                .iter()
                .map(move |s| ([("name", s.name.as_str())], f(s)))
        };
        gauge(
            &mut encoder,
            "ptth_parked_connections",
            "Idle parked connections per name.",
            per_name(|s| s.idle),
        )?;
        gauge(
            &mut encoder,
            "ptth_busy_connections",
            "Connections carrying a request per name.",
            per_name(|s| s.busy),
        )?;
        gauge(
            &mut encoder,
            "ptth_waiting_requests",
            "Public requests waiting per name.",
            per_name(|s| s.waiting),
        )?;
        let states = [
            ("connected", NameState::Connected),
            ("reconnecting", NameState::Reconnecting),
            ("offline", NameState::Offline),
        ];
        gauge(
            &mut encoder,
            "ptth_names",
            "Known agent names by state.",
            states.map(|(label, state)| {
                let n = self.names.iter().filter(|s| s.state == state).count();
                ([("state", label)], n)
            }),
        )?;
        // `ptth` connections that run HTTP/2 carry many streams each (decisions D86). A
        // connection that registered several origins counts once per name.
        let h2: usize = self.names.iter().map(|s| s.h2_connections).sum();
        gauge(
            &mut encoder,
            "ptth_agent_connections_by_protocol",
            "Live agent connections by the protocol inside them.",
            [
                ([("protocol", "http/1.1")], self.agents.saturating_sub(h2)),
                ([("protocol", "h2")], h2),
            ],
        )?;
        gauge(
            &mut encoder,
            "ptth_h2_streams_open",
            "Streams open per name on its HTTP/2 agent connections.",
            per_name(|s| s.h2_streams),
        )?;
        gauge(
            &mut encoder,
            "ptth_http_connections",
            "Connections served as HTTP: public clients, and agents before their switch.",
            [(NO_LABELS, self.http_connections)],
        )
    }
}

/// The label set of a series without labels.
const NO_LABELS: [(&str, &str); 0] = [];

/// One gauge family with its series.
fn gauge<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    series: impl IntoIterator<Item = (L, usize)>,
) -> Result<(), std::fmt::Error> {
    let kind = ConstGauge::new(0i64).metric_type();
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in series {
        let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        g.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}
