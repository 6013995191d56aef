//! The request inspector of `ptth-connect --inspect`: every exchange the agent forwards, kept in
//! a bounded ring and served on a local page and ngrok's agent API, with replay.
//!
//! ```text
//! proxy (src/h1 engine) ── Tap::progress(&Capture) ─> Inspector: ring (count and byte bounds)
//!                       └─ Tap::record(Capture) ───────┤ (the entry in progress, replaced)
//!                                                      ├─ broadcast ──> SSE feed (/api/events)
//! api.rs (hyper, loopback) ── list, get, delete, HAR, curl, page
//!        └─ replay ── the same engine and upstream route, over an in-memory stream ──┘
//! ```
//!
//! The forwarding is never held up by it: the engine copies at most
//! [`InspectConfig::body_limit`] bytes of each body as the pieces go by, and the capture is
//! handed over (a lock held for a push) when the response head goes, if a body follows (the
//! entry is then marked in progress: an SSE stream that never ends is seen), and again when the
//! exchange ends (the entry is replaced, under the same id). Credentials
//! (`Authorization`, `Cookie`, `Set-Cookie`, `Proxy-Authorization`) are kept for replays and
//! redacted in everything shown, unless [`InspectConfig::redact`] is off.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::config::{
    DEFAULT_INSPECT_BODY_LIMIT, DEFAULT_INSPECT_MAX_BYTES, DEFAULT_INSPECT_MAX_REQUESTS,
};
use crate::h1::Record;
use crate::h1::tap::{Capture, Tap};

mod api;
mod entry;

pub use crate::proto::forwarded::{QUEUE_WAIT_FIELD, TIMING_FIELD, TIMING_QUEUE_WAIT};
pub use api::serve;
use entry::Entry;

/// Pending feed events per live page before a slow one is told it lagged.
const FEED_BACKLOG: usize = 256;

/// What the inspector keeps and shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectConfig {
    /// Most bytes kept of each request and response body (the rest is counted, not kept).
    pub body_limit: usize,
    /// Most exchanges kept: the oldest goes first.
    pub max_requests: usize,
    /// Most bytes kept in all (heads and kept bodies): the oldest goes first.
    pub max_bytes: usize,
    /// Show credentials as `[redacted]`.
    pub redact: bool,
    /// Where the public reaches the service (the agent's [`super::Agent::public_url`]): the
    /// copy-as-curl commands and the HAR's URLs target it. `None`: `http://localhost/`.
    pub public_url: Option<String>,
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig {
            body_limit: DEFAULT_INSPECT_BODY_LIMIT,
            max_requests: DEFAULT_INSPECT_MAX_REQUESTS,
            max_bytes: DEFAULT_INSPECT_MAX_BYTES,
            redact: true,
            public_url: None,
        }
    }
}

/// The inspector: give it to [`super::proxy::Proxy::inspect`] and serve it with [`serve`].
/// Cheap to clone.
#[derive(Clone)]
pub struct Inspector {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: InspectConfig,
    ring: Mutex<Ring>,
    next_id: AtomicU64,
    feed: broadcast::Sender<Event>,
}

/// What the live feed says.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Added(Arc<Entry>),
    /// An entry that was in progress has ended (the entry as it is now, same id).
    Updated(Arc<Entry>),
    Cleared,
}

/// The kept exchanges, oldest first, with their byte count.
#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    /// Exchanges dropped to keep the bounds (evicted, or too large to keep at all).
    dropped: u64,
}

impl Inspector {
    /// An inspector with an empty history.
    pub fn new(config: InspectConfig) -> Inspector {
        let (feed, _) = broadcast::channel(FEED_BACKLOG);
        Inspector {
            inner: Arc::new(Inner {
                config,
                ring: Mutex::new(Ring::default()),
                next_id: AtomicU64::new(1),
                feed,
            }),
        }
    }

    /// What it keeps and shows.
    pub fn config(&self) -> &InspectConfig {
        &self.inner.config
    }

