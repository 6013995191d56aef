//! The protocol's size caps and deadlines: everything a PTTH peer can make the dialer or the
//! listener read or wait for.
//!
//! One struct for both roles, so that the dialer and the listener agree on what "too large" and
//! "too slow" mean, and the fixed caps of the handshake beside it. Every default is a named
//! constant with its reason next to it; the test at the bottom pins them, so changing one is a
//! deliberate act (update `spec-notes/decisions.md` too). The relay's and the agent's own
//! settings (queues, pools, buffers, their deadlines) live with their roles: the top of
//! `src/relay/config.rs` and `src/agent/config.rs`.

use std::time::Duration;

/// Largest request or response head (start line plus fields) accepted: 16 KiB.
///
/// RFC 9112 §3 asks for at least 8000 bytes of request line; 16 KiB covers that with room for
/// ordinary cookies, while bounding what one slow peer can pin in memory.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most header fields in one head: 100, hyper's own default.
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// Largest upgrade-request body the listener reads before switching: 64 KiB.
///
/// The draft allows credentials in the body; nothing legitimate needs more.
pub const DEFAULT_MAX_UPGRADE_BODY: usize = 64 * 1024;

/// Most bytes of a refusal body the dialer keeps for the caller: 64 KiB (the rest is dropped).
pub const DEFAULT_MAX_REFUSAL_BODY: usize = 64 * 1024;

/// Deadline for a whole handshake (upgrade request, body, and the 101): 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for a reversed request head at the dialer once its first byte has arrived: 10 s
/// (slow-loris cap). Not the relay's deadline for public request heads
/// (`relay::DEFAULT_HEAD_TIMEOUT`), which is its own setting.
pub const DEFAULT_REVERSED_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of the read buffer of each forwarded HTTP/1.1 connection (`crate::h1`): 64 KiB.
///
/// Measured on the hot path (issue 13): a 64 KiB body moves in one read and one write with
/// 64 KiB buffers, and in 12.5 syscalls per request with 16 KiB ones. Must hold a whole head
/// ([`DEFAULT_MAX_HEAD_BYTES`]); a larger head cap grows the buffer to fit.
pub const DEFAULT_BUFFER_BYTES: usize = 64 * 1024;

/// Size of the first read buffer of a forwarded HTTP/1.1 connection (`crate::h1`): 8 KiB.
///
/// Most connections only ever carry small heads, and a public client that connects and waits
/// would otherwise hold a whole [`DEFAULT_BUFFER_BYTES`] buffer. The buffer grows to its full
/// size the first time one read fills it (a large head or body is coming), and stays grown.
pub const FIRST_READ_BYTES: usize = 8 * 1024;

/// How many `204 No Content` answers in a row the dialer re-sends its upgrade request for,
/// before it reports the refusal: 100 (Yaler sends `204` when no public client came within its
/// renewal period; each round has its own [`Limits::handshake_timeout`]).
pub const MAX_NO_CONTENT_ROUNDS: usize = 100;

/// Longest chunk-size line (size plus extensions) accepted in a handshake body: 1 KiB.
pub const MAX_CHUNK_LINE: usize = 1024;

/// Most trailer-section bytes accepted after the last chunk of a handshake body: 8 KiB.
pub const MAX_TRAILER_BYTES: usize = 8 * 1024;

/// Most origins one `ptth` offer may register in its well-known target: 64 (each is checked
/// against the dialer's credentials; a bound keeps that work small).
pub const MAX_OFFER_ORIGINS: usize = 64;

/// How many bytes one read asks for during the handshake: 4 KiB (a whole upgrade request or
/// `101` in one read, without reserving the head cap up front).
pub const HANDSHAKE_READ_CHUNK: usize = 4096;

/// How long a forwarding hop (the relay, the agent's proxy) waits for the next hop's
/// `100 Continue` before it sends a request body anyway: 1 s.
///
/// RFC 9110 §10.1.1 lets a client send the content without the `100` and says not to wait
/// indefinitely (a next hop may ignore the expectation, as HTTP/1.0 servers do). 1 s is curl's
/// own wait, so a client behind the relay sees the same delay it would see direct; a refusal
/// that takes longer than that costs the upload, as it would direct.
pub const CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// Streams one transposed HTTP/2 connection carries at once, as the dialer (the h2 server)
/// advertises in `SETTINGS_MAX_CONCURRENT_STREAMS`: 128 (RFC 9113 §6.5.2 asks for no fewer
/// than 100; each stream holds a request of the dialer's service).
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 128;

