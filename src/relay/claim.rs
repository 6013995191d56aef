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
//!
//! A `ptth` offer (draft-kazuho-ptth-ptth) to `/.well-known/ptth/{origins}/` claims one name
//! per origin: `http(s)://NAME.<domain>[:port]` is `NAME`, as in host mode (decisions D82).
//! Every name is checked as a claim of its own (token, certificate, counts), and one refusal
//! refuses the offer. When the `101` chose `ALPN: h2`, the relay starts its HTTP/2 client on
//! the stream and adds the connection to every claimed name ([`Registry::add_h2`]); a task in
//! the relay's tracker drives it until the agent leaves or the drain ends it with GOAWAY.
//! With `http/1.1` the connection is parked as a 2009 one, and claims one name only.
//!
//! [`Registry::add_h2`]: super::registry::Registry::add_h2

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::auth::{self, AuthError, Secret, Tokens};
use super::fleet::Claimed;
use super::h2_settings::Sniff;
use super::metrics::Refusal;
use super::registry::{AgentConn, AgentStream, H2Client, Registry, Reservation, ReserveError};
use super::respond::{self, RelayBody};
use super::route::{self, RouteError};
use super::{AgentCerts, Config, ConnInfo, Shared};
use crate::io::Rewind;
use crate::listener::hyper_upgrade::{self, Rejection};
use crate::proto::origin::Origin;
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
    /// A `ptth` origin that is not `http(s)://NAME.<domain>`: the relay cannot serve it, so
    /// the agent is not authorised to register it (`403`).
    #[error("the origin {origin} is not served by this relay: register http://NAME.{domain}")]
    Origin {
        /// The origin as offered.
        origin: String,
        /// The relay's domain.
        domain: String,
    },
    /// Several origins on a connection that runs HTTP/1.1, which serves one name (`400`).
    #[error("{0} origins over http/1.1: one connection serves one name unless it runs h2")]
    OriginsOverH1(usize),
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
            ClaimError::Token(AuthError::WrongName(_)) | ClaimError::Origin { .. } => {
                StatusCode::FORBIDDEN
            }
            ClaimError::Reserve(e) => e.status(),
            ClaimError::OriginsOverH1(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The refusal as a metrics label.
    fn reason(&self) -> Refusal {
        match self {
            ClaimError::Name(_) | ClaimError::Origin { .. } | ClaimError::OriginsOverH1(_) => {
                Refusal::BadName
            }
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
/// `soft` is the relay's drain: an HTTP/2 connection is ended with GOAWAY when it fires.
pub(crate) async fn claim<S: AgentStream>(
    shared: Arc<Shared>,
    info: &ConnInfo,
    req: Request<Incoming>,
    soft: CancellationToken,
) -> Response<RelayBody> {
    let listener = &shared.config.listener;
    // Framing and Host first: a malformed offer gets its 400 before credentials are looked at.
    let terms = match hyper_upgrade::check(&req, listener) {
        Ok(t) => t,
        Err(rej) => return rejection(rej),
    };
    let h2 = terms
        .alpn
        .as_ref()
        .is_some_and(|a| a.as_bytes() == crate::AlpnId::H2);
    let admitted = admit_counted(&shared, info, &req, &terms.origins, h2).await;
    let (name, reservation, more) = match admitted {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let offer = match hyper_upgrade::offer(req, listener).await {
        Ok(o) => o,
        Err(rej) => return rejection(rej),
    };
    let res = offer.switching_response::<RelayBody>();
    let span = tracing::info_span!("agent", %name, peer = %info.peer);
    if offer.is_h2() {
        let mut reservations = vec![reservation];
        reservations.extend(more);
        let task = serve_h2(shared.clone(), offer, reservations, soft);
        shared.tasks.spawn(task.instrument(span));
        return res;
    }
    let registry = shared.registry.clone();
    let (metrics, peer, proto) = (shared.metrics.clone(), info.peer, info.proto());
    // Over HTTP/1.1 `admit` claims one name.
    drop(more);
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
                    registry.park(AgentConn::new(io, reservation));
                }
                Err(why) => tracing::info!("agent connection dropped: {why}"),
            }
        }
        .instrument(span),
    );
    res
}

/// Drive a switched `ptth` connection that chose `h2`: start the relay's HTTP/2 client on it,
/// add it to every claimed name, and run it until the agent closes it (or its GOAWAY's last
/// stream is done, or PINGs go unanswered). The drain (`soft`) takes it out of the names, so
/// that the client sends GOAWAY once the streams in flight are done (decisions D84).
async fn serve_h2(
    shared: Arc<Shared>,
    offer: crate::listener::Offer<hyper::upgrade::OnUpgrade>,
    reservations: Vec<Reservation>,
    soft: CancellationToken,
) {
    let listener = &shared.config.listener;
    let upgraded = match offer.upgraded().await {
        Ok(u) => u,
        Err(e) => return tracing::debug!(%e, "switch failed"),
    };
    // hyper's wrapper replays what it read past the offer: the preface answer may be there.
    // The agent's first SETTINGS is watched for extended CONNECT (RFC 8441).
    let (io, connect) = Sniff::new(TokioIo::new(upgraded));
    let (client, conn) = match crate::listener::reverse_h2::<_, Incoming>(io, listener).await {
        Ok(x) => x,
        Err(e) => return tracing::info!("starting HTTP/2 on the agent connection: {e}"),
    };
    let registry: &Arc<Registry> = &shared.registry;
    shared.metrics.claimed();
    for r in &reservations {
        registry.add_h2(r, H2Client::clone(&client), connect.clone());
    }
    drop(client);
    let names = reservations.len();
    tracing::info!(names, "agent connected over HTTP/2");
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = soft.cancelled() => None,
    };
    let ended = match ended {
        Some(r) => r,
        None => {
            for r in &reservations {
                registry.retire_h2(r);
            }
            tokio::select! {
                r = conn.as_mut() => r,
                () = shared.hard.cancelled() => Ok(()),
            }
        }
    };
    match ended {
        Ok(()) => tracing::debug!("HTTP/2 agent connection closed"),
        Err(e) => tracing::info!("HTTP/2 agent connection ended: {e}"),
    }
    drop(reservations);
}