    /// Record one exchange; `replay_of` names the entry it replays. `in_progress`: its
    /// response body has not ended yet. An exchange shown in progress before
    /// ([`Capture::shown`]) replaces its entry, if the ring still has it. Returns its id.
    fn add(
        &self,
        capture: Capture,
        record: &Record,
        replay_of: Option<String>,
        in_progress: bool,
    ) -> String {
        let replaces = capture.shown.clone();
        let id = replaces.clone().unwrap_or_else(|| {
            let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            format!("{n:016x}")
        });
        let answered = record.answered_at();
        let mut entry = Entry::new(id.clone(), replay_of, capture, answered, in_progress);
        let max_bytes = self.inner.config.max_bytes;
        if entry.size() > max_bytes {
            entry.drop_bodies();
        }
        let entry = Arc::new(entry);
        {
            let mut ring = self.ring();
            if let Some(old) = &replaces {
                // Newest at the back: an entry in progress is usually among the last few.
                let Some(at) = ring.entries.iter().rposition(|e| &e.id == old) else {
                    // Evicted (or cleared) while in progress: it stays gone.
                    return id;
                };
                let old = std::mem::replace(&mut ring.entries[at], entry.clone());
                ring.bytes = ring.bytes - old.size() + entry.size();
                // The bodies grew: the oldest others go first, then this one if still too much.
                while ring.bytes > max_bytes {
                    let Some(gone) = ring.entries.pop_front() else {
                        break;
                    };
                    ring.bytes -= gone.size();
                    ring.dropped += 1;
                }
            } else {
                if entry.size() > max_bytes || self.inner.config.max_requests == 0 {
                    ring.dropped += 1;
                    return id;
                }
                while ring.entries.len() >= self.inner.config.max_requests
                    || ring.bytes + entry.size() > max_bytes
                {
                    let Some(old) = ring.entries.pop_front() else {
                        break;
                    };
                    ring.bytes -= old.size();
                    ring.dropped += 1;
                }
                ring.bytes += entry.size();
                ring.entries.push_back(entry.clone());
            }
        }
        // No page listening is no error.
        let event = match replaces {
            Some(_) => Event::Updated(entry),
            None => Event::Added(entry),
        };
        let _ = self.inner.feed.send(event);
        id
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock cannot leave the ring inconsistent in a way that
        // matters more than losing the inspector: keep serving.
        self.inner.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest `limit` entries, newest first.
    fn list(&self, limit: usize) -> Vec<Arc<Entry>> {
        self.ring()
            .entries
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.ring().entries.iter().find(|e| e.id == id).cloned()
    }

    fn clear(&self) {
        let mut ring = self.ring();
        ring.entries.clear();
        ring.bytes = 0;
        drop(ring);
        let _ = self.inner.feed.send(Event::Cleared);
    }

    /// Counts for `/api/status`: entries, bytes, dropped.
    fn counts(&self) -> (usize, usize, u64) {
        let ring = self.ring();
        (ring.entries.len(), ring.bytes, ring.dropped)
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.feed.subscribe()
    }
}

impl Tap for Inspector {
    fn body_limit(&self) -> usize {
        self.inner.config.body_limit
    }

    fn record(&self, capture: Capture, record: &Record) {
        self.add(capture, record, None, false);
    }

    fn progress(&self, capture: &mut Capture, record: &Record) {
        capture.shown = Some(self.add(capture.clone(), record, None, true));
    }
}

/// The tap of one replay: its entry names the one replayed, and its id is kept for the API's
/// answer.
struct ReplayTap<'a> {
    inspector: &'a Inspector,
    of: String,
    id: Mutex<Option<String>>,
}

impl Tap for ReplayTap<'_> {
    fn body_limit(&self) -> usize {
        self.inspector.inner.config.body_limit
    }

    fn record(&self, capture: Capture, record: &Record) {
        let id = self
            .inspector
            .add(capture, record, Some(self.of.clone()), false);
        *self.id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }

    fn progress(&self, capture: &mut Capture, record: &Record) {
        let id = self
            .inspector
            .add(capture.clone(), record, Some(self.of.clone()), true);
        capture.shown = Some(id.clone());
        *self.id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }
}
