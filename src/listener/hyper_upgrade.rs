//! The listener from inside a hyper (or axum) server.
//!
//! In a handler: call [`offer`] with the request. On success, return
//! [`Offer::switching_response`] from the handler and spawn [`Offer::reverse`], which waits for
//! hyper to hand over the stream and starts the reversed client on it. On failure, return
//! [`Rejection::into_response`]. The `101` and the refusals carry the fields the raw listener
//! writes (`proto::response`'s `switching_fields` and `refusal_fields`).
//!
//! The server must be built with `.with_upgrades()`. Strict dialers compare header *names* in
//! the `101` too, so set `title_case_headers(true)` on the server builder: hyper then writes
//! `Upgrade:` and `Connection:` exactly as `PTTH` clients expect. hyper also appends a
//! `Date:` field to the `101` (tested in `tests/flip.rs`: `HTTP/1.1 101 Switching
//! Protocols`, `Upgrade: <token>`, `Connection: Upgrade`, `Date: ...`); turn it off with
//! `auto_date_header(false)` if a peer needs the bare three lines. hyper reads the whole
//! request head itself, frames the body, and answers `Expect: 100-continue` when the body is
//! first read (before the `101`).
//!
//! One difference from [`super::raw`]: hyper removes a `Content-Length` that came with
//! `Transfer-Encoding` before the handler sees the request, so a smuggling attempt looks like a
//! plain chunked request here. An offer with `Transfer-Encoding` is therefore refused (`400`,
//! `Connection: close`): dialers send `Content-Length` (this crate's, AirPlay, Yaler, npm
//! reverse-http), and a chunked offer is welcome at the raw listener (decisions D23).

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode, request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use super::h2::{ReversedH2Client, reverse_h2};
use super::{ListenerConfig, Offer, ReversedClient, ReversedConnection, reverse};
use crate::error::{Error, HeadError, OfferError};
use crate::proto::body::Framing;
use crate::proto::request::{self as req, OfferTerms};
use crate::proto::{Protocol, response};
use crate::service::SendBody;

/// Why a request was not taken as an upgrade, as a response ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The status to answer with.
    pub status: StatusCode,
    /// A one-line reason for the body.
    pub reason: String,
    /// The protocols a `426` names in `Upgrade`: the listener's accepted set.
    pub accepted: Vec<Protocol>,
    /// Whether the response says `Connection: close`, so that hyper closes the connection
    /// after it ([`OfferError::must_close`]).
    pub close: bool,
}

impl Rejection {
    /// A plain-text response with the refusal fields of the raw listener: a `426` carries the
    /// `Upgrade` RFC 9110 §15.5.22 requires (and `upgrade` in `Connection`), `close` adds
    /// `Connection: close`.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut res = Response::new(Full::new(response::refusal_body(&self.reason)));
        *res.status_mut() = self.status;
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, response::REFUSAL_CONTENT_TYPE);
        for (name, value) in response::refusal_fields(self.status, &self.accepted, self.close) {
            h.insert(name, value);
        }
        res
    }
}

impl Rejection {
    fn new(status: StatusCode, reason: impl Into<String>, config: &ListenerConfig) -> Self {
        Rejection {
            status,
            reason: reason.into(),
            accepted: config.rules.protocols.clone(),
            close: false,
        }
    }

    fn offer(e: &OfferError, config: &ListenerConfig) -> Self {
        Rejection {
            close: e.must_close(),
            ..Rejection::new(e.status(), e.to_string(), config)
        }
    }
}

/// Whether a request carries a PTTH offer at all (an `Upgrade` member naming a protocol we know:
/// `PTTH/0.9`, `PTTH/1.0` or the IETF `ptth`), so a server can tell "agent" from "ordinary
/// request" before judging it (whether this listener accepts that protocol is [`check`]'s).
pub fn is_ptth_upgrade<B>(req: &Request<B>) -> bool {
    crate::proto::tokens::offered_protocol(req.headers(), &Protocol::KNOWN).is_some()
}

/// Judge `req` as a PTTH offer, without reading its body: the first thing [`offer`] does. A
/// server with more to check before it reads the body (credentials, limits) calls this first,
/// so that a malformed offer is refused before that work.
pub fn check<B>(req: &Request<B>, config: &ListenerConfig) -> Result<OfferTerms, Rejection> {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = req.method().clone();
    head.uri = req.uri().clone();
    head.version = req.version();
    head.headers = req.headers().clone();
    check_head(&head, config)
}

fn check_head(head: &request::Parts, config: &ListenerConfig) -> Result<OfferTerms, Rejection> {
    let terms = req::check_offer(head, &config.rules).map_err(|e| Rejection::offer(&e, config))?;
    if terms.framing == Framing::Chunked {
        // hyper has removed any Content-Length beside it: the request may be a smuggling
        // attempt that this handler cannot tell from a plain chunked one.
        let e = OfferError::Framing(HeadError::Invalid(
            "Transfer-Encoding on an upgrade request read by hyper (send Content-Length)",
        ));
        return Err(Rejection::offer(&e, config));
    }
    Ok(terms)
}

