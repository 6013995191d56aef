//! How the agent connects, to the relay and to the upstream alike: TCP within a deadline, the
//! socket options every proxied connection gets (`crate::net::tune`), then TLS within the same
//! deadline when the URL is `https://`.
//!
//! A connection to the relay may go through a forward proxy ([`super::forward_proxy`]): TCP to
//! the proxy, a CONNECT tunnel to the relay's host and port ([`connect_via_proxy`]), then TLS
//! (for an `https://` relay) or plain HTTP inside the tunnel. The upstream is always dialled
//! directly.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};

use super::AgentError;
use super::config::{Config, ConfigError, TCP_KEEPALIVE_TIME};
use super::forward_proxy::{ForwardProxy, ProxyError};
use super::target::{Endpoint, Target};
use crate::io::{Rewind, read_head, write_flush};
use crate::limits::Limits;
use crate::proto::connect::{self, Answer, ConnectRequest};
use crate::proto::response;
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

/// Connect to the relay for one parked connection: directly ([`open`]), or through the
/// forward proxy that `config.proxy` names for the relay's host ([`through_proxy`]).
pub(crate) async fn relay(target: &Target, config: &Config) -> Result<BoxedIo, AgentError> {
    let endpoint = &target.endpoint;
    let tls = match (endpoint.tls, &config.transport) {
        (false, _) => None,
        (true, Transport::Tls(config)) => Some(config),
        (true, Transport::Plain) => {
            return Err(AgentError::BadConfig(ConfigError::PlainTransportForHttps));
        }
    };
    let timeout = config.connect_timeout;
    let proxy = config
        .proxy
        .proxy_for(endpoint)
        .map_err(ProxyError::BadUrl)?;
    if let Some((proxy, _)) = proxy {
        let tunnel = through_proxy(proxy, endpoint, timeout, &config.limits).await?;
        let shown = endpoint.authority_str();
        return Ok(secure(tunnel, endpoint, &shown, tls, timeout).await?);
    }
    let addr = resolve(endpoint)
        .await
        .map_err(|source| DialError::Connect {
            addr: format!("{}:{}", endpoint.host, endpoint.port),
            source,
        })?;
    Ok(open(endpoint, addr, &addr, tls, timeout).await?)
}

/// TCP to `proxy` within `timeout` (tuned as every relay connection is), then a CONNECT tunnel
/// to `endpoint`'s host and port ([`connect_via_proxy`]; the relay's name is resolved by the
/// proxy, not here).
async fn through_proxy(
    proxy: &ForwardProxy,
    endpoint: &Endpoint,
    timeout: Duration,
    limits: &Limits,
) -> Result<Rewind<TcpStream>, ProxyError> {
    let connect_error = |source| ProxyError::Connect {
        proxy: proxy.to_string(),
        source,
    };
    let addr = resolve(proxy.endpoint()).await.map_err(connect_error)?;
    let stream = tcp(addr, timeout).await.map_err(connect_error)?;
    let target = connect::authority_form(&endpoint.host, endpoint.port);
    connect_via_proxy(stream, proxy, &target, limits).await
}

