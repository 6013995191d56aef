//! An agent claiming a name: the one place that decides whether a PTTH offer gets its `101`.
//!
//! ```text
//! offer judged (framing, Host) -> name (route::claim) -> token (auth) -> certificate
//!   -> reserve (registry counts, the name's owner) -> body read -> 101 -> parked
//! ```
//!
//! Each refusal is a [`ClaimError`] (or the listener role's [`Rejection`] for a malformed
//! offer) and is answered with its `status()`. The order is the cheap and public checks first:
//! a malformed offer gets its `400` before credentials are looked at, and nothing is counted
//! before the credentials pass.

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tracing::Instrument;

use super::auth::{self, AuthError, Secret, Tokens};
use super::fleet::Claimed;
use super::metrics::Refusal;
use super::registry::{AgentConn, AgentStream, ReserveError};
use super::respond::{self, RelayBody};
use super::route::{self, RouteError};
use super::{AgentCerts, Config, ConnInfo, Shared};
use crate::io::Rewind;
use crate::listener::hyper_upgrade::{self, Rejection};
use crate::proto::{forwarded, request};

/// Why an agent's claim was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ClaimError {
    /// The claimed name is not a valid agent name (`400`).
    #[error(transparent)]
    Name(#[from] RouteError),
    /// No token, a wrong one (`401`), or one for another name (`403`).
    #[error(transparent)]
    Token(#[from] AuthError),
    /// The TLS client certificate does not satisfy [`Config::agent_certs`] (`401`).
    #[error("{0}")]
    Certificate(String),
    /// The relay, this address or this name holds its maximum, or another token holds the
    /// name (`503`, `429`, `409`).
    #[error(transparent)]
    Reserve(#[from] ReserveError),
}

impl ClaimError {
    /// The status the claim is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ClaimError::Name(_) => StatusCode::BAD_REQUEST,
            ClaimError::Token(AuthError::Invalid) | ClaimError::Certificate(_) => {
                StatusCode::UNAUTHORIZED
            }
            // RFC 9110 §15.5.4: the credentials are understood, and not enough.
            ClaimError::Token(AuthError::WrongName(_)) => StatusCode::FORBIDDEN,
            ClaimError::Reserve(e) => e.status(),
        }
    }

    /// The refusal as a metrics label.
    fn reason(&self) -> Refusal {
        match self {
            ClaimError::Name(_) => Refusal::BadName,
            ClaimError::Token(AuthError::Invalid) => Refusal::Token,
            ClaimError::Token(AuthError::WrongName(_)) => Refusal::WrongName,
            ClaimError::Certificate(_) => Refusal::Certificate,
            ClaimError::Reserve(ReserveError::Taken) => Refusal::Conflict,
            ClaimError::Reserve(_) => Refusal::Limit,
        }
    }

    /// The refusal as the relay's response: a missing or wrong token is asked for again with
    /// `WWW-Authenticate: Bearer`.
    pub(crate) fn into_response(self) -> Response<RelayBody> {
        let mut res = respond::refusal(self.status(), &self);
        if matches!(self, ClaimError::Token(AuthError::Invalid)) {
            res.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// An agent's upgrade request: judged, authorised and counted, then switched; the switched
/// stream is parked in the registry by a task of its own.
pub(crate) async fn claim<S: AgentStream>(
    shared: Arc<Shared>,
    info: &ConnInfo,
    req: Request<Incoming>,
) -> Response<RelayBody> {
    let listener = &shared.config.listener;
    // Framing and Host first: a malformed offer gets its 400 before credentials are looked at.
    if let Err(rej) = hyper_upgrade::check(&req, listener) {
        return rejection(rej);
    }
    let (name, reservation) = match admit_counted(&shared, info, &req).await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let offer = match hyper_upgrade::offer(req, listener).await {
        Ok(o) => o,
        Err(rej) => return rejection(rej),
    };
    let res = offer.switching_response::<RelayBody>();
    let span = tracing::info_span!("agent", %name, peer = %info.peer);
    let registry = shared.registry.clone();
    let (metrics, peer, proto) = (shared.metrics.clone(), info.peer, info.proto());
    tokio::spawn(
        async move {
            let upgraded = match offer.upgraded().await {
                Ok(u) => u,
                Err(e) => return tracing::debug!(%e, "switch failed"),
            };
            match agent_stream::<S>(upgraded) {
                Ok(io) => {
                    metrics.claimed();
                    if reservation.first() {
                        tracing::info!(%name, %peer, proto, "agent claimed the name");
                    } else {
                        tracing::debug!("another connection parked");
                    }
                    registry.park(AgentConn { io, reservation });
                }
                Err(why) => tracing::info!("agent connection dropped: {why}"),
            }
        }
        .instrument(span),
    );
    res
}

/// [`admit`], then the fleet's claim, with a refusal counted: the claim's checks, for the
/// upgrade and for a long poll (`super::long_poll`) alike.
pub(crate) async fn admit_counted(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    req: &Request<Incoming>,
) -> Result<(String, super::registry::Reservation), ClaimError> {
    let (name, reservation, fingerprint) =
        admit(shared, info, req).inspect_err(|e| shared.metrics.refused(e.reason()))?;
    // The fleet's claim: only for the name's first connection here (the refresh keeps the
    // record of a name this relay holds already).
    if let Some(fleet) = &shared.fleet
        && reservation.first()
        && let Claimed::Taken(holder) = fleet.claim(&name, &fingerprint).await
    {
        reservation.cancel();
        tracing::info!(peer = %info.peer, %name, %holder, "agent refused: another token holds the name on another relay of the fleet");
        let e = ClaimError::Reserve(ReserveError::Taken);
        shared.metrics.refused(e.reason());
        return Err(e);
    }
    Ok((name, reservation))
}

/// The name a long-poll reply is for, once its token passes (a reply takes no place in the
/// counts: its poll did).
pub(crate) fn authorize(
    shared: &Arc<Shared>,
    req: &Request<Incoming>,
) -> Result<String, ClaimError> {
    let host = request::authority(req.version(), req.uri(), req.headers())
        .ok()
        .flatten();
    let name = route::claim(host, req.uri().path(), &shared.config.domain)?;
    token(shared.tokens().as_deref(), req, &name)?;
    Ok(name)
}

/// The name the offer claims, and its place in the counts once its token and certificate
/// pass, with the fingerprint of its token (empty for an anonymous agent).
fn admit(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    req: &Request<Incoming>,
) -> Result<(String, super::registry::Reservation, String), ClaimError> {
    let cfg = &shared.config;
    let host = request::authority(req.version(), req.uri(), req.headers())
        .ok()
        .flatten();
    let name = route::claim(host, req.uri().path(), &cfg.domain)?;
    let credentials = token(shared.tokens().as_deref(), req, &name)
        .map_err(ClaimError::from)
        .and_then(|owner| match certificate_refusal(cfg, info, &name) {
            Some(why) => Err(ClaimError::Certificate(why)),
            None => Ok(owner),
        });
    let owner = credentials.inspect_err(|e| {
        tracing::info!(peer = %info.peer, %name, "agent refused: {e}");
    })?;
    let fingerprint = owner.as_ref().map(Secret::fingerprint).unwrap_or_default();
    let mut reservation = shared
        .registry
        .reserve(&name, owner, info.peer, info.proto())?;
    reservation.queue_wait = req
        .headers()
        .get_all(forwarded::TIMING_FIELD)
        .iter()
        .any(|v| {
            v.as_bytes()
                .eq_ignore_ascii_case(forwarded::TIMING_QUEUE_WAIT.as_bytes())
        });
    Ok((name, reservation, fingerprint))
}

/// The token that holds `name` for this claim: `None` on a relay without a token file.
/// `tokens` are the ones in force now (a reload may have replaced the configured ones).
fn token(
    tokens: Option<&Tokens>,
    req: &Request<Incoming>,
    name: &str,
) -> Result<Option<Secret>, AuthError> {
    let Some(tokens) = tokens else {
        return Ok(None);
    };
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| auth::bearer(v.as_bytes()));
    presented
        .map_or(Err(AuthError::Invalid), |t| tokens.authorize(name, t))
        .map(Some)
}

/// A refused offer, as the relay's response.
fn rejection(rej: Rejection) -> Response<RelayBody> {
    let (parts, body) = rej.into_response().into_parts();
    Response::from_parts(parts, body.map_err(|never| match never {}).boxed_unsync())
}

/// The switched stream without hyper's wrapper (or the engine's replay of what it read first),
/// so that a parked connection holds no buffer. Bytes the agent sent before the relay's first
/// request are a protocol error (draft §2.1: after the `101` the relay speaks first).
fn agent_stream<S: AgentStream>(upgraded: Upgraded) -> Result<Box<dyn AgentStream>, &'static str> {
    const EARLY: &str = "it sent bytes before the relay's first request";
    match upgraded.downcast::<TokioIo<Rewind<S>>>() {
        Ok(parts) if parts.read_buf.is_empty() => {
            let (unread, io) = parts.io.into_inner().into_parts();
            if unread.is_empty() {
                Ok(Box::new(io))
            } else {
                Err(EARLY)
            }
        }
        Ok(_) => Err(EARLY),
        Err(upgraded) => Ok(Box::new(TokioIo::new(upgraded))),
    }
}

/// Why the agent's TLS client certificate does not satisfy [`Config::agent_certs`], if so.
fn certificate_refusal(cfg: &Config, info: &ConnInfo, name: &str) -> Option<String> {
    match (cfg.agent_certs, &info.client_cert) {
        (AgentCerts::Off, _) => None,
        (_, None) => Some("a TLS client certificate from the relay's client CA is required".into()),
        (AgentCerts::Required, Some(_)) => None,
        (AgentCerts::MatchName, Some(cert)) => {
            let fqdn = format!("{name}.{}", cfg.domain);
            (!crate::tls::certificate_matches_name(cert, &fqdn))
                .then(|| format!("the client certificate is not valid for {fqdn}"))
        }
    }
}
