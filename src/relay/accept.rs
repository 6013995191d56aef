//! The accept loop, and where each connection goes: public traffic to the forwarding engine
//! ([`super::forward`]), a PTTH offer to a hyper server for the claim ([`super::claim`]).
//!
//! Every accepted socket gets `TCP_NODELAY` (small responses must not wait for Nagle) and TCP
//! keepalive (dead peers are found even when idle), and one permit of the connection cap
//! ([`super::Config::max_connections`], the way mini-redis caps its connections): a socket
//! accepted with no permit left is closed at once, before a byte is read (decisions D35). The
//! permit is held while the connection is served as HTTP: for a public client until it closes,
//! for an agent until its switch (a parked connection is counted by the registry instead).
//!
//! The engine reads each request head first; a head that is a PTTH offer hands the connection,
//! with the bytes read so far in front, to hyper for that one request (decisions D59).

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::registry::AgentStream;
use super::respond::RelayBody;
use super::{ACCEPT_ERROR_PAUSE, ConnInfo, Shared, claim, forward, long_poll};
use crate::io::Rewind;

/// Accept on `listener` until `soft` is cancelled; each connection runs in `shared.tasks`. With
/// `tls`, each connection first completes a TLS handshake (within the head timeout) with the
/// TLS configuration in force when it was accepted. With `fleet_peer`, the listener is the
/// fleet's peer listener: its requests come from other relays.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: bool,
    fleet_peer: bool,
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
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection cap reached; closing the new connection");
            continue;
        };
        let permit = Counted::new(permit, &shared);
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
                    fleet_peer,
                };
                tasks.spawn(connection(stream, info, shared, soft, permit).instrument(span));
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
                            // A misconfigured agent or client (http:// to a TLS port) is worth
                            // an operator's attention; other failed handshakes are noise.
                            Ok(Err(e)) if crate::tls::is_not_tls(&e) => {
                                return tracing::info!(
                                    "{} (this port serves HTTPS only)",
                                    crate::tls::describe(&e, "the client")
                                );
                            }
                            Ok(Err(e)) => {
                                return tracing::debug!("{}", crate::tls::describe(&e, "client"));
                            }
                            Err(_) => return tracing::debug!("TLS handshake timed out"),
                        };
                        let info = ConnInfo {
                            peer,
                            tls: true,
                            client_cert: crate::tls::peer_certificate(&stream),
                            fleet_peer,
                        };
                        connection(stream, info, shared, soft, permit).await
                    }
                    .instrument(span),
                );
            }
        }
    }
}

/// A connection's permit of the cap. Taking and returning one tells the registry's watchers
/// ([`super::RelayHandle::wait_until`]), so that a caller can wait for a connection to be
/// counted or gone.
struct Counted {
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
}

impl Counted {
    fn new(permit: OwnedSemaphorePermit, shared: &Arc<Shared>) -> Counted {
        shared.registry.notify();
        Counted {
            permit: Some(permit),
            shared: shared.clone(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // The permit goes back first, so a waiter woken here sees it returned.
        drop(self.permit.take());
        self.shared.registry.notify();
    }
}

async fn connection<S>(
    stream: S,
    info: ConnInfo,
    shared: Arc<Shared>,
    soft: CancellationToken,
    permit: Counted,
) where
    S: AgentStream,
{
    let _permit = permit;
    let Some(offer) = forward::serve(stream, &info, &shared, &soft).await else {
        return;
    };
    claims(offer, info, shared, soft).await;
}

/// A connection whose request is a PTTH offer: hyper serves it, with the bytes the engine read
/// in front, for that one request (an agent that is refused dials again).
async fn claims<S: AgentStream>(
    stream: Rewind<S>,
    info: ConnInfo,
    shared: Arc<Shared>,
    soft: CancellationToken,
) {
    let info = Arc::new(info);
    let svc = {
        let (shared, soft) = (shared.clone(), soft.clone());
        service_fn(move |req| handle::<S>(shared.clone(), info.clone(), soft.clone(), req))
    };
    let limits = &shared.config.listener.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.head_timeout)
        .max_buf_size(limits.hyper_buf_size())
        .title_case_headers(true)
        .keep_alive(false);
    if let Some(n) = limits.hyper_max_headers() {
        builder.max_headers(n);
    }
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
    soft: CancellationToken,
    req: Request<Incoming>,
) -> Result<Response<RelayBody>, Infallible> {
    if long_poll::is_ours(&req) && !crate::listener::hyper_upgrade::is_ptth_upgrade(&req) {
        return Ok(long_poll::handle(shared, &info, soft, req).await);
    }
    Ok(claim::claim::<S>(shared, &info, req, soft).await)
}