/// Open a CONNECT tunnel to `target` (`host:port`, [`connect::authority_form`]) through the
/// forward proxy at the other end of `io`, and return the tunnel.
///
/// Sends `CONNECT target HTTP/1.1` with `Host: target`, and `Proxy-Authorization` when the
/// proxy URL has credentials ([`ConnectRequest`]); reads the answer's head with the crate's
/// head reader, held to `limits` (head size and field count), skipping interim `1xx` answers.
/// A `2xx` opens the tunnel: the stream is returned with every byte that came after the
/// answer's head, to be read before the stream's own (RFC 9112 §6.3: a `2xx` to CONNECT has no
/// body). Anything else is [`ProxyError::Refused`], and the stream should be closed. The whole
/// exchange must finish within [`Limits::handshake_timeout`].
pub async fn connect_via_proxy<IO>(
    mut io: IO,
    proxy: &ForwardProxy,
    target: &str,
    limits: &Limits,
) -> Result<Rewind<IO>, ProxyError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let exchange_error = |source| ProxyError::Exchange {
        proxy: proxy.to_string(),
        target: target.to_string(),
        source,
    };
    let mut request = ConnectRequest::new(target.to_string());
    if let Some(auth) = proxy.authorization() {
        request
            .headers
            .insert(http::header::PROXY_AUTHORIZATION, auth.clone());
    }
    let exchange = async {
        write_flush(&mut io, &request.encode(), "writing the CONNECT request").await?;
        let mut buf = BytesMut::new();
        loop {
            let (head, len) = read_head(
                &mut io,
                &mut buf,
                "reading the proxy's answer to CONNECT",
                |b| response::parse(b, limits),
            )
            .await?;
            let _ = buf.split_to(len);
            match connect::answer(head.status) {
                Answer::Established => return Ok(Ok(buf)),
                Answer::Interim => continue,
                Answer::Refused => return Ok(Err(head)),
            }
        }
    };
    let answer = tokio::time::timeout(limits.handshake_timeout, exchange)
        .await
        .map_err(|_| {
            exchange_error(crate::Error::Timeout {
                phase: "the proxy's answer to CONNECT",
                after: limits.handshake_timeout,
            })
        })?
        .map_err(exchange_error)?;
    match answer {
        Ok(rest) => Ok(Rewind::new(rest.freeze(), io)),
        Err(head) => {
            let challenge = head
                .headers
                .get_all(http::header::PROXY_AUTHENTICATE)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>();
            Err(ProxyError::Refused {
                proxy: proxy.to_string(),
                target: target.to_string(),
                status: head.status,
                user: proxy
                    .authorization()
                    .map(|_| proxy.user().unwrap_or_default().to_string()),
                challenge: (!challenge.is_empty()).then(|| challenge.join(", ")),
            })
        }
    }
}

/// Connect to `addrs` ([`tcp`]), then, with `tls`, run the TLS handshake for the endpoint's
/// server name within `timeout` again ([`secure`]). `shown` names the peer in errors.
pub(crate) async fn open(
    endpoint: &Endpoint,
    addrs: impl ToSocketAddrs,
    shown: &(dyn fmt::Display + Sync),
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<BoxedIo, DialError> {
    let stream = tcp(addrs, timeout)
        .await
        .map_err(|source| DialError::Connect {
            addr: shown.to_string(),
            source,
        })?;
    secure(stream, endpoint, shown, tls, timeout).await
}

/// With `tls`, run the TLS handshake on `io` for the endpoint's server name within `timeout`;
/// without, hand `io` back as it is.
async fn secure<IO: AgentIo>(
    io: IO,
    endpoint: &Endpoint,
    shown: &(dyn fmt::Display + Sync),
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<BoxedIo, DialError> {
    let Some(config) = tls else {
        return Ok(Box::new(io));
    };
    let name = endpoint.server_name();
    let tls_error = |source| DialError::Tls {
        addr: shown.to_string(),
        source,
    };
    let tls = tokio::time::timeout(timeout, crate::tls::connect_typed(io, name, config.clone()))
        .await
        .map_err(|_| {
            tls_error(TlsError::Handshake {
                peer: name.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ),
            })
        })?
        .map_err(tls_error)?;
    Ok(Box::new(tls))
}

/// Connect to `addrs` (tried in turn) within `timeout`, and set the socket options a proxied
/// connection needs: `TCP_NODELAY` (every message is latency-bound) and TCP keepalive after
/// [`TCP_KEEPALIVE_TIME`] (keeps NAT state alive and finds dead peers; the agent has no idle
/// timer of its own). Connections to a forward proxy are tuned the same way: they carry the
/// relay connection.
async fn tcp(addrs: impl ToSocketAddrs, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addrs))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    crate::net::tune(&stream, TCP_KEEPALIVE_TIME)?;
    Ok(stream)
}

