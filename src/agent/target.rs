//! The two URLs an agent is given, parsed and checked in one place: the relay URL ([`Target`]:
//! where to dial, and what to ask for in the upgrade request) and the upstream URL
//! ([`Upstream`]: where the proxy forwards to).
//!
//! Both are an [`Endpoint`]: an `http://` or `https://` URL with a host (no user info), whose
//! port defaults to the scheme's, whose authority is the `Host` value, and whose host is also
//! the TLS server name (SNI, and what the certificate is checked against) when the scheme is
//! `https`. What follows the authority differs: the relay URL's path and query are the upgrade
//! request's target (they name the service), the upstream URL's path is a prefix for every
//! forwarded request.

use http::{HeaderValue, Uri};

/// The port of an `http://` URL without one (RFC 9110 §4.2.1).
pub const HTTP_PORT: u16 = 80;

/// The port of an `https://` URL without one (RFC 9110 §4.2.2).
pub const HTTPS_PORT: u16 = 443;

/// Why a URL cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Not a URL at all.
    #[error("not a valid URL")]
    Invalid,
    /// A scheme other than `http` or `https`, or none (a relative URL).
    #[error("the scheme must be http:// or https://")]
    Scheme,
    /// No host (or an empty one).
    #[error("no host")]
    NoHost,
    /// `user:password@` in the URL: credentials would be logged with the URL, so the token is
    /// given apart ([`crate::agent::AgentBuilder::token`]).
    #[error("user info in the URL is not supported; give the token apart")]
    UserInfo,
    /// An authority that cannot be a `Host` value.
    #[error("bad host")]
    BadHost,
}

/// Where a URL says to connect: scheme, host, port and the `Host` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as given (or as redirected to).
    pub url: Uri,
    /// Host name or address to connect to, without IPv6 brackets; also the TLS server name.
    pub host: String,
    /// TCP port: the URL's, or the scheme's default.
    pub port: u16,
    /// The URL's authority, as the `Host` field of requests to this endpoint.
    pub authority: HeaderValue,
    /// Whether the URL is `https://`: TLS, verified for [`Endpoint::server_name`].
    pub tls: bool,
}

impl Endpoint {
    /// Parse and check an `http://` or `https://` URL.
    pub fn parse(url: &str) -> Result<Endpoint, UrlError> {
        let uri: Uri = url.parse().map_err(|_| UrlError::Invalid)?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(UrlError::Scheme),
        };
        let auth = uri.authority().ok_or(UrlError::NoHost)?;
        if auth.as_str().contains('@') {
            return Err(UrlError::UserInfo);
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(UrlError::NoHost);
        }
        // `http` takes anything after the last colon as the port, and reports no port when it
        // is not a number: only digits that fit 16 bits are a port; none is the default.
        let after_host = &auth.as_str()[auth.as_str().rfind(']').map_or(0, |i| i + 1)..];
        let port = match after_host.rsplit_once(':') {
            None | Some((_, "")) => {
                if tls {
                    HTTPS_PORT
                } else {
                    HTTP_PORT
                }
            }
            Some((_, p)) if p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u16>().map_err(|_| UrlError::Invalid)?
            }
            Some(_) => return Err(UrlError::Invalid),
        };
        Ok(Endpoint {
            host: host.to_string(),
            port,
            authority: HeaderValue::from_str(auth.as_str()).map_err(|_| UrlError::BadHost)?,
            tls,
            url: uri,
        })
    }

    /// The name the peer's certificate must be valid for, and sent as SNI.
    pub fn server_name(&self) -> &str {
        &self.host
    }

    /// The URL's authority (`host[:port]`), for messages.
    pub fn authority_str(&self) -> &str {
        self.url.authority().map_or("", |a| a.as_str())
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// The relay URL: where to dial, and the target of the upgrade request, which names the
/// service (`/NAME` in path mode; the host names it in host mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where to dial.
    pub endpoint: Endpoint,
    /// Request target of the upgrade request (path and query; `/` when the URL has none).
    pub path: String,
}

