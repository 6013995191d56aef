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
use crate::proto::forwarded::{self, Hop};
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
    /// How long the request waited for its agent connection, when the agent asked to be told
    /// (`PTTH-Queue-Wait`, decision D66).
    pub(super) queue_wait: Option<std::time::Duration>,
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
            // Only this relay writes it (D66): a client's own is not passed on.
            || name.eq_ignore_ascii_case(forwarded::QUEUE_WAIT_FIELD)
            // The fleet's hop marker is between relays (D94).
            || name.eq_ignore_ascii_case(super::fleet::HOP_FIELD)
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
        if let Some(waited) = self.queue_wait {
            out.put_slice(forwarded::QUEUE_WAIT_FIELD.as_bytes());
            out.put_slice(b": ");
            crate::proto::put_decimal(out, waited.as_micros() as u64);
            out.put_slice(b"\r\n");
        }
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

/// An [`AgentRoute`] whose next hop is the pipe to an HTTP/2 stream ([`super::over_h2`]): the
/// same request rewriting; no second connection to try (the pipe is never found closed before
/// the request, and a failed stream is not retried: it may have reached the agent).
pub(super) struct OverH2<'r, 'a>(pub(super) &'r AgentRoute<'a>);

impl Route for OverH2<'_, '_> {
    type Io = tokio::io::DuplexStream;

    fn target(&self, target: &str, out: &mut BytesMut) -> Result<(), String> {
        self.0.target(target, out)
    }

    fn drops(&self, name: &str) -> bool {
        self.0.drops(name)
    }

    fn add_fields(&self, req: &head::Request<'_, '_>, out: &mut BytesMut) {
        self.0.add_fields(req, out)
    }

    async fn connect(&self) -> Result<tokio::io::DuplexStream, BoxError> {
        Err("the pipe to the agent's HTTP/2 stream closed".into())
    }

    fn failed(&self, why: &dyn std::fmt::Display) -> String {
        self.0.failed(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::proto::head::Slots;
    use crate::relay::Config;

    /// The fields the route sends for `raw`: the client's it keeps, then its own.
    fn fields(raw: &str, absolute: bool, http10: bool) -> String {
        let registry = Registry::new(
            std::sync::Arc::new(Config::default()),
            std::sync::Arc::new(crate::relay::metrics::Metrics::new(None)),
        );
        let route = AgentRoute {
            registry: &registry,
            name: "demo",
            path: "/x?q",
            queue_deadline: Instant::now(),
            hop: Hop {
                client: "192.0.2.7".parse().unwrap(),
                proto: "https",
                host: Some("demo.localhost"),
                prefix: None,
                trust: false,
            },
            absolute,
            http10,
            queue_wait: None,
        };
        let mut slots = Slots::new();
        let req = head::Request::parse(raw.as_bytes(), &mut slots, &Limits::default())
            .unwrap()
            .unwrap();
        let mut out = BytesMut::new();
        route.target(req.target, &mut out).unwrap();
        out.put_slice(b"\r\n");
        for (name, value) in req.fields.iter() {
            if !route.drops(name) {
                out.put_slice(name.as_bytes());
                out.put_slice(b": ");
                out.put_slice(value);
                out.put_slice(b"\r\n");
            }
        }
        route.add_fields(&req, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    /// The head the relay sends on: the routed target, the routed authority as `Host` for an
    /// absolute-form request, no expectation from HTTP/1.0, this hop's forwarding fields.
    #[test]
    fn request_heads_are_rewritten_for_the_agent() {
        let got = fields(
            "GET http://demo.localhost/x?q HTTP/1.0\r\nHost: ignored\r\nExpect: 100-continue\r\n\
             Forwarded: for=6.6.6.6\r\n\r\n",
            true,
            true,
        );
        assert!(got.starts_with("/x?q\r\n"), "{got}");
        assert!(got.contains("\nhost: demo.localhost\r\n"), "{got}");
        assert!(!got.contains("ignored") && !got.contains("Expect"), "{got}");
        assert!(
            got.contains("forwarded: for=192.0.2.7;proto=https;host=\"demo.localhost\"\r\n"),
            "{got}"
        );
        assert!(!got.contains("6.6.6.6"), "{got}");

        // Origin form: the client's own Host stays; HTTP/1.1 keeps its expectation.
        let got = fields(
            "GET /x HTTP/1.1\r\nHost: demo.localhost:8080\r\nExpect: 100-continue\r\n\r\n",
            false,
            false,
        );
        assert!(got.contains("Host: demo.localhost:8080\r\n"), "{got}");
        assert!(got.contains("Expect: 100-continue\r\n"), "{got}");
        let hosts = got
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
            .count();
        assert_eq!(hosts, 1, "{got}");
    }
}
