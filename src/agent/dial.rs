//! Where the agent dials and how: the relay URL, the TCP connection and its socket options,
//! and the upgrade request.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::AgentError;
use crate::proto::Protocol;
use crate::proto::request::UpgradeRequest;

/// Deadline for the TCP connect to the relay: 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle time before the first TCP keepalive probe on a relay connection: 30 s (well under the
/// usual NAT mapping lifetimes).
pub const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(30);

/// A stream the agent can run PTTH over: TCP now, TLS later.
pub trait AgentIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AgentIo for T {}

/// A connected stream to the relay.
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
    Tls(std::sync::Arc<rustls::ClientConfig>),
}

/// One place to dial: the parsed relay URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given (or as redirected to).
    pub url: Uri,
    /// Host name or address to connect to.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `Host` field of the upgrade request (the URL's authority).
    pub authority: HeaderValue,
    /// Request target of the upgrade request (path and query).
    pub path: String,
    /// Whether the URL is `https://`.
    pub tls: bool,
}

impl Target {
    /// Parse an `http://` or `https://` relay URL.
    pub fn parse(url: &str) -> Result<Target, AgentError> {
        let bad = |reason: &'static str| AgentError::BadRelayUrl {
            url: url.to_string(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a valid URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http:// or https://")),
        };
        let auth = uri.authority().ok_or(bad("no host"))?.clone();
        if auth.as_str().contains('@') {
            return Err(bad("user info in the URL is not supported; use --token"));
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_string());
        Ok(Target {
            host: host.to_string(),
            port: auth.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            tls,
            authority: HeaderValue::from_str(auth.as_str()).map_err(|_| bad("bad host"))?,
            path,
            url: uri,
        })
    }

    /// Resolve a `Location` from a `307`/`308` against this target.
    pub fn redirect(&self, location: &str) -> Result<Target, AgentError> {
        if location.starts_with('/') {
            let url = format!(
                "{}://{}{}",
                if self.tls { "https" } else { "http" },
                self.authority.to_str().unwrap_or(""),
                location
            );
            return Target::parse(&url);
        }
        Target::parse(location)
    }

    /// The public URL of the service, when this is the relay URL the agent was given: the same
    /// URL, ending in `/`.
    pub fn public_url(&self) -> String {
        let s = self.url.to_string();
        if s.ends_with('/') { s } else { format!("{s}/") }
    }

    /// Build the upgrade request for this target.
    pub fn upgrade_request(
        &self,
        method: &Method,
        protocol: Protocol,
        token: Option<&HeaderValue>,
        headers: &HeaderMap,
    ) -> UpgradeRequest {
        let mut req = UpgradeRequest::new(self.authority.clone());
        req.method = method.clone();
        req.target = self.path.clone();
        req.protocols = vec![protocol];
        req.headers = headers.clone();
        if let Some(token) = token {
            req.headers
                .insert(http::header::AUTHORIZATION, token.clone());
        }
        req
    }
}

/// Connect to `target` with a deadline, and set the socket options a parked connection needs:
/// `TCP_NODELAY` (every reversed response is latency-bound) and TCP keepalive (keeps NAT state
/// alive and finds dead relays; the agent has no idle timer of its own).
pub async fn dial(
    target: &Target,
    transport: &Transport,
    timeout: Duration,
) -> Result<BoxedIo, AgentError> {
    let addr = resolve(target).await?;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| AgentError::Connect {
            addr: addr.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        })?
        .map_err(|source| AgentError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    crate::net::tune(&stream, TCP_KEEPALIVE_TIME).map_err(|source| AgentError::Connect {
        addr: addr.to_string(),
        source,
    })?;
    match (target.tls, transport) {
        (false, _) => Ok(Box::new(stream)),
        (true, Transport::Tls(config)) => {
            let tls = tokio::time::timeout(
                timeout,
                crate::tls::connect(stream, &target.host, config.clone()),
            )
            .await
            .map_err(|_| AgentError::Tls {
                addr: addr.to_string(),
                message: "TLS handshake timed out".into(),
            })?
            .map_err(|e| AgentError::Tls {
                addr: addr.to_string(),
                message: e.to_string(),
            })?;
            Ok(Box::new(tls))
        }
        (true, Transport::Plain) => Err(AgentError::BadConfig(
            "an https:// relay needs a TLS transport".into(),
        )),
    }
}

/// `*.localhost` always means the loopback address (RFC 6761 §6.3), whatever the resolver says.
async fn resolve(target: &Target) -> Result<SocketAddr, AgentError> {
    let host = target.host.to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            target.port,
        ));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, target.port));
    }
    let err = |source| AgentError::Connect {
        addr: format!("{}:{}", target.host, target.port),
        source,
    };
    tokio::net::lookup_host((target.host.as_str(), target.port))
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

    #[test]
    fn path_mode_url() {
        let t = Target::parse("http://127.0.0.1:8080/demo").unwrap();
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.port, 8080);
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/demo");
        assert_eq!(t.public_url(), "http://127.0.0.1:8080/demo/");
    }

    #[test]
    fn host_mode_url() {
        let t = Target::parse("http://demo.localhost:8080/").unwrap();
        assert_eq!(t.host, "demo.localhost");
        assert_eq!(t.authority, "demo.localhost:8080");
        assert_eq!(t.path, "/");
        assert_eq!(t.public_url(), "http://demo.localhost:8080/");
        let req = t.upgrade_request(
            &Method::POST,
            Protocol::Ptth09,
            Some(&HeaderValue::from_static("Bearer s")),
            &HeaderMap::new(),
        );
        let raw = String::from_utf8(req.encode()).unwrap();
        assert!(raw.starts_with("POST / HTTP/1.1\r\nHost: demo.localhost:8080\r\n"));
        assert!(raw.contains("\r\nauthorization: Bearer s\r\n"));
    }

    #[test]
    fn https_urls_default_to_443() {
        let t = Target::parse("https://relay.example/demo").unwrap();
        assert!(t.tls);
        assert_eq!(t.port, 443);
        assert_eq!(t.redirect("/x").unwrap().url.scheme_str(), Some("https"));
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("/relative").is_err());
    }

    #[test]
    fn redirects_resolve() {
        let t = Target::parse("http://127.0.0.1:8080/demo").unwrap();
        assert_eq!(t.redirect("/other").unwrap().path, "/other");
        let r = t.redirect("http://127.0.0.1:9000/demo").unwrap();
        assert_eq!(r.port, 9000);
    }

    #[tokio::test]
    async fn localhost_names_resolve_to_loopback() {
        let t = Target::parse("http://anything.localhost:81/").unwrap();
        assert_eq!(resolve(&t).await.unwrap(), "127.0.0.1:81".parse().unwrap());
    }
}