impl Target {
    /// Parse an `http://` or `https://` relay URL.
    pub fn parse(url: &str) -> Result<Target, super::AgentError> {
        let bad = |reason| super::AgentError::BadRelayUrl {
            url: url.to_string(),
            reason,
        };
        let endpoint = Endpoint::parse(url).map_err(bad)?;
        let path = endpoint
            .url
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_string());
        Ok(Target { endpoint, path })
    }

    /// The URL as given (or as redirected to).
    pub fn url(&self) -> &Uri {
        &self.endpoint.url
    }

    /// Resolve a `Location` from a `307`/`308` against this target.
    pub fn redirect(&self, location: &str) -> Result<Target, super::AgentError> {
        if location.starts_with('/') {
            let url = format!(
                "{}://{}{}",
                self.endpoint.scheme(),
                self.endpoint.authority.to_str().unwrap_or(""),
                location
            );
            return Target::parse(&url);
        }
        Target::parse(location)
    }

    /// The public URL of the service, when this is the relay URL the agent was given: the same
    /// URL, ending in `/`.
    pub fn public_url(&self) -> String {
        let s = self.endpoint.url.to_string();
        if s.ends_with('/') { s } else { format!("{s}/") }
    }
}

/// The upstream URL: where to forward, and the path prefix of every forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// The URL's path without its trailing `/` (empty for none): put before every forwarded
    /// path.
    pub prefix: String,
}

impl Upstream {
    /// Parse an `http://` or `https://` upstream URL; a path is a prefix.
    pub fn parse(url: &str) -> Result<Upstream, super::AgentError> {
        let endpoint =
            Endpoint::parse(url).map_err(|reason| super::AgentError::BadUpstreamUrl {
                url: url.to_string(),
                reason,
            })?;
        let prefix = endpoint.url.path().trim_end_matches('/').to_string();
        Ok(Upstream { endpoint, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentError;

    #[test]
    fn path_mode_url() {
        let t = Target::parse("http://127.0.0.1:8080/demo").unwrap();
        assert_eq!(t.endpoint.host, "127.0.0.1");
        assert_eq!(t.endpoint.port, 8080);
        assert_eq!(t.endpoint.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/demo");
        assert_eq!(t.public_url(), "http://127.0.0.1:8080/demo/");
    }

    #[test]
    fn host_mode_url() {
        let t = Target::parse("http://demo.localhost:8080/").unwrap();
        assert_eq!(t.endpoint.host, "demo.localhost");
        assert_eq!(t.endpoint.authority, "demo.localhost:8080");
        assert_eq!(t.path, "/");
        assert_eq!(t.public_url(), "http://demo.localhost:8080/");
    }

    #[test]
    fn https_urls_default_to_443() {
        let t = Target::parse("https://relay.example/demo").unwrap();
        assert!(t.endpoint.tls);
        assert_eq!(t.endpoint.port, 443);
        assert_eq!(t.endpoint.server_name(), "relay.example");
        assert_eq!(t.redirect("/x").unwrap().url().scheme_str(), Some("https"));
        let u = Upstream::parse("https://up.example").unwrap();
        assert_eq!((u.endpoint.port, u.endpoint.tls), (443, true));
        let u = Upstream::parse("http://[::1]/base/").unwrap();
        assert_eq!((u.endpoint.host.as_str(), u.endpoint.port), ("::1", 80));
        assert_eq!(u.endpoint.authority, "[::1]");
        assert_eq!(u.prefix, "/base");
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        let relay = |url| match Target::parse(url) {
            Err(AgentError::BadRelayUrl { reason, .. }) => reason,
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(relay("ftp://x/"), UrlError::Scheme);
        assert_eq!(relay("/relative"), UrlError::Scheme);
        assert_eq!(relay("http://user:pw@x/"), UrlError::UserInfo);
        assert_eq!(relay("http:// x/"), UrlError::Invalid);
        assert_eq!(relay("http://x:port/"), UrlError::Invalid);
        assert_eq!(relay("http://x:65536/"), UrlError::Invalid);
        assert_eq!(relay("http://x:+1/"), UrlError::Invalid);
        assert_eq!(Target::parse("http://x:/").unwrap().endpoint.port, 80);
        assert_eq!(Target::parse("http://[::1]:9/").unwrap().endpoint.port, 9);
        let upstream = |url| match Upstream::parse(url) {
            Err(AgentError::BadUpstreamUrl { reason, .. }) => reason,
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(upstream("ftp://x"), UrlError::Scheme);
        assert_eq!(upstream("http://u@x"), UrlError::UserInfo);
    }

    #[test]
    fn redirects_resolve() {
        let t = Target::parse("http://127.0.0.1:8080/demo").unwrap();
        assert_eq!(t.redirect("/other").unwrap().path, "/other");
        let r = t.redirect("http://127.0.0.1:9000/demo").unwrap();
        assert_eq!(r.endpoint.port, 9000);
    }
}
