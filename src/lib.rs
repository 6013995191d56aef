//! Reverse HTTP (PTTH): let a host that cannot accept connections serve HTTP anyway.
//!
//! A host behind NAT or a firewall (the **dialer**) opens a connection to a public host (the
//! **listener**) and sends an HTTP/1.1 request with `Upgrade: PTTH/0.9` (or `PTTH/1.0`) and
//! `Connection: Upgrade`. The listener answers `101 Switching Protocols`, and from the next byte
//! on the roles are swapped: the listener sends HTTP requests and the dialer answers them
//! (draft-lentczner-rhttp-00).
//!
//! ```text
//!  dialer (behind NAT)                          listener (public)
//!  ───────────────────                          ─────────────────
//!  dial ──── POST /name  Upgrade: PTTH/0.9 ───▶ raw::read_offer / hyper_upgrade::offer
//!       ◀─── HTTP/1.1 101 Switching Protocols ── accept
//!  ═══════════════════ flip: same stream, roles reversed ═══════════════════
//!  Flipped::serve(service)  ◀──── GET /status ── ReversedClient::send
//!                           ───── 200 OK ──────▶
//! ```
//!
//! # Layout
//! - [`proto`]: the sans-IO wire vocabulary (heads, tokens, bodies); fuzzed.
//! - [`dialer`]: [`dialer::handshake()`] then [`dialer::Flipped::serve`], timed by a head
//!   clock (the head deadline starts at a head's first byte: idle ≠ slow).
//! - [`listener`]: [`listener::raw`] or [`listener::hyper_upgrade`], then
//!   [`listener::ReversedClient`].
//! - [`tls`]: rustls configs from PEM files, connect/accept, readable certificate errors.
//! - [`relay`]: `ptth-serve`, the public relay built on the listener role.
//! - [`agent`]: `ptth-connect`, the agent built on the dialer role, as an embeddable [`agent::Agent`].
//! - `expect` (private): `Expect: 100-continue` passed hop by hop through the relay and the
//!   agent, so that a refusal costs no upload.
//! - [`service`]: the bounds on the services served and the bodies carried, named once.
//! - `shutdown`, `net`, `io` (private): the drain timeout both roles stop within (re-exported
//!   by each role's config), `TCP_NODELAY` and keepalive for every proxied socket, and the
//!   handshake IO ([`ByteStream`] is the one stream trait).
//! - [`Limits`]: every size cap and deadline, with documented defaults.
//! - [`Error`]: typed errors, with peer faults split by kind.
//! - `admin` (private): the admin listener (`/metrics`) both roles serve with `--admin`.
//!
//! # Cancel safety
//! Dropping a handshake future mid-way leaves the stream in an unknown state: close it. Dropping
//! a [`dialer::Serving`] or [`listener::ReversedConnection`] closes the reversed connection.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod admin;
pub mod agent;
pub mod dialer;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod h1;
mod io;
pub mod limits;
pub mod listener;
pub(crate) mod metrics;
mod net;
pub mod proto;
pub mod relay;
pub mod service;
mod shutdown;
pub mod tls;

/// The `http` crate whose types (`Request`, `Response`, `HeaderValue`, ...) the API takes and
/// returns, so that a program needs no version of its own to match.
pub use http;

/// The README's Rust snippets, compiled as doc tests (they use [`http`] through the re-export).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeSnippets;

pub use error::{BodyError, Error, HeadError, HostError, OfferError, Refusal, SwitchError};
pub use io::ByteStream;
pub use limits::{H2Limits, Limits};
pub use proto::Protocol;
pub use proto::alpn::AlpnId;
pub use proto::origin::Origin;
pub use proto::request::UpgradeRequest;
