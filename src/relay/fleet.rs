//! The fleet: several relays serving one name space, with Redis as the shared registry of which
//! relay holds which name (`--registry`, decisions D93–D97).
//!
//! ```text
//! claim (first connection of a name) ──▶ CLAIM script: ptth:name:{name} = {relay, token} + TTL
//! every TTL/3 ──▶ REFRESH script for each local name; RELEASE for names this relay forgot
//! public request, name without a local connection ──▶ HGET relay ──▶ another relay: forward
//!     once to its peer listener (PTTH-Fleet-Hop: 1, Forwarded), over a kept peer connection
//! ```
//!
//! The record holds the advertised URL of the relay and the SHA-256 of the token (never the
//! token). A claim with another token than the record's is refused like a local conflict
//! (`409`); the same token takes the record over (an agent that moved to another relay). When
//! Redis cannot be reached the relay serves what it holds itself and says so (log, metrics);
//! its next refresh writes its names back once Redis returns.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{FleetConfig, PEER_CONNECT_TIMEOUT, PEER_IDLE_PER_PEER, REGISTRY_TIMEOUT};
use super::metrics::Metrics;
use super::registry::Registry;
use crate::h1::{BoxError, Route};
use crate::proto::forwarded::Hop;
use crate::proto::head;

/// The field that marks a request forwarded by another relay of the fleet: a request that
/// carries it is never forwarded again.
pub(crate) const HOP_FIELD: &str = "ptth-fleet-hop";

/// The Redis key of a name's record.
fn key(name: &str) -> String {
    format!("ptth:name:{{{name}}}")
}

/// Take the name unless another token holds it; the same token takes it over.
/// KEYS[1] the name's key; ARGV: relay URL, token hash, TTL in ms. Returns `{1}` or
/// `{0, holder URL}`.
const CLAIM: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'relay', 'token')
if cur[1] and cur[2] ~= ARGV[2] then return {0, cur[1]} end
redis.call('HSET', KEYS[1], 'relay', ARGV[1], 'token', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1}
";

/// Keep the record alive while it is this relay's; write it back when it is gone (Redis lost
/// it, or it expired while Redis was away). Returns 1 if the record is this relay's, 0 if
/// another relay holds it now.
const REFRESH: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'relay', 'token')
if not cur[1] then
  redis.call('HSET', KEYS[1], 'relay', ARGV[1], 'token', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if cur[1] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
";

/// Delete the record if it is this relay's. ARGV[1] the relay URL.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'relay') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Why the shared registry could not answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetError {
    /// Redis answered with an error, or the connection failed.
    #[error("the shared registry (Redis) failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within [`REGISTRY_TIMEOUT`].
    #[error("the shared registry (Redis) did not answer within {0:?}")]
    Timeout(Duration),
}

/// Why the fleet refused a claim.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The record is this relay's now (or Redis is away: the claim is local only for now).
    Ours,
    /// Another token holds the name on the relay at this URL.
    Taken(String),
}

/// This relay's part of the fleet: its Redis connection, its record of the names it holds, and
/// its kept connections to the other relays.
pub(crate) struct Fleet {
    config: FleetConfig,
    redis: ConnectionManager,
    claim: Script,
    refresh: Script,
    release: Script,
    metrics: Arc<Metrics>,
    /// Whether the last call to Redis failed (to log the change once, not every call).
    down: AtomicBool,
    /// Idle keep-alive connections to other relays' peer listeners, by `host:port`.
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
}

/// The `host:port` of an `http://host:port[/]` URL.
pub(crate) fn authority(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let a = rest.split('/').next()?;
    (!a.is_empty()).then_some(a)
}

