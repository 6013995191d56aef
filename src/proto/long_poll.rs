//! The long-poll transport's vocabulary (spec-notes/long-poll.md), shared by the relay and the
//! agent: the field that marks a long-poll request and says which kind it is, and the field
//! that names an exchange.

/// The field that marks a long-poll request (`PTTH-Long-Poll: poll` or `reply`), or an offer
/// that may lose its `Upgrade` on the way (`offer`).
pub(crate) const FIELD: &str = "ptth-long-poll";
/// A poll: claim one virtual connection and wait for a request on it.
pub(crate) const POLL: &[u8] = b"poll";
/// A reply: the response to the exchange that [`EXCHANGE_FIELD`] names.
pub(crate) const REPLY: &[u8] = b"reply";
/// An upgrade offer from an agent that would fall back: a relay that gets it without its
/// `Upgrade` (an intermediary removed it) answers `426` instead of taking it for a public
/// request.
pub(crate) const OFFER: &[u8] = b"offer";
/// The exchange an answered poll started, and the one a reply answers.
pub(crate) const EXCHANGE_FIELD: &str = "ptth-exchange";
/// The media type of an answered poll's body and of a reply's body: HTTP/1.1 message bytes
/// (RFC 9112 §10.1).
pub(crate) const MEDIA_TYPE: &str = "message/http";
/// On a reply: more parts of the same response follow (`?1`, RFC 8941 boolean). A browser
/// cannot stream a request body over HTTP/1.1, so its agent sends a streamed response as parts.
pub(crate) const MORE_FIELD: &str = "ptth-more";
/// Where the relay serves the browser agent's script.
pub(crate) const AGENT_JS_PATH: &str = "/.ptth/agent.js";