/// How often either side of a transposed HTTP/2 connection sends a PING when it has heard
/// nothing: 20 s (under the 30 s idle timeout of common NATs and load balancers, so the PING
/// also keeps the path open).
pub const DEFAULT_H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// How long a PING may go unanswered before the transposed HTTP/2 connection is closed: 20 s.
pub const DEFAULT_H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a transposed HTTP/2 connection may wait for the peer to take any byte before it is
/// closed: 20 s, as long as a PING may go unanswered. A peer that stops reading never answers
/// a PING either, but hyper would wait forever to send its GOAWAY (`io::WriteDeadline`).
pub const DEFAULT_H2_WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest HTTP/2 frame payload either side of a transposed connection accepts, as it
/// advertises in `SETTINGS_MAX_FRAME_SIZE`: 64 KiB, so a body goes as the chunks it was read in
/// (the agent's upstream reads, the relay's bridge writes) instead of 16 KiB pieces, the
/// protocol's default. Measured with `bench/callgrind.sh` (BENCHMARKS.md, "HTTP/2 inside ptth
/// (session 26)"). The cost: each side's frame reader may grow to one frame (its buffer is
/// per connection, not per stream).
pub const DEFAULT_H2_MAX_FRAME_SIZE: u32 = 64 * 1024;

/// HTTP/2 settings of a transposed `ptth` connection, in either role. The header list cap is
/// [`Limits::max_head_bytes`], the same "too large" as on HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Limits {
    /// Streams the dialer serves at once (its `SETTINGS_MAX_CONCURRENT_STREAMS`). Default:
    /// [`DEFAULT_H2_MAX_CONCURRENT_STREAMS`].
    pub max_concurrent_streams: u32,
    /// PING interval; `None` sends no PINGs. Default: [`DEFAULT_H2_KEEP_ALIVE_INTERVAL`].
    pub keep_alive_interval: Option<Duration>,
    /// How long an unanswered PING is waited for. Default: [`DEFAULT_H2_KEEP_ALIVE_TIMEOUT`].
    pub keep_alive_timeout: Duration,
    /// How long a write may make no progress (the peer reads nothing) before the connection
    /// fails. Default: [`DEFAULT_H2_WRITE_TIMEOUT`].
    pub write_timeout: Duration,
    /// Largest frame payload accepted (`SETTINGS_MAX_FRAME_SIZE`, 16 KiB to 16 MiB − 1).
    /// Default: [`DEFAULT_H2_MAX_FRAME_SIZE`].
    pub max_frame_size: u32,
}

impl Default for H2Limits {
    fn default() -> Self {
        H2Limits {
            max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            keep_alive_interval: Some(DEFAULT_H2_KEEP_ALIVE_INTERVAL),
            keep_alive_timeout: DEFAULT_H2_KEEP_ALIVE_TIMEOUT,
            write_timeout: DEFAULT_H2_WRITE_TIMEOUT,
            max_frame_size: DEFAULT_H2_MAX_FRAME_SIZE,
        }
    }
}

