//! How the agent connects, to the relay and to the upstream alike: TCP within a deadline, the
//! socket options every proxied connection gets (`crate::net::tune`), then TLS within the same
//! deadline when the URL is `https://`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpStream, ToSocketAddrs};

use super::AgentError;
use super::config::{ConfigError, TCP_KEEPALIVE_TIME};
use super::target::{Endpoint, Target};
use crate::tls::TlsError;

/// A stream the agent can run HTTP over: TCP or TLS (the crate's one stream trait).
pub use crate::io::ByteStream as AgentIo;

/// A connected stream, to the relay or to the upstream.
pub type BoxedIo = Box<dyn AgentIo>;

/// How the agent reaches the relay. An `https://` relay URL needs [`Transport::Tls`]; the
/// builder picks the system's roots when none is given.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Transport {
    /// Plain TCP (`http://` relay URLs).
    #[default]
    Plain,
    /// TLS with this client configuration (`https://` relay URLs): the relay's certificate
    /// is verified against its roots, SNI is the URL's host, and a client certificate is
    /// presented if the configuration has one. Build it with [`crate::tls::client_config`].
    Tls(Arc<rustls::ClientConfig>),
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// Resolving the name or the TCP connect failed (or passed its deadline).
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The I/O error (`TimedOut` when the deadline passed).
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (or passed its deadline).
    #[error("TLS with {addr}: {source}")]
    Tls {
        /// The address dialled.
        addr: String,
        /// What went wrong.
        #[source]
        source: TlsError,
    },
}

impl From<DialError> for AgentError {
    fn from(e: DialError) -> AgentError {
        match e {
            DialError::Connect { addr, source } => AgentError::Connect { addr, source },
            DialError::Tls { addr, source } => AgentError::Tls { addr, source },
        }
    }
}

/// Connect to the relay for one parked connection (see [`open`]).
pub(crate) async fn relay(
    target: &Target,
    transport: &Transport,
    timeout: Duration,
) -> Result<BoxedIo, AgentError> {
    let endpoint = &target.endpoint;
    let tls = match (endpoint.tls, transport) {
        (false, _) => None,
        (true, Transport::Tls(config)) => Some(config),
        (true, Transport::Plain) => {
            return Err(AgentError::BadConfig(ConfigError::PlainTransportForHttps));
        }
    };
    let addr = resolve(endpoint).await?;
    Ok(open(endpoint, addr, &addr, tls, timeout).await?)
}

/// Connect to `addrs` ([`tcp`]), then, with `tls`, run the TLS handshake for the endpoint's
/// server name within `timeout` again. `shown` names the peer in errors.
pub(crate) async fn open(
    endpoint: &Endpoint,
    addrs: impl ToSocketAddrs,
    shown: &(dyn fmt::Display + Sync),
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<BoxedIo, DialError> {
    let stream = tcp(addrs, shown, timeout).await?;
    let Some(config) = tls else {
        return Ok(Box::new(stream));
    };
    let name = endpoint.server_name();
    let tls_error = |source| DialError::Tls {
        addr: shown.to_string(),
        source,
    };
    let tls = tokio::time::timeout(
        timeout,
        crate::tls::connect_typed(stream, name, config.clone()),
    )
    .await
    .map_err(|_| {
        tls_error(TlsError::Handshake {
            peer: name.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"),
        })
    })?
    .map_err(tls_error)?;
    Ok(Box::new(tls))
}

/// Connect to `addrs` (tried in turn) within `timeout`, and set the socket options a proxied
/// connection needs: `TCP_NODELAY` (every message is latency-bound) and TCP keepalive after
/// [`TCP_KEEPALIVE_TIME`] (keeps NAT state alive and finds dead peers; the agent has no idle
/// timer of its own).
async fn tcp(
    addrs: impl ToSocketAddrs,
    shown: &(dyn fmt::Display + Sync),
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let connect_error = |source| DialError::Connect {
        addr: shown.to_string(),
        source,
    };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addrs))
        .await
        .map_err(|_| {
            connect_error(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(connect_error)?;
    crate::net::tune(&stream, TCP_KEEPALIVE_TIME).map_err(connect_error)?;
    Ok(stream)
}

/// `*.localhost` always means the loopback address (RFC 6761 §6.3), whatever the resolver says.
async fn resolve(endpoint: &Endpoint) -> Result<SocketAddr, DialError> {
    let host = endpoint.host.to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            endpoint.port,
        ));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, endpoint.port));
    }
    let err = |source| DialError::Connect {
        addr: format!("{}:{}", endpoint.host, endpoint.port),
        source,
    };
    tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(err)?
        .next()
        .ok_or_else(|| {
            err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "host name has no address",
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_names_resolve_to_loopback() {
        let e = Endpoint::parse("http://anything.localhost:81/").unwrap();
        assert_eq!(resolve(&e).await.unwrap(), "127.0.0.1:81".parse().unwrap());
    }

    /// Every connection the agent opens gets `TCP_NODELAY` and keepalive (relay and upstream
    /// alike: both come through [`open`], and so through [`tcp`]).
    #[tokio::test]
    async fn opened_sockets_are_tuned() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stream = tcp(addr, &addr, Duration::from_secs(10)).await.unwrap();
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE_TIME);
    }
}