/// The address to dial for `endpoint`: `*.localhost` always means the loopback address (RFC
/// 6761 §6.3), whatever the resolver says; an IP address is itself; any other name is asked of
/// the system resolver.
async fn resolve(endpoint: &Endpoint) -> std::io::Result<SocketAddr> {
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
    tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "host name has no address")
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
        let stream = tcp(addr, Duration::from_secs(10)).await.unwrap();
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE_TIME);
    }

    /// What a proxy at the other end of a pipe reads, once it has a whole head.
    async fn read_request(proxy: &mut tokio::io::DuplexStream) -> String {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(proxy.read(&mut b).await.unwrap(), 1, "closed: {got:?}");
            got.push(b[0]);
        }
        String::from_utf8(got).unwrap()
    }

    /// The exact request (authority-form target, `Host`, `Proxy-Authorization`), an interim
    /// `100` skipped, and the bytes the proxy sent right after its `200` kept for the tunnel.
    #[tokio::test]
    async fn connect_sends_the_exact_request_and_keeps_the_tunnels_first_bytes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (agent, mut proxy) = tokio::io::duplex(4096);
        let via = ForwardProxy::parse("http://alice:s%3Acret@127.0.0.1:3128").unwrap();
        let tunnel = tokio::spawn(async move {
            connect_via_proxy(agent, &via, "[::1]:8443", &Limits::default()).await
        });
        assert_eq!(
            read_request(&mut proxy).await,
            format!(
                "CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\nUser-Agent: {}\r\n\
                 Proxy-Authorization: Basic YWxpY2U6czpjcmV0\r\n\r\n",
                connect::USER_AGENT
            )
        );
        // "alice:s:cret"
        proxy
            .write_all(
                b"HTTP/1.1 100 Continue\r\n\r\n\
                  HTTP/1.1 200 Connection established\r\nContent-Length: 99\r\n\r\nfirst bytes",
            )
            .await
            .unwrap();
        let mut tunnel = tunnel.await.unwrap().unwrap();
        proxy.write_all(b", then more").await.unwrap();
        drop(proxy);
        let mut got = String::new();
        tunnel.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "first bytes, then more");
    }

    #[tokio::test]
    async fn a_407_is_a_refusal_that_says_what_was_sent_and_asked() {
        use tokio::io::AsyncWriteExt;
        for (url, user) in [
            ("http://127.0.0.1:3128", None),
            ("http://bob:nope@127.0.0.1:3128", Some("bob")),
        ] {
            let (agent, mut proxy) = tokio::io::duplex(4096);
            let via = ForwardProxy::parse(url).unwrap();
            let tunnel = tokio::spawn(async move {
                connect_via_proxy(agent, &via, "relay:443", &Limits::default()).await
            });
            let request = read_request(&mut proxy).await;
            assert_eq!(request.contains("Proxy-Authorization"), user.is_some());
            proxy
                .write_all(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                      Proxy-Authenticate: Basic realm=\"corp\"\r\n\
                      Proxy-Authenticate: Negotiate\r\nContent-Length: 5\r\n\r\nnope!",
                )
                .await
                .unwrap();
            match tunnel.await.unwrap() {
                Err(ProxyError::Refused {
                    proxy,
                    target,
                    status,
                    user: sent,
                    challenge,
                }) => {
                    assert_eq!(status, http::StatusCode::PROXY_AUTHENTICATION_REQUIRED);
                    assert_eq!(target, "relay:443");
                    assert!(proxy.starts_with("http://") && proxy.ends_with("127.0.0.1:3128"));
                    assert!(!proxy.contains("nope"));
                    assert_eq!(sent.as_deref(), user);
                    assert_eq!(
                        challenge.as_deref(),
                        Some("Basic realm=\"corp\", Negotiate")
                    );
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    /// A proxy that closes, answers garbage or an oversize head, or never answers: a typed
    /// error each time, never a hang (paused time for the deadline).
    #[tokio::test(start_paused = true)]
    async fn a_broken_proxy_is_an_exchange_error() {
        use tokio::io::AsyncWriteExt;
        let via = ForwardProxy::parse("http://127.0.0.1:3128").unwrap();
        let limits = Limits::default();
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        type Judge = fn(&crate::Error) -> bool;
        let cases: [(&[u8], bool, Judge); 4] = [
            (b"", true, |e| matches!(e, crate::Error::Closed { .. })),
            (b"SSH-2.0-OpenSSH\r\n\r\n", false, |e| {
                matches!(e, crate::Error::Head(_))
            }),
            (big.as_bytes(), false, |e| {
                matches!(e, crate::Error::Head(crate::HeadError::TooLarge { .. }))
            }),
            (b"HTTP/1.1 200 OK\r\n", false, |e| e.is_timeout()),
        ];
        for (answer, close, want) in cases {
            let (agent, mut proxy) = tokio::io::duplex(64 * 1024);
            let via = via.clone();
            let limits = limits.clone();
            let tunnel =
                tokio::spawn(
                    async move { connect_via_proxy(agent, &via, "relay:80", &limits).await },
                );
            read_request(&mut proxy).await;
            proxy.write_all(answer).await.unwrap();
            // Kept open unless the case is a close: dropping the pipe closes it.
            let open = (!close).then_some(proxy);
            match tunnel.await.unwrap() {
                Err(ProxyError::Exchange { source, .. }) => assert!(want(&source), "{source}"),
                other => panic!("{other:?}"),
            }
            drop(open);
        }
    }
}