impl Fleet {
    /// Set up the Redis client (it connects on first use and reconnects by itself).
    pub(crate) fn new(config: FleetConfig, metrics: Arc<Metrics>) -> Result<Fleet, FleetError> {
        let client = redis::Client::open(config.registry.as_str())?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REGISTRY_TIMEOUT))
            .set_response_timeout(Some(REGISTRY_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(REGISTRY_TIMEOUT);
        let redis = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        Ok(Fleet {
            config,
            redis,
            claim: Script::new(CLAIM),
            refresh: Script::new(REFRESH),
            release: Script::new(RELEASE),
            metrics,
            down: AtomicBool::new(false),
            idle: Mutex::default(),
        })
    }

    fn ttl_ms(&self) -> u64 {
        self.config.ttl.as_millis() as u64
    }

    /// Run one call to Redis within [`REGISTRY_TIMEOUT`], counting its time and failures and
    /// logging when Redis goes away and comes back.
    async fn call<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, FleetError> {
        let started = Instant::now();
        let r = match tokio::time::timeout(REGISTRY_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(FleetError::Redis(e)),
            Err(_) => Err(FleetError::Timeout(REGISTRY_TIMEOUT)),
        };
        match &r {
            Ok(_) => {
                self.metrics.registry_call(started.elapsed());
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::warn!("the shared registry (Redis) answers again");
                }
            }
            Err(e) => {
                self.metrics.registry_error();
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        "{what}: {e}; serving the names held here, no forwards until it returns"
                    );
                } else {
                    tracing::debug!("{what}: {e}");
                }
            }
        }
        r
    }

    /// Record that this relay holds `name` for the token with `fingerprint`, unless another
    /// token holds it fleet-wide. With Redis away the claim is let through (local only): the
    /// next refresh records it.
    pub(crate) async fn claim(&self, name: &str, fingerprint: &str) -> Claimed {
        let mut c = self.redis.clone();
        let mut inv = self.claim.key(key(name));
        inv.arg(&self.config.advertise)
            .arg(fingerprint)
            .arg(self.ttl_ms());
        let got: Result<Vec<Value>, _> = self.call("claiming", inv.invoke_async(&mut c)).await;
        match got.as_deref() {
            Ok([Value::Int(0), holder]) => {
                Claimed::Taken(redis::from_redis_value_ref(holder).unwrap_or_default())
            }
            _ => Claimed::Ours,
        }
    }

    /// The advertised URL of the relay that holds `name`, when that is another relay. `None`
    /// when no relay does, this one does, or Redis cannot say.
    pub(crate) async fn holder(&self, name: &str) -> Option<String> {
        let mut c = self.redis.clone();
        let cmd = redis::cmd("HGET").arg(key(name)).arg("relay").to_owned();
        let got: Option<String> = self
            .call("looking a name up", cmd.query_async(&mut c))
            .await
            .ok()?;
        got.filter(|u| *u != self.config.advertise)
    }

    /// Refresh the records of `names` (with their token hashes) and release those of `gone`.
    async fn refresh_all(
        &self,
        names: &[(String, String)],
        gone: &[String],
    ) -> Result<(), FleetError> {
        let mut c = self.redis.clone();
        for (name, fingerprint) in names {
            let mut inv = self.refresh.key(key(name));
            inv.arg(&self.config.advertise)
                .arg(fingerprint)
                .arg(self.ttl_ms());
            let ours: i64 = self.call("refreshing", inv.invoke_async(&mut c)).await?;
            if ours == 0 {
                tracing::debug!(%name, "another relay of the fleet holds the name now");
            }
        }
        for name in gone {
            let mut inv = self.release.key(key(name));
            inv.arg(&self.config.advertise);
            let _: i64 = self.call("releasing", inv.invoke_async(&mut c)).await?;
        }
        Ok(())
    }

    /// Every third of the TTL, refresh the records of the names this relay holds (connected,
    /// or in their grace) and release those it forgot, until `stop`.
    pub(crate) async fn keep_records(
        self: Arc<Self>,
        registry: Arc<Registry>,
        stop: CancellationToken,
    ) {
        let every = (self.config.ttl / 3).max(Duration::from_millis(100));
        let mut held: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
            let names = registry.owners();
            let now: HashSet<String> = names.iter().map(|(n, _)| n.clone()).collect();
            let gone: Vec<String> = held.difference(&now).cloned().collect();
            if self.refresh_all(&names, &gone).await.is_ok() {
                held = now;
            }
        }
        // Stopping: the records are left to expire rather than deleted, so that for one more
        // TTL no other token can take a name whose agent is on its way to another relay.
    }

    /// A kept connection to the peer at `authority`, or a new one within
    /// [`PEER_CONNECT_TIMEOUT`].
    async fn connect(&self, authority: &str) -> Result<TcpStream, BoxError> {
        let kept = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(authority)
            .and_then(Vec::pop);
        if let Some(tcp) = kept {
            return Ok(tcp);
        }
        let tcp = tokio::time::timeout(PEER_CONNECT_TIMEOUT, TcpStream::connect(authority))
            .await
            .map_err(|_| format!("no connection within {PEER_CONNECT_TIMEOUT:?}"))??;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    /// Keep a connection to `authority` for the next forward (up to [`PEER_IDLE_PER_PEER`]).
    pub(crate) fn keep(&self, authority: &str, tcp: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let kept = idle.entry(authority.to_string()).or_default();
        if kept.len() < PEER_IDLE_PER_PEER {
            kept.push(tcp);
        }
    }

    /// The metrics, for the forward's count.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// One public request's way to the relay that holds its name: the target as the client sent
/// it (that relay routes it again), this hop's `Forwarded`, and the hop marker.
pub(crate) struct PeerRoute<'a> {
    pub(crate) fleet: &'a Fleet,
    /// The peer's `host:port`.
    pub(crate) authority: &'a str,
    /// This hop (no prefix: the target keeps `/NAME`).
    pub(crate) hop: Hop<'a>,
}

impl Route for PeerRoute<'_> {
    type Io = TcpStream;

    fn target(&self, target: &str, out: &mut BytesMut) -> Result<(), String> {
        out.put_slice(target.as_bytes());
        Ok(())
    }

    fn drops(&self, name: &str) -> bool {
        self.hop.drops(name) || name.eq_ignore_ascii_case(HOP_FIELD)
    }

    fn add_fields(&self, req: &head::Request<'_, '_>, out: &mut BytesMut) {
        self.hop.write(req.fields, out);
        out.put_slice(HOP_FIELD.as_bytes());
        out.put_slice(b": 1\r\n");
    }

    async fn connect(&self) -> Result<TcpStream, BoxError> {
        self.fleet.connect(self.authority).await
    }

    fn failed(&self, why: &dyn std::fmt::Display) -> String {
        tracing::info!(peer = %self.authority, error = %why, "forwarding to the relay that holds the name failed");
        format!("the relay that holds this name did not answer: {why}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_of_advertised_urls() {
        assert_eq!(authority("http://10.0.0.1:9000"), Some("10.0.0.1:9000"));
        assert_eq!(
            authority("http://r1.internal:9000/"),
            Some("r1.internal:9000")
        );
        assert_eq!(authority("https://x:1"), None);
        assert_eq!(authority("http:///"), None);
    }

    #[test]
    fn keys_are_one_hash_slot_per_name() {
        assert_eq!(key("app"), "ptth:name:{app}");
    }
}
