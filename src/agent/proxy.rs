//! The service `ptth-connect` serves: forward each reversed request to a local upstream.
//!
//! Bodies stream both ways (nothing is buffered), hop-by-hop fields are dropped as RFC 9110
//! §7.6.1 says, the request URI is rewritten onto the upstream (with its path as a prefix) and
//! `Host` is set to the upstream's authority. A request with `Upgrade` (WebSocket) is forwarded
//! with its upgrade fields; if the upstream answers `101`, the two upgraded streams are spliced.
//! An unreachable upstream gets `502` with a plain-text reason.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::{Instrument, debug, info_span, warn};

use super::{AgentError, BoxError};

/// Response body of the proxy.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Forwards requests to one upstream `http://` URL. Cheap to clone (the client pool is shared).
#[derive(Clone, Debug)]
pub struct Proxy {
    scheme: Scheme,
    authority: Authority,
    prefix: String,
    host: HeaderValue,
    client: Client<HttpConnector, Incoming>,
}

impl Proxy {
    /// A proxy to `upstream` (`http://host:port` with an optional path prefix).
    pub fn new(upstream: &str) -> Result<Proxy, AgentError> {
        let bad = |reason| AgentError::BadUpstreamUrl {
            url: upstream.to_string(),
            reason,
        };
        let uri: Uri = upstream.parse().map_err(|_| bad("not a valid URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("the scheme must be http://"));
        }
        let authority = uri.authority().ok_or(bad("no host"))?.clone();
        let prefix = uri.path().trim_end_matches('/').to_string();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Proxy {
            scheme: Scheme::HTTP,
            host: HeaderValue::from_str(authority.as_str()).map_err(|_| bad("bad host"))?,
            authority,
            prefix,
            client,
        })
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let pq = if pq.starts_with('/') {
            format!("{}{pq}", self.prefix)
        } else {
            // `*` or an absolute form: keep only what a proxy can forward.
            format!("{}/", self.prefix)
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }

    async fn forward(self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let upgrade = wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let uri = match self.upstream_uri(req.uri()) {
            Ok(uri) => uri,
            Err(_) => return plain(StatusCode::BAD_REQUEST, "bad request target\n"),
        };
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_11;
        let upgrade_value = req.headers().get(header::UPGRADE).cloned();
        strip_hop_by_hop(req.headers_mut());
        if let (true, Some(v)) = (upgrade, upgrade_value) {
            req.headers_mut().insert(header::UPGRADE, v);
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        req.headers_mut().insert(header::HOST, self.host.clone());

        let mut res = match self.client.request(req).await {
            Ok(res) => res,
            Err(e) => {
                warn!(upstream = %self.authority, error = %e, "upstream request failed");
                let text = format!(
                    "502 Bad Gateway: the agent could not reach its upstream http://{}: {}\n",
                    self.authority,
                    error_chain(&e)
                );
                return plain(StatusCode::BAD_GATEWAY, text);
            }
        };
        if res.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut res);
            tokio::spawn(
                splice(client_upgrade, upstream_upgrade).instrument(info_span!("upgraded")),
            );
            // Keep Upgrade and Connection on the 101.
            return res.map(|b| b.map_err(Into::into).boxed());
        }
        strip_hop_by_hop(res.headers_mut());
        res.map(|b| b.map_err(Into::into).boxed())
    }
}

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

async fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => debug!(up, down, "upgraded stream closed"),
        Err(e) => debug!(error = %e, "upgraded stream failed"),
    }
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && crate::proto::tokens::members(headers, &header::CONNECTION)
            .any(|m| m.eq_ignore_ascii_case(b"upgrade"))
}

/// Hop-by-hop fields (RFC 9110 §7.6.1; `Proxy-Authorization` too, as it is meant for a proxy
/// in front). Every field `Connection` names goes as well.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// Remove hop-by-hop fields from `headers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = crate::proto::tokens::members(headers, &header::CONNECTION)
        .filter_map(|m| HeaderName::from_bytes(m).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn plain(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut res = Response::new(Full::new(text.into()).map_err(|e| match e {}).boxed());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_rewritten_onto_the_upstream() {
        let p = Proxy::new("http://127.0.0.1:3000").unwrap();
        let u = p.upstream_uri(&"/a/b?c=d".parse().unwrap()).unwrap();
        assert_eq!(u, "http://127.0.0.1:3000/a/b?c=d");
        let p = Proxy::new("http://127.0.0.1:3000/base/").unwrap();
        let u = p.upstream_uri(&"/x".parse().unwrap()).unwrap();
        assert_eq!(u, "http://127.0.0.1:3000/base/x");
        assert!(Proxy::new("https://x").is_err());
    }

    #[test]
    fn hop_by_hop_fields_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
