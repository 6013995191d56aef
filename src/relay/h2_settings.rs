//! What the agent's first SETTINGS frame says about RFC 8441 extended CONNECT.
//!
//! hyper's HTTP/2 client does not show the peer's settings, and sends an extended CONNECT
//! whether or not the peer allowed it. The relay needs to know before it chooses a connection
//! for a WebSocket (decisions D85), so the agent's stream is read through [`Sniff`], which
//! watches the first frame the agent sends. That frame is its SETTINGS (RFC 9113 §3.4: the
//! server's preface); `SETTINGS_ENABLE_CONNECT_PROTOCOL` (0x8) = 1 there means it accepts
//! extended CONNECT (RFC 8441 §3; a later SETTINGS may not take it back). Only that frame is
//! looked at; after it the reads pass through untouched.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441 §3).
const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
/// The SETTINGS frame type (RFC 9113 §6.5).
const SETTINGS: u8 = 0x4;
/// A frame header's length (RFC 9113 §4.1).
const HEADER: usize = 9;
/// The longest first frame looked at: a SETTINGS frame this long is not a sane preface.
const MAX_FIRST_FRAME: usize = 1024;

// The state before the first frame is judged is 0 (`Default`).
const OFF: u8 = 1;
const ON: u8 = 2;

/// Whether the agent allowed extended CONNECT, as far as its first frame has been read.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectProtocol(Arc<AtomicU8>);

impl ConnectProtocol {
    /// The agent's first SETTINGS frame has arrived with `SETTINGS_ENABLE_CONNECT_PROTOCOL` = 1.
    pub(crate) fn enabled(&self) -> bool {
        self.0.load(Ordering::Acquire) == ON
    }

    fn set(&self, on: bool) {
        self.0.store(if on { ON } else { OFF }, Ordering::Release);
    }
}

/// A stream whose first incoming frame is read for [`ConnectProtocol`]; otherwise the stream
/// itself.
pub(crate) struct Sniff<IO> {
    io: IO,
    /// The first frame's bytes so far; `None` once it has been judged.
    first: Option<Vec<u8>>,
    seen: ConnectProtocol,
}

impl<IO> Sniff<IO> {
    pub(crate) fn new(io: IO) -> (Sniff<IO>, ConnectProtocol) {
        let seen = ConnectProtocol::default();
        let sniff = Sniff {
            io,
            first: Some(Vec::with_capacity(HEADER + 6 * 8)),
            seen: seen.clone(),
        };
        (sniff, seen)
    }

    /// Take in bytes the agent sent, until the first frame is complete (at most
    /// [`MAX_FIRST_FRAME`] of them are kept).
    fn watch(&mut self, bytes: &[u8]) {
        let Some(first) = self.first.as_mut() else {
            return;
        };
        let room = (HEADER + MAX_FIRST_FRAME).saturating_sub(first.len());
        first.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let Some(h) = first.get(..HEADER) else {
            return;
        };
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        if h[3] != SETTINGS || len > MAX_FIRST_FRAME {
            self.seen.set(false);
            self.first = None;
            return;
        }
        let Some(payload) = first.get(HEADER..HEADER + len) else {
            return;
        };
        let on = payload
            .chunks_exact(6)
            .filter(|e| u16::from_be_bytes([e[0], e[1]]) == ENABLE_CONNECT_PROTOCOL)
            .any(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]) == 1);
        self.seen.set(on);
        self.first = None;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Sniff<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.first.is_some() && res.is_ready() {
            let new = buf.filled()[before..].to_vec();
            self.watch(&new);
        }
        res
    }
}

// Writes pass through untouched: only the agent's first frame is read.
crate::io::write_through!(Sniff, io);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let len = entries.len() * 6;
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            SETTINGS,
            0,
            0,
            0,
            0,
            0,
        ];
        for (id, v) in entries {
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f
    }

    fn judge(bytes: &[u8], split: usize) -> (bool, bool) {
        let (mut s, seen) = Sniff::new(());
        s.watch(&bytes[..split]);
        s.watch(&bytes[split..]);
        (s.first.is_none(), seen.enabled())
    }

    #[test]
    fn the_first_settings_frame_decides_in_any_split() {
        let on = settings(&[(0x3, 128), (ENABLE_CONNECT_PROTOCOL, 1)]);
        let off = settings(&[(0x3, 128)]);
        let mut tail = on.clone();
        tail.extend_from_slice(&settings(&[]));
        for split in 0..=on.len() {
            assert_eq!(judge(&on, split), (true, true), "split {split}");
            assert_eq!(judge(&tail, split), (true, true), "split {split}");
        }
        for split in 0..=off.len() {
            assert_eq!(judge(&off, split), (true, false), "split {split}");
        }
        assert_eq!(judge(&settings(&[]), 4), (true, false));
        // Not SETTINGS first: never enabled.
        let mut ping = vec![0, 0, 8, 0x6, 0, 0, 0, 0, 0];
        ping.extend_from_slice(&[0; 8]);
        assert_eq!(judge(&ping, 3), (true, false));
        // Incomplete: not decided yet.
        assert_eq!(judge(&on[..on.len() - 1], 5), (false, false));
    }
}
