//! A lean HTTP/1.1 forwarding engine: one request at a time from an inbound connection to an
//! outbound one, and the response back, with no `HeaderMap` and no allocation per request.
//!
//! ```text
//! conn.rs      Conn: a byte stream, its read buffer (heads scanned in place) and write buffer
//! pump.rs      Pump: one body copied by its framing (length, chunked, until close)
//! exchange.rs  exchange(): head rewrite, both bodies at once, 1xx, Expect, 101 -> tunnel
//! tap.rs       Tap: an optional observer of each exchange (heads, the start of each body, timing)
//! ```
//!
//! The engine serves either direction of a PTTH hop (public client -> agent at the relay,
//! relay -> upstream at the agent): what differs is a [`Route`] (target, added and dropped
//! fields, how to reach the next hop). It exists because a hyper server plus a hyper client
//! per hop cost about twice the CPU per request of a plain head scan and copy (issue 13);
//! hyper still serves the library's own services (`Flipped::serve`), admin and h2.

mod conn;
mod exchange;
mod pump;
pub(crate) mod tap;

pub(crate) use conn::Conn;
#[cfg(test)]
pub(crate) use exchange::ErrorChain;
pub(crate) use exchange::{After, BoxError, Record, Route, Settings, exchange, reply, tunnel};