/// Caps and deadlines for one PTTH connection, in either role.
///
/// Build with [`Limits::default`] and change fields as needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest head (start line plus fields) read from the peer, in bytes.
    /// A larger request head gets `431`; a larger response head is an error.
    /// Default: [`DEFAULT_MAX_HEAD_BYTES`].
    pub max_head_bytes: usize,
    /// Most header fields in one head. Default: [`DEFAULT_MAX_HEADERS`].
    pub max_headers: usize,
    /// Largest upgrade-request body the listener reads before it switches; larger gets `413`.
    /// Default: [`DEFAULT_MAX_UPGRADE_BODY`].
    pub max_upgrade_body: usize,
    /// Most bytes of a refusal's body the dialer keeps. Default: [`DEFAULT_MAX_REFUSAL_BODY`].
    pub max_refusal_body: usize,
    /// Deadline for the whole handshake, from the first byte written (dialer) or the accept
    /// (listener) to the flip. Default: [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// After the flip, on the dialer: deadline for a reversed request head, counted from its
    /// first byte. This is what stops a slow-loris peer. Default: [`DEFAULT_REVERSED_HEAD_TIMEOUT`].
    pub head_timeout: Duration,
    /// After the flip, on the dialer: how long a reversed connection may sit with no request
    /// started before the dialer closes it. `None` (the default) never closes an idle
    /// connection: a parked reversed connection is *supposed* to wait, and TCP keepalive is what
    /// finds dead peers.
    pub idle_timeout: Option<Duration>,
    /// After the flip, on a `ptth` connection running `h2`: the HTTP/2 settings.
    pub h2: H2Limits,
    /// Read buffer of each connection the forwarding engine runs, in bytes (allocated at the
    /// first read). Default: [`DEFAULT_BUFFER_BYTES`].
    pub buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_upgrade_body: DEFAULT_MAX_UPGRADE_BODY,
            max_refusal_body: DEFAULT_MAX_REFUSAL_BODY,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            head_timeout: DEFAULT_REVERSED_HEAD_TIMEOUT,
            idle_timeout: None,
            h2: H2Limits::default(),
            buffer_bytes: DEFAULT_BUFFER_BYTES,
        }
    }
}

/// hyper asserts a read buffer of at least 8 KiB.
const MIN_HYPER_BUF: usize = 8192;

/// hyper's own cap on header fields when none is set: 100, the same as
/// [`DEFAULT_MAX_HEADERS`].
const HYPER_MAX_HEADERS: usize = 100;

impl Limits {
    /// hyper's `max_buf_size` for these limits: the head cap, raised to hyper's minimum.
    pub(crate) fn hyper_buf_size(&self) -> usize {
        self.max_head_bytes.max(MIN_HYPER_BUF)
    }

    /// What to give hyper's `max_headers` for these limits: `None` when the cap is hyper's own
    /// (100), which hyper then enforces with its header array on the stack; setting it, even
    /// to 100, makes hyper allocate that array on the heap for every head (its documentation
    /// says about 5 % slower).
    pub(crate) fn hyper_max_headers(&self) -> Option<usize> {
        (self.max_headers != HYPER_MAX_HEADERS).then_some(self.max_headers)
    }

    /// The HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE` for these limits: the head cap.
    pub(crate) fn h2_header_list_size(&self) -> u32 {
        u32::try_from(self.max_head_bytes).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pinned() {
        let l = Limits::default();
        assert_eq!(l.max_head_bytes, 16384);
        assert_eq!(l.max_headers, 100);
        assert_eq!(l.max_upgrade_body, 65536);
        assert_eq!(l.max_refusal_body, 65536);
        assert_eq!(l.handshake_timeout, Duration::from_secs(10));
        assert_eq!(l.head_timeout, Duration::from_secs(10));
        assert_eq!(l.idle_timeout, None);
        // The default cap is hyper's own: hyper keeps its header array on the stack.
        assert_eq!(l.hyper_max_headers(), None);
        let ten = Limits {
            max_headers: 10,
            ..Limits::default()
        };
        assert_eq!(ten.hyper_max_headers(), Some(10));
        assert_eq!(l.h2.max_concurrent_streams, 128);
        assert_eq!(l.h2.keep_alive_interval, Some(Duration::from_secs(20)));
        assert_eq!(l.h2.keep_alive_timeout, Duration::from_secs(20));
        assert_eq!(l.h2.write_timeout, Duration::from_secs(20));
        assert_eq!(l.h2.max_frame_size, 65536);
        assert_eq!(l.buffer_bytes, 65536);
        assert_eq!(CONTINUE_WAIT, Duration::from_secs(1));
        assert_eq!(MAX_NO_CONTENT_ROUNDS, 100);
        assert_eq!(MAX_CHUNK_LINE, 1024);
        assert_eq!(MAX_TRAILER_BYTES, 8192);
        assert_eq!(HANDSHAKE_READ_CHUNK, 4096);
        assert_eq!(MAX_OFFER_ORIGINS, 64);
    }
}
