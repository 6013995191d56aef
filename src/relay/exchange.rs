//! What the forwarding engine ([`crate::h1`]) does at the relay: the [`Route`] of one public
//! request toward its agent.
//!
//! The target is the routed path (path mode has removed `/NAME`); `Forwarded` and
//! `X-Forwarded-*` are this hop's ([`Hop`], the trust setting); an absolute-form request gets
//! the authority it was routed by as `Host` (RFC 9112 §3.2.2), so the agent sees what the relay
//! saw; an expectation in an HTTP/1.0 request is dropped (RFC 9110 §10.1.1: it is ignored, and
//! the body is on its way without a `100`). The next hop is a parked connection of the name: the
//! first is checked out before the exchange; [`Route::connect`] is the one more checkout when
//! that one is found closed before anything of the request was written.

use bytes::{BufMut, BytesMut};
use tokio::time::Instant;

use super::registry::{AgentConn, Registry};
use crate::h1::{BoxError, Route};
use crate::proto::forwarded::Hop;
use crate::proto::head;

/// One public request's way to its agent (see the module docs).
pub(super) struct AgentRoute<'a> {
    pub(super) registry: &'a std::sync::Arc<Registry>,
    pub(super) name: &'a str,
    /// The path and query sent to the agent.
    pub(super) path: &'a str,
    /// The end of the wait for an idle connection.
    pub(super) queue_deadline: Instant,
    pub(super) hop: Hop<'a>,
    /// The target was in absolute form.
    pub(super) absolute: bool,
    pub(super) http10: bool,
}

impl Route for AgentRoute<'_> {
    type Io = AgentConn;

    fn target(&self, _target: &str, out: &mut BytesMut) -> Result<(), String> {
        out.put_slice(self.path.as_bytes());
        Ok(())
    }

    fn drops(&self, name: &str) -> bool {
        self.hop.drops(name)
            || (self.absolute && name.eq_ignore_ascii_case("host"))
            || (self.http10 && name.eq_ignore_ascii_case("expect"))
    }

    fn add_fields(&self, req: &head::Request<'_, '_>, out: &mut BytesMut) {
        if self.absolute
            && let Some(h) = self.hop.host
        {
            out.put_slice(b"host: ");
            out.put_slice(h.as_bytes());
            out.put_slice(b"\r\n");
        }
        self.hop.write(req.fields, out);
    }

    async fn connect(&self) -> Result<AgentConn, BoxError> {
        Ok(self
            .registry
            .checkout(self.name, self.queue_deadline)
            .await?)
    }

    fn failed(&self, why: &dyn std::fmt::Display) -> String {
        tracing::debug!(name = %self.name, error = %why, "forwarding to the agent failed");
        format!("the agent went away: {why}\n")
    }
}
