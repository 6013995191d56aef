//! Which agent name a request is for: pure functions, no I/O, so they are unit-tested and
//! fuzzable.
//!
//! Two modes, tried in this order:
//! - **host mode**: `Host: NAME.<domain>` (any port) names the agent; the path is unchanged;
//! - **path mode**: the first path segment is the name; it is stripped before forwarding and
//!   reported as the prefix (`X-Forwarded-Prefix: /NAME`).
//!
//! The path the agent gets has no dot segments ([`crate::proto::path`], decisions D22): in host
//! mode a `..` at the root stays there (RFC 3986 §5.2.4); in path mode the name is the first
//! segment as sent, and a `..` that would climb out of `/NAME` is refused, so `/a/../b/x` never
//! reaches `b`.

use crate::proto::path::{self, AboveRoot, PathError};

/// Longest agent name: one DNS label (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 63;

/// Where a public request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The agent name.
    pub name: String,
    /// The path and query to send to the agent (origin form, always starts with `/`).
    pub path: String,
    /// In path mode, the stripped prefix (`/NAME`); `None` in host mode.
    pub prefix: Option<String>,
}

/// Why a request could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Neither the host nor the path names an agent (e.g. `GET /` on the bare domain).
    #[error("no agent name in the request: use http://NAME.<domain>/ or /NAME/")]
    NoName,
    /// A name was found but is not a DNS label.
    #[error("invalid agent name {name:?}: {reason}")]
    InvalidName {
        /// The offending name (lossy, cut to a sane length).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path climbs out of the name's space, or hides a dot segment.
    #[error("invalid path: {0}")]
    Path(#[from] PathError),
}

/// Check that `name` is a DNS label: `[a-z0-9-]{1,63}`, not starting or ending with `-`.
pub fn validate_name(name: &str) -> Result<(), RouteError> {
    let bad = |reason| {
        Err(RouteError::InvalidName {
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only a-z, 0-9 and - are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must not start or end with -");
    }
    Ok(())
}

/// The name in `host` if it is `NAME.<domain>` (port ignored, case-insensitive).
/// `Ok(None)` when the host is not under the domain at all.
pub fn host_name(host: &str, domain: &str) -> Result<Option<String>, RouteError> {
    let host = strip_port(host);
    if host.len() <= domain.len() + 1 {
        return Ok(None);
    }
    let split = host.len() - domain.len() - 1;
    // A non-ASCII host may put the split inside a character: then it is not NAME.<domain>.
    if !host.is_char_boundary(split) {
        return Ok(None);
    }
    let (label, rest) = host.split_at(split);
    if !rest.starts_with('.') || !rest[1..].eq_ignore_ascii_case(domain) {
        return Ok(None);
    }
    let label = label.to_ascii_lowercase();
    validate_name(&label)?;
    Ok(Some(label))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: never a NAME.<domain>.
        return host;
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Route a public request from its `Host` value and its path-and-query.
pub fn route(host: Option<&str>, path_and_query: &str, domain: &str) -> Result<Route, RouteError> {
    if let Some(name) = host.map(|h| host_name(h, domain)).transpose()?.flatten() {
        let path = if path_and_query.starts_with('/') {
            path::normalize(path_and_query, AboveRoot::Stay)?.into_owned()
        } else {
            path::normalize(&slash(path_and_query), AboveRoot::Stay)?.into_owned()
        };
        return Ok(Route {
            name,
            path,
            prefix: None,
        });
    }
    let rest = path_and_query.strip_prefix('/').unwrap_or(path_and_query);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (name, tail) = rest.split_at(end);
    if name.is_empty() {
        return Err(RouteError::NoName);
    }
    validate_name(name)?;
    let path = if tail.starts_with('/') {
        path::normalize(tail, AboveRoot::Refuse)?.into_owned()
    } else {
        slash(tail)
    };
    Ok(Route {
        name: name.to_string(),
        path,
        prefix: Some(slash(name)),
    })
}

/// `/` and `rest`, without the formatting machinery (this runs for every public request).
fn slash(rest: &str) -> String {
    let mut s = String::with_capacity(1 + rest.len());
    s.push('/');
    s.push_str(rest);
    s
}

/// The name an agent claims with its upgrade request: host mode first, then the first path
/// segment.
pub fn claim(host: Option<&str>, path: &str, domain: &str) -> Result<String, RouteError> {
    route(host, path, domain).map(|r| r.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the relay_route fuzz target (fuzz/regressions/relay_route/non_ascii_host_split).
    #[test]
    fn non_ascii_host_does_not_panic() {
        assert_eq!(host_name("127.0\u{4cf}\u{450}:8080", "localhost"), Ok(None));
        assert!(host_name("d\u{e9}mo.localhost", "localhost").is_err());
    }

    fn r(host: Option<&str>, path: &str) -> Result<Route, RouteError> {
        route(host, path, "localhost")
    }

    #[test]
    fn path_mode_strips_the_name() {
        let x = r(Some("127.0.0.1:8080"), "/app/a/b?q=1").unwrap();
        assert_eq!(x.name, "app");
        assert_eq!(x.path, "/a/b?q=1");
        assert_eq!(x.prefix.as_deref(), Some("/app"));
        assert_eq!(r(None, "/app").unwrap().path, "/");
        assert_eq!(r(None, "/app?x").unwrap().path, "/?x");
        assert_eq!(r(None, "/app/").unwrap().path, "/");
    }

    #[test]
    fn host_mode_keeps_the_path() {
        let x = r(Some("App.LocalHost:8080"), "/app/x").unwrap();
        assert_eq!(x.name, "app");
        assert_eq!(x.path, "/app/x");
        assert_eq!(x.prefix, None);
        // Not under the domain: path mode.
        assert_eq!(r(Some("localhost"), "/n/").unwrap().name, "n");
        assert_eq!(r(Some("xlocalhost"), "/n/").unwrap().name, "n");
        // Nested sub-domains are not one label.
        assert!(r(Some("a.b.localhost"), "/").is_err());
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(r(None, "/"), Err(RouteError::NoName));
        assert!(matches!(
            r(None, "/Upper/"),
            Err(RouteError::InvalidName { .. })
        ));
        assert!(r(None, "/-x/").is_err());
        assert!(r(None, &format!("/{}/", "a".repeat(64))).is_err());
        assert!(r(None, &format!("/{}/", "a".repeat(63))).is_ok());
        assert!(r(None, "/a_b").is_err());
        assert!(r(Some("[::1]:80"), "/ok").is_ok());
    }

    /// Issue 11 item 1: nothing climbs out of `/NAME`, and no dot segment is forwarded.
    #[test]
    fn dot_segments_never_leave_the_name() {
        let path = |host, target| r(host, target).map(|x| (x.name, x.path));
        let climbs = Err(RouteError::Path(PathError::Climbs));
        assert_eq!(path(None, "/a/../b/x"), climbs);
        assert_eq!(path(None, "/a/%2e%2e/b/x"), climbs);
        assert_eq!(path(None, "/a/.%2E"), climbs);
        assert_eq!(path(None, "/a/x/../../b"), climbs);
        assert!(path(None, "/../a/x").is_err());
        assert!(path(None, "/%2e%2e/a/x").is_err());
        assert_eq!(
            path(None, "/a/..%2fb"),
            Err(RouteError::Path(PathError::Hidden))
        );
        let ok = |n: &str, p: &str| Ok((n.to_string(), p.to_string()));
        assert_eq!(path(None, "/a/x/../y?q=/../z"), ok("a", "/y?q=/../z"));
        assert_eq!(path(None, "/a/./x/%2e/"), ok("a", "/x/"));
        assert_eq!(path(None, "/a/x/.."), ok("a", "/"));
        assert_eq!(path(None, "/a/a%2Fb"), ok("a", "/a%2Fb"));
        // Host mode: the whole path is the agent's; `..` at its root stays there.
        let host = Some("a.localhost");
        assert_eq!(path(host, "/../index.txt"), ok("a", "/index.txt"));
        assert_eq!(path(host, "/%2e%2e/%2E./x"), ok("a", "/x"));
        assert_eq!(path(host, "/b/../x"), ok("a", "/x"));
        assert!(path(host, "/..%5cx").is_err());
        // A claim is routed the same way.
        assert!(claim(None, "/a/../b", "localhost").is_err());
    }
}