/// Judge `req` as a PTTH offer ([`check`]) and read its whole body (capped), as RFC 9110 §7.8
/// requires before a switch.
pub async fn offer<B>(
    mut req: Request<B>,
    config: &ListenerConfig,
) -> Result<Offer<OnUpgrade>, Rejection>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (head, body) = req.into_parts();
    let terms = check_head(&head, config)?;
    let limit = config.limits.max_upgrade_body;
    let collect = Limited::new(body, limit).collect();
    let body = match tokio::time::timeout(config.limits.handshake_timeout, collect).await {
        Err(_) => {
            return Err(Rejection::new(
                StatusCode::REQUEST_TIMEOUT,
                "upgrade request body not received in time",
                config,
            ));
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("upgrade request body larger than {limit} bytes"),
                config,
            ));
        }
        Ok(Err(e)) => {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                format!("reading the upgrade request body: {e}"),
                config,
            ));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    Ok(Offer {
        head,
        body,
        terms,
        stream: on_upgrade,
    })
}

/// An offer inside a hyper server: the stream comes once hyper has written the `101`.
impl Offer<OnUpgrade> {
    /// The `101 Switching Protocols` to return from the handler, echoing the dialer's token.
    pub fn switching_response<B: Default>(&self) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for (name, value) in response::switching_fields(&self.terms.token, self.terms.alpn.as_ref())
        {
            res.headers_mut().insert(name, value);
        }
        res
    }

    /// Wait for hyper to switch the stream (after it wrote the `101`) and return it raw, for
    /// callers that run their own client on it (a relay parks it and starts a client per
    /// exchange). Bytes hyper read past the request are kept in the returned stream.
    pub async fn upgraded(self) -> Result<Upgraded, Error> {
        self.stream
            .await
            .map_err(Error::hyper("waiting for the switch"))
    }

    /// Wait for hyper to switch the stream (after it wrote the `101`), then start the
    /// reversed HTTP/1.1 client on it. For a `ptth` offer that chose `h2` this is
    /// [`Error::InnerProtocol`]: use [`Offer::reverse_h2`].
    pub async fn reverse<B>(
        self,
        config: &ListenerConfig,
    ) -> Result<(ReversedClient<B>, ReversedConnection), Error>
    where
        B: SendBody,
    {
        self.expect_inner(false)?;
        let upgraded = self.upgraded().await?;
        reverse(TokioIo::new(upgraded), config).await
    }

    /// Wait for hyper to switch the stream, then start the reversed HTTP/2 client on it (a
    /// `ptth` offer that chose `h2`; any other is [`Error::InnerProtocol`]).
    pub async fn reverse_h2<B>(
        self,
        config: &ListenerConfig,
    ) -> Result<(ReversedH2Client<B>, ReversedConnection), Error>
    where
        B: SendBody + Unpin,
    {
        self.expect_inner(true)?;
        let upgraded = self.upgraded().await?;
        reverse_h2(TokioIo::new(upgraded), config).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONNECTION, UPGRADE};

    #[test]
    fn every_known_protocol_is_a_ptth_upgrade() {
        let offer = |upgrade: &str| {
            Request::get("/q")
                .header("upgrade", upgrade)
                .header("connection", "upgrade")
                .body(())
                .unwrap()
        };
        for p in ["PTTH/0.9", "PTTH/1.0", "ptth", "websocket, ptth"] {
            assert!(is_ptth_upgrade(&offer(p)), "{p}");
        }
        assert!(!is_ptth_upgrade(&offer("websocket")));
    }

    #[tokio::test]
    async fn a_426_names_only_the_accepted_protocols() {
        let mut config = ListenerConfig::default();
        config.rules.protocols = vec![Protocol::Ptth10];
        let req = Request::post("/q")
            .header("host", "r")
            .header("upgrade", "PTTH/0.9")
            .header("connection", "upgrade")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let Err(rej) = offer(req, &config).await else {
            panic!("a PTTH/0.9 offer was accepted by a PTTH/1.0-only listener");
        };
        let res = rej.into_response();
        assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(res.headers()[UPGRADE], "PTTH/1.0");
        assert_eq!(res.headers()[CONNECTION], "Upgrade");
    }

    #[test]
    fn refusals_carry_the_raw_listeners_fields() {
        // The raw listener's bytes for the same refusal: its fields are the reference.
        let field = |raw: &[u8], name: &str| -> Option<String> {
            let text = String::from_utf8_lossy(raw).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
        };
        for status in [StatusCode::UPGRADE_REQUIRED, StatusCode::FORBIDDEN] {
            let accepted = vec![Protocol::Ptth09, Protocol::Ptth10];
            let raw = response::encode_refusal(status, &accepted, &Default::default(), b"no\n");
            let res = Rejection {
                status,
                reason: "no".into(),
                accepted,
                close: true,
            }
            .into_response();
            for name in ["Upgrade", "Connection", "Content-Type"] {
                let hyper = res
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_string());
                assert_eq!(hyper, field(&raw, name), "{status} {name}");
            }
        }
    }
}
