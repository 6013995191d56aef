//! An optional observer of the exchanges the engine runs: the agent's request inspector.
//!
//! ```text
//! exchange(): request head ─ request body pieces ─ response head ─ response body pieces ─ end
//!                 │                  │                    │                  │             │
//!                 └──────────────────┴───── Capture (bodies kept up to a cap) ───────────┴─> Tap::record
//!                                                         └─> Tap::progress (a body follows)
//! ```
//!
//! Every exchange writes one [`Record`] (status, bytes, when the response head went), which the
//! caller reads; a [`Capture`] (the record's `copy`) exists only when [`super::Settings::tap`]
//! is set: with no tap, the copy costs an `Option` check at each of the points above (no
//! allocation).
//! With one, body pieces are copied as they are written on (at most [`Tap::body_limit`] bytes
//! of each body), so forwarding is never held up: a streamed response still goes piece by
//! piece, and the capture is handed to the tap when the exchange ends. When a response body
//! follows its head, the tap is also shown the exchange as it stands once the head is composed
//! ([`Tap::progress`]), so that an exchange that never ends (an SSE stream) is seen too.

use std::time::SystemTime;

use tokio::time::Instant;

use super::exchange::Record;

/// Where captured exchanges go (the agent's inspector).
pub(crate) trait Tap: Send + Sync {
    /// Most bytes kept of each body; the rest is counted, not kept.
    fn body_limit(&self) -> usize;

    /// One exchange ended: answered by the next hop, or by this hop itself (a `502`, a `400`).
    /// `record` says the rest (the status, the bytes, when the response head went).
    fn record(&self, capture: Capture, record: &Record);

    /// The response head of an exchange has been composed and its body is to follow: the
    /// exchange so far (no response body yet). The tap may note in [`Capture::shown`] what it
    /// made of it, for [`Tap::record`] to find when the exchange ends.
    fn progress(&self, capture: &mut Capture, record: &Record) {
        let _ = (capture, record);
    }
}

/// The copy of one exchange a tap is shown: its heads and the start of its bodies, the optional
/// part of the exchange's [`Record`] (the counts and times are the record's).
#[derive(Debug, Clone)]
pub(crate) struct Capture {
    /// When the request head was complete.
    pub(crate) started: Instant,
    /// [`Capture::started`] on the wall clock.
    pub(crate) started_wall: SystemTime,
    /// The request head as it came in (before any rewrite), its final CRLF included.
    pub(crate) request_head: Vec<u8>,
    pub(crate) request_body: Kept,
    /// When the rewritten request head was handed to the next hop's connection (connected).
    /// (When the response head went is the record's: [`Record::answered_at`].)
    pub(crate) sent: Option<Instant>,
    /// The final response head as the next hop sent it, or the answer this hop composed.
    pub(crate) response_head: Vec<u8>,
    pub(crate) response_body: Kept,
    /// Why the exchange did not end normally; `None` when it did.
    pub(crate) failed: Option<String>,
    /// What the tap noted when it was shown the exchange in progress (the inspector's entry
    /// id), if it was.
    pub(crate) shown: Option<String>,
}

impl Capture {
    pub(crate) fn new(request_head: &[u8], limit: usize) -> Self {
        Capture {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            request_head: request_head.to_vec(),
            request_body: Kept::new(limit),
            sent: None,
            response_head: Vec::new(),
            response_body: Kept::new(limit),
            failed: None,
            shown: None,
        }
    }
}

/// The start of one body, and its whole length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Kept {
    pub(crate) bytes: Vec<u8>,
    /// Content bytes seen, kept or not.
    pub(crate) total: u64,
    limit: usize,
}

impl Kept {
    pub(crate) fn new(limit: usize) -> Self {
        Kept {
            bytes: Vec::new(),
            total: 0,
            limit,
        }
    }

    /// One piece of content, as it is written on.
    pub(crate) fn see(&mut self, piece: &[u8]) {
        self.total += piece.len() as u64;
        let room = self.limit.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&piece[..room.min(piece.len())]);
    }

    /// Whether some of the body was not kept.
    pub(crate) fn truncated(&self) -> bool {
        self.total > self.bytes.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_kept_up_to_its_limit_and_counted_whole() {
        let mut k = Kept::new(5);
        k.see(b"abc");
        assert!(!k.truncated());
        k.see(b"defgh");
        k.see(b"ij");
        assert_eq!((&k.bytes[..], k.total), (&b"abcde"[..], 10));
        assert!(k.truncated());
        let mut none = Kept::new(0);
        none.see(b"x");
        assert!(none.bytes.is_empty() && none.truncated());
    }
}
