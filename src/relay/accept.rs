//! The accept loop and the per-connection hyper server shared by agents and public clients.
//!
//! Every accepted socket gets `TCP_NODELAY` (small responses must not wait for Nagle) and TCP
//! keepalive (dead peers are found even when idle). A request carrying a PTTH offer is an agent
//! claiming a name (`claim`); every other request is public and is forwarded
//! ([`super::forward`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::forward::{RelayBody, forward};
use super::registry::{AgentConn, AgentStream, ReserveError};
use super::{AgentCerts, Config, RETRY_AFTER_SECS, Shared, auth, route};
use crate::listener::hyper_upgrade;
use crate::proto::request;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
pub(crate) const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What the handlers know about the connection a request came on.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
    /// The TLS client certificate, verified against the client CA, if one was sent.
    pub client_cert: Option<CertificateDer<'static>>,
}

impl ConnInfo {
    /// `http` or `https`.
    pub fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// Accept on `listener` until `soft` is cancelled; each connection runs in `shared.tasks`. With
/// `tls`, each connection first completes a TLS handshake (within the head timeout) with the
/// TLS configuration in force when it was accepted.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: bool,
    shared: Arc<Shared>,
    soft: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = soft.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        if let Err(e) = crate::net::tune(&stream, shared.config.tcp_keepalive) {
            tracing::debug!(%e, "setting TCP_NODELAY and keepalive");
        }
        let span = tracing::debug_span!("conn", %peer);
        let tasks = shared.tasks.clone();
        let (shared, soft) = (shared.clone(), soft.clone());
        // `Relay::new` refuses TLS listeners without a TLS configuration and `set_tls` only
        // replaces one, so a TLS listener always finds one here.
        match tls.then(|| shared.tls()).flatten() {
            None => {
                let info = ConnInfo {
                    peer,
                    tls: false,
                    client_cert: None,
                };
                tasks.spawn(connection(stream, info, shared, soft).instrument(span));
            }
            Some(config) => {
                let acceptor = TlsAcceptor::from(config);
                tasks.spawn(
                    async move {
                        let deadline = shared.config.head_timeout;
                        let stream = match tokio::time::timeout(deadline, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                return tracing::debug!("{}", crate::tls::describe(&e, "client"));
                            }
                            Err(_) => return tracing::debug!("TLS handshake timed out"),
                        };
                        let info = ConnInfo {
                            peer,
                            tls: true,
                            client_cert: crate::tls::peer_certificate(&stream),
                        };
                        connection(stream, info, shared, soft).await
                    }
                    .instrument(span),
                );
            }
        }
    }
}

async fn connection<S>(stream: S, info: ConnInfo, shared: Arc<Shared>, soft: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| handle::<S>(shared.clone(), info.clone(), req))
    };
    let limits = &shared.config.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.head_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.hyper_buf_size())
        .title_case_headers(true)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = soft.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = shared.hard.cancelled() => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%e, "connection ended with an error");
    }
}

async fn handle<S: AgentStream>(
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<RelayBody>, Infallible> {
    if hyper_upgrade::is_ptth_upgrade(&req) {
        return Ok(claim::<S>(shared, &info, req).await);
    }
    Ok(forward(&shared, &info, req).await)
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, msg: impl Into<String>) -> Response<RelayBody> {
    let mut body = msg.into();
    body.push('\n');
    let mut res = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// A 503/429 with `Retry-After`.
pub(crate) fn busy(status: StatusCode, msg: impl Into<String>) -> Response<RelayBody> {
    let mut res = text(status, msg);
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    res
}

/// An agent's upgrade request: name, auth, limits, then the switch.
async fn claim<S: AgentStream>(
    shared: Arc<Shared>,
    info: &ConnInfo,
    req: Request<Incoming>,
) -> Response<RelayBody> {
    let peer = info.peer;
    let cfg = &shared.config;
    // Framing and Host first: a malformed offer gets its 400 before credentials are looked at.
    if let Err(rej) = hyper_upgrade::check(&req, &shared.listener) {
        return rejection(rej);
    }
    let host = request::authority(req.version(), req.uri(), req.headers())
        .ok()
        .flatten();
    let name = match route::claim(host, req.uri().path(), &cfg.domain) {
        Ok(n) => n,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let owner = match shared.tokens() {
        None => None,
        Some(tokens) => {
            let presented = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| auth::bearer(v.as_bytes()));
            let checked = presented.map_or(Err(auth::AuthError::Invalid), |t| {
                tokens.authorize(&name, t)
            });
            match checked {
                Ok(secret) => Some(secret),
                Err(e @ auth::AuthError::Invalid) => {
                    tracing::info!(%peer, %name, "agent refused: missing or wrong token");
                    let mut res = text(StatusCode::UNAUTHORIZED, e.to_string());
                    res.headers_mut()
                        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return res;
                }
                Err(e @ auth::AuthError::WrongName(_)) => {
                    // RFC 9110 §15.5.4: the credentials are understood, and not enough.
                    tracing::info!(%peer, %name, "agent refused: {e}");
                    return text(StatusCode::FORBIDDEN, e.to_string());
                }
            }
        }
    };
    if let Some(why) = certificate_refusal(cfg, info, &name) {
        tracing::info!(%peer, %name, "agent refused: {why}");
        return text(StatusCode::UNAUTHORIZED, why);
    }
    let reservation = match shared.registry.reserve(&name, owner, peer) {
        Ok(r) => r,
        Err(e @ ReserveError::Taken) => return text(StatusCode::CONFLICT, e.to_string()),
        Err(e @ ReserveError::TooManyAgents(_)) => {
            return busy(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        Err(e) => return busy(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
    };
    let offer = match hyper_upgrade::offer(req, &shared.listener).await {
        Ok(o) => o,
        Err(rej) => return rejection(rej),
    };
    let res = offer.switching_response::<RelayBody>();
    let span = tracing::info_span!("agent", %name, %peer);
    let registry = shared.registry.clone();
    tokio::spawn(
        async move {
            let upgraded = match offer.upgraded().await {
                Ok(u) => u,
                Err(e) => return tracing::debug!(%e, "switch failed"),
            };
            match agent_stream::<S>(upgraded) {
                Ok(io) => {
                    registry.park(AgentConn { io, reservation });
                    tracing::debug!("parked");
                }
                Err(why) => tracing::info!("agent connection dropped: {why}"),
            }
        }
        .instrument(span),
    );
    res
}

/// A refused offer, as the relay's response.
fn rejection(rej: hyper_upgrade::Rejection) -> Response<RelayBody> {
    let (parts, body) = rej.into_response().into_parts();
    Response::from_parts(parts, body.map_err(|never| match never {}).boxed_unsync())
}

/// The switched stream without hyper's wrapper, so that a parked connection holds no buffer.
/// Bytes the agent sent before the relay's first request are a protocol error (draft §2.1:
/// after the `101` the relay speaks first).
fn agent_stream<S: AgentStream>(upgraded: Upgraded) -> Result<Box<dyn AgentStream>, &'static str> {
    match upgraded.downcast::<TokioIo<S>>() {
        Ok(parts) if parts.read_buf.is_empty() => Ok(Box::new(parts.io.into_inner())),
        Ok(_) => Err("it sent bytes before the relay's first request"),
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