/// [`admit`], then the fleet's claim of each name, with a refusal counted: the claim's checks,
/// for the upgrade and for a long poll (`super::long_poll`, with no origins) alike. Returns the
/// names (joined with `,`), the first name's place in the counts and the others'.
pub(crate) async fn admit_counted(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    req: &Request<Incoming>,
    origins: &[Origin],
    h2: bool,
) -> Result<(String, Reservation, Vec<Reservation>), ClaimError> {
    let (label, first, more, fingerprints) = admit(shared, info, req, origins, h2)
        .inspect_err(|e| shared.metrics.refused(e.reason()))?;
    // The fleet's claim: only for a name's first connection here (the refresh keeps the
    // record of a name this relay holds already).
    if let Some(fleet) = &shared.fleet {
        for (r, (name, fingerprint)) in std::iter::once(&first).chain(&more).zip(&fingerprints) {
            if !r.first() {
                continue;
            }
            if let Claimed::Taken(holder) = fleet.claim(name, fingerprint).await {
                tracing::info!(peer = %info.peer, %name, %holder, "agent refused: another token holds the name on another relay of the fleet");
                first.cancel();
                more.into_iter().for_each(Reservation::cancel);
                let e = ClaimError::Reserve(ReserveError::Taken);
                shared.metrics.refused(e.reason());
                return Err(e);
            }
        }
    }
    Ok((label, first, more))
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

/// A claimed name and the fingerprint of the token that claims it (empty: no token).
type NameOwner = (String, String);

/// The names the offer claims (one, or one per `ptth` origin), and their places in the counts
/// once the token and certificate pass for every one: the names joined, the first name's
/// place, the others', and each name with its token's fingerprint (empty for an anonymous
/// agent).
fn admit(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    req: &Request<Incoming>,
    origins: &[Origin],
    h2: bool,
) -> Result<(String, Reservation, Vec<Reservation>, Vec<NameOwner>), ClaimError> {
    let cfg = &shared.config;
    let names = if origins.is_empty() {
        let host = request::authority(req.version(), req.uri(), req.headers())
            .ok()
            .flatten();
        vec![route::claim(host, req.uri().path(), &cfg.domain)?]
    } else {
        let names = origins
            .iter()
            .map(|o| origin_name(o, &cfg.domain))
            .collect::<Result<Vec<_>, _>>()?;
        if names.len() > 1 && !h2 {
            return Err(ClaimError::OriginsOverH1(names.len()));
        }
        names
    };
    let queue_wait = req
        .headers()
        .get_all(forwarded::TIMING_FIELD)
        .iter()
        .any(|v| {
            v.as_bytes()
                .eq_ignore_ascii_case(forwarded::TIMING_QUEUE_WAIT.as_bytes())
        });
    let tokens = shared.tokens();
    // Every name's credentials before any is counted: nothing is reserved for a refused offer.
    let mut owners = Vec::with_capacity(names.len());
    for name in &names {
        let credentials = token(tokens.as_deref(), req, name)
            .map_err(ClaimError::from)
            .and_then(|owner| match certificate_refusal(cfg, info, name) {
                Some(why) => Err(ClaimError::Certificate(why)),
                None => Ok(owner),
            });
        owners.push(credentials.inspect_err(|e| {
            tracing::info!(peer = %info.peer, %name, "agent refused: {e}");
        })?);
    }
    let fingerprints = names
        .iter()
        .cloned()
        .zip(
            owners
                .iter()
                .map(|o| o.as_ref().map(Secret::fingerprint).unwrap_or_default()),
        )
        .collect();
    let mut reservations = Vec::with_capacity(names.len());
    for (name, owner) in names.iter().zip(owners) {
        // A refusal here drops the reservations made so far, which releases their counts.
        let mut reservation = shared
            .registry
            .reserve(name, owner, info.peer, info.proto())?;
        reservation.queue_wait = queue_wait;
        reservations.push(reservation);
    }
    let more = reservations.split_off(1);
    match reservations.pop() {
        Some(first) => Ok((names.join(","), first, more, fingerprints)),
        // `names` is never empty: one claimed by the target, or the offer's origins (the
        // listener role refuses an empty list).
        None => Err(ClaimError::Name(RouteError::NoName)),
    }
}

/// The name a `ptth` origin registers: `NAME` of `http(s)://NAME.<domain>`, any port (as host
/// mode ignores the port).
fn origin_name(origin: &Origin, domain: &str) -> Result<String, ClaimError> {
    match route::host_name(origin.host(), domain) {
        Ok(Some(name)) => Ok(name),
        Ok(None) => Err(ClaimError::Origin {
            origin: origin.to_string(),
            domain: domain.to_string(),
        }),
        Err(e) => Err(ClaimError::Name(e)),
    }
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
