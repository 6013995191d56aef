//! Forward proxies between the agent and the relay (HTTP CONNECT): which proxy, if any, a
//! connection to the relay goes through, and the proxy's URL with its credentials.
//!
//! Not to be confused with [`super::proxy`], the service that forwards reversed requests to the
//! local upstream. Only the connection to the *relay* goes through a forward proxy; the
//! upstream is always dialled directly, as it is local (decisions D40).
//!
//! The choice follows curl's, so that an agent behaves like the `curl` next to it
//! ([`ProxySettings::from_env`]):
//! - an `http://` relay uses `http_proxy` (lower case only: an upper-case `HTTP_PROXY` can be
//!   set by a CGI request's `Proxy:` field, "httpoxy"), then `all_proxy`, then `ALL_PROXY`;
//! - an `https://` relay uses `https_proxy`, then `HTTPS_PROXY`, then `all_proxy`, then
//!   `ALL_PROXY`;
//! - `no_proxy` (or `NO_PROXY`) lists the relay hosts reached directly ([`NoProxy`]);
//! - an empty variable counts as unset.
//!
//! A proxy URL is `http://[USER[:PASSWORD]@]HOST[:PORT]` ([`ForwardProxy::parse`]); the scheme
//! may be left out, the port defaults to [`DEFAULT_PROXY_PORT`], and user and password are
//! percent-decoded and sent as `Proxy-Authorization: Basic` (RFC 7617). The tunnel itself is
//! opened by [`super::dial::connect_via_proxy`].

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use http::{HeaderValue, StatusCode};

use super::target::{Endpoint, UrlError};

/// The port of a proxy URL without one: 1080, curl's default for every proxy that is not
/// `https://`.
pub const DEFAULT_PROXY_PORT: u16 = 1080;

/// The variables an `http://` relay's proxy is read from, in order (see the module docs).
pub const HTTP_PROXY_VARS: [&str; 3] = ["http_proxy", "all_proxy", "ALL_PROXY"];

/// The variables an `https://` relay's proxy is read from, in order.
pub const HTTPS_PROXY_VARS: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];

/// The variables the no-proxy list is read from, in order.
pub const NO_PROXY_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// Why a proxy URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyUrlError {
    /// A scheme other than `http://` (`https://` proxies, `socks5://`...).
    #[error("{0}:// proxies are not supported; use an http:// proxy (one that answers CONNECT)")]
    Scheme(String),
    /// The host and port are not a valid authority.
    #[error("{0}")]
    Authority(#[source] UrlError),
    /// A percent sign not followed by two hex digits in the user or password.
    #[error("bad percent-encoding in the user or password")]
    Percent,
    /// The user has a `:` or either part a control character, which `Basic` cannot carry
    /// (RFC 7617 §2).
    #[error("the user may not contain ':', nor either part a control character (RFC 7617)")]
    Credentials,
}

/// A forward proxy that answers CONNECT: where it is, and the credentials to give it.
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardProxy {
    endpoint: Endpoint,
    user: Option<String>,
    /// `Basic base64(user:password)`, marked sensitive.
    authorization: Option<HeaderValue>,
}

impl ForwardProxy {
    /// Parse `[http://][USER[:PASSWORD]@]HOST[:PORT][/]`, as curl reads a proxy URL: no scheme
    /// means `http://`, no port [`DEFAULT_PROXY_PORT`], user and password are percent-decoded
    /// (`%40` for `@`, `%3A` for `:`), and a path is ignored.
    pub fn parse(url: &str) -> Result<ForwardProxy, ProxyUrlError> {
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => return Err(ProxyUrlError::Scheme(scheme.to_ascii_lowercase())),
            None => url,
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let with_port = if has_port(hostport) {
            hostport.to_string()
        } else {
            format!("{hostport}:{DEFAULT_PROXY_PORT}")
        };
        let endpoint =
            Endpoint::parse(&format!("http://{with_port}/")).map_err(ProxyUrlError::Authority)?;
        let (user, authorization) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                let user = percent_decode(user)?;
                let password = percent_decode(password)?;
                if user.contains(&b':') || user.iter().chain(&password).any(u8::is_ascii_control) {
                    return Err(ProxyUrlError::Credentials);
                }
                let shown = String::from_utf8_lossy(&user).into_owned();
                (Some(shown), Some(basic(&user, &password)))
            }
        };
        Ok(ForwardProxy {
            endpoint,
            user,
            authorization,
        })
    }

    /// Host and port to connect to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The user of the credentials, if the URL has any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The `Proxy-Authorization` value (`Basic ...`), if the URL has credentials. It is marked
    /// sensitive.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }
}

/// `http://[user@]host:port`: never the password.
impl fmt::Display for ForwardProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("http://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        f.write_str(self.endpoint.authority_str())
    }
}

impl fmt::Debug for ForwardProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ForwardProxy({self})")
    }
}

/// Whether `host[:port]` ends in a port (an IPv6 address is in brackets).
fn has_port(hostport: &str) -> bool {
    match hostport.rfind(']') {
        Some(close) => hostport[close..].contains(':'),
        None => hostport.contains(':'),
    }
}

/// `Basic base64(user ":" password)` (RFC 7617 §2), marked sensitive.
fn basic(user: &[u8], password: &[u8]) -> HeaderValue {
    let mut pair = user.to_vec();
    pair.push(b':');
    pair.extend_from_slice(password);
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut v =
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is valid header text");
    v.set_sensitive(true);
    v
}

/// Decode `%XX` escapes (RFC 3986 §2.1); everything else is kept as it is.
fn percent_decode(s: &str) -> Result<Vec<u8>, ProxyUrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(ProxyUrlError::Percent)?;
            let hex = std::str::from_utf8(hex).map_err(|_| ProxyUrlError::Percent)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ProxyUrlError::Percent)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// A proxy URL as given, with any password replaced by `***`: for messages.
fn redacted(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => {
            let info = &url[start..start + at];
            let user = info.split_once(':').map_or(info, |(u, _)| u);
            let shown = if user.len() < info.len() {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{}{shown}{}", &url[..start], &url[start + at..])
        }
        None => url.to_string(),
    }
}

/// The hosts reached without a proxy, as curl reads `NO_PROXY`.
///
/// A comma- or blank-separated list. `*` alone matches every host. A name matches itself and
/// the names under it (`example.com` and `.example.com` both match `example.com` and
/// `www.example.com`, not `notexample.com`), case-insensitively, a trailing dot ignored. An
/// IP address matches the same address, or with `/BITS` its network (CIDR, since curl 7.86:
/// `10.0.0.0/8`, `fd00::/8`); an IPv6 address is written without brackets. As in curl, names
/// only match names and addresses only addresses (`localhost` does not match `127.0.0.1`),
/// there are no ports and no other wildcards (`*.example.com` matches nothing: write
/// `.example.com`), and `/0` means the whole address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    entries: Vec<String>,
}

impl NoProxy {
    /// Parse a list; the empty list matches nothing.
    pub fn parse(list: &str) -> NoProxy {
        NoProxy {
            all: list.trim() == "*",
            entries: list
                .split([',', ' ', '\t'])
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }

    /// The list from `no_proxy`, else `NO_PROXY` (empty when neither is set).
    pub fn from_env() -> NoProxy {
        NoProxy::from_vars(env_var)
    }

    /// [`NoProxy::from_env`] with the variables looked up by `lookup`.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> NoProxy {
        first_set(&lookup, &NO_PROXY_VARS)
            .map_or_else(NoProxy::default, |(_, v)| NoProxy::parse(&v))
    }

    /// Whether `host` (a name, or an IP address with or without brackets) is reached directly.
    pub fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => self.entries.iter().any(|e| ip_matches(ip, e)),
            Err(_) => {
                let name = host.strip_suffix('.').unwrap_or(host);
                self.entries.iter().any(|e| name_matches(name, e))
            }
        }
    }
}

/// `name` is `entry`, or under it (`www.example.com` under `example.com` or `.example.com`).
fn name_matches(name: &str, entry: &str) -> bool {
    let entry = entry.strip_suffix('.').unwrap_or(entry);
    let entry = entry.strip_prefix('.').unwrap_or(entry);
    if entry.is_empty() || entry.len() > name.len() {
        return false;
    }
    let (head, tail) = name.split_at(name.len() - entry.len());
    tail.eq_ignore_ascii_case(entry) && (head.is_empty() || head.ends_with('.'))
}

/// `ip` is the address `entry`, or in its network when it ends in `/BITS`.
fn ip_matches(ip: IpAddr, entry: &str) -> bool {
    let (addr, bits) = match entry.split_once('/') {
        Some((a, b)) => match b.parse::<u32>() {
            Ok(bits) => (a, Some(bits)),
            Err(_) => return false,
        },
        None => (entry, None),
    };
    let Ok(net) = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        return false;
    };
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
        _ => return false,
    };
    // As in curl, `/0` (and no suffix) compares the whole address.
    let bits = bits.filter(|&b| b != 0).unwrap_or(width);
    if bits > width {
        return false;
    }
    let shift = width - bits;
    (ip ^ net) >> shift == 0
}

/// Where a proxy setting came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyOrigin {
    /// Given by the program ([`ProxySettings::from_url`], [`ProxySettings::via`]).
    Given,
    /// Read from this environment variable.
    Env(&'static str),
}

impl fmt::Display for ProxyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyOrigin::Given => f.write_str("as given"),
            ProxyOrigin::Env(var) => write!(f, "from {var}"),
        }
    }
}

/// A proxy URL that cannot be used, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proxy URL {url:?} ({origin}): {reason}")]
pub struct BadProxy {
    /// Where the URL came from.
    pub origin: ProxyOrigin,
    /// The URL, its password replaced by `***`.
    pub url: String,
    /// What is wrong with it.
    #[source]
    pub reason: ProxyUrlError,
}

/// The proxy for one relay scheme: where it came from, and the proxy or why it is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Choice {
    origin: ProxyOrigin,
    proxy: Result<ForwardProxy, BadProxy>,
}

impl Choice {
    fn parse(origin: ProxyOrigin, url: &str) -> Choice {
        Choice {
            origin,
            proxy: ForwardProxy::parse(url).map_err(|reason| BadProxy {
                origin,
                url: redacted(url),
                reason,
            }),
        }
    }
}

/// How the agent reaches the relay: directly (the default), or through a forward proxy per
/// relay scheme, except for the hosts of a [`NoProxy`] list.
///
/// A bad proxy URL from the environment is reported when it is needed (by the builder for the
/// relay URL's scheme, by a dial for a redirect to the other scheme), not when it is read: as
/// in curl, a variable the relay's scheme never reads cannot stop the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    http: Option<Choice>,
    https: Option<Choice>,
    no_proxy: NoProxy,
}

impl ProxySettings {
    /// No proxy: every connection to the relay is direct.
    pub fn direct() -> ProxySettings {
        ProxySettings::default()
    }

    /// Every relay connection through `proxy`, whatever the relay's scheme, with an empty
    /// no-proxy list (see [`ProxySettings::no_proxy`]).
    pub fn via(proxy: ForwardProxy) -> ProxySettings {
        let choice = Choice {
            origin: ProxyOrigin::Given,
            proxy: Ok(proxy),
        };
        ProxySettings {
            http: Some(choice.clone()),
            https: Some(choice),
            no_proxy: NoProxy::default(),
        }
    }

    /// [`ProxySettings::via`] the proxy at `url` ([`ForwardProxy::parse`]).
    pub fn from_url(url: &str) -> Result<ProxySettings, BadProxy> {
        Choice::parse(ProxyOrigin::Given, url)
            .proxy
            .map(ProxySettings::via)
    }

    /// The proxies and the no-proxy list of the environment, read as curl reads them (see the
    /// module docs).
    pub fn from_env() -> ProxySettings {
        ProxySettings::from_vars(env_var)
    }

    /// [`ProxySettings::from_env`] with the variables looked up by `lookup` (an unset and an
    /// empty variable both mean "not set").
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> ProxySettings {
        let choose = |vars: &[&'static str]| {
            first_set(&lookup, vars).map(|(var, url)| Choice::parse(ProxyOrigin::Env(var), &url))
        };
        ProxySettings {
            http: choose(&HTTP_PROXY_VARS),
            https: choose(&HTTPS_PROXY_VARS),
            no_proxy: NoProxy::from_vars(&lookup),
        }
    }

    /// Replace the no-proxy list (the empty list sends every relay connection through the
    /// proxy).
    pub fn no_proxy(mut self, list: NoProxy) -> ProxySettings {
        self.no_proxy = list;
        self
    }

    /// The proxy a connection to `endpoint` goes through, with where it came from; `None` for
    /// a direct connection.
    pub fn proxy_for(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Option<(&ForwardProxy, ProxyOrigin)>, BadProxy> {
        let choice = if endpoint.tls {
            &self.https
        } else {
            &self.http
        };
        match choice {
            None => Ok(None),
            Some(_) if self.no_proxy.matches(&endpoint.host) => Ok(None),
            Some(Choice { origin, proxy }) => match proxy {
                Ok(p) => Ok(Some((p, *origin))),
                Err(e) => Err(e.clone()),
            },
        }
    }
}

/// The first of `vars` that `lookup` finds set and not empty, with its value.
fn first_set(
    lookup: &impl Fn(&str) -> Option<String>,
    vars: &[&'static str],
) -> Option<(&'static str, String)> {
    vars.iter()
        .find_map(|&var| lookup(var).filter(|v| !v.is_empty()).map(|v| (var, v)))
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Why the proxy did not open a tunnel to the relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The TCP connection to the proxy failed (or passed its deadline).
    #[error("connecting to the proxy {proxy}: {source}")]
    Connect {
        /// The proxy, without its password.
        proxy: String,
        /// The I/O error (`TimedOut` when the deadline passed).
        #[source]
        source: std::io::Error,
    },
    /// The proxy answered CONNECT with a status other than `2xx`.
    #[error(
        "the proxy {proxy} refused a tunnel to {target}: {status}{}",
        refusal_detail(*.status, .user.as_deref(), .challenge.as_deref())
    )]
    Refused {
        /// The proxy, without its password.
        proxy: String,
        /// The tunnel's target (`host:port`).
        target: String,
        /// The proxy's status (`407` when it wants credentials, or other ones).
        status: StatusCode,
        /// The user whose credentials were sent, if any were.
        user: Option<String>,
        /// The proxy's `Proxy-Authenticate` challenges, on a `407`.
        challenge: Option<String>,
    },
    /// Writing the CONNECT request or reading the answer failed: the proxy closed, sent no
    /// valid head, or did not answer within the deadline.
    #[error("CONNECT to {target} through the proxy {proxy}: {source}")]
    Exchange {
        /// The proxy, without its password.
        proxy: String,
        /// The tunnel's target (`host:port`).
        target: String,
        /// What went wrong.
        #[source]
        source: crate::Error,
    },
    /// The proxy URL for the relay's scheme cannot be used.
    #[error("{0}")]
    BadUrl(#[source] BadProxy),
}

impl ProxyError {
    /// Whether the proxy asked for credentials (`407`), whether or not any were sent.
    pub fn is_proxy_auth(&self) -> bool {
        matches!(self, ProxyError::Refused { status, .. }
            if *status == StatusCode::PROXY_AUTHENTICATION_REQUIRED)
    }
}

/// The words after a refusal's status: for a `407`, whether credentials were sent.
fn refusal_detail(status: StatusCode, user: Option<&str>, challenge: Option<&str>) -> String {
    if status != StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        return String::new();
    }
    let asks = challenge.map_or(String::new(), |c| format!("; it asks for {c}"));
    match user {
        Some(user) => format!(" (it rejected the credentials sent for user {user:?}{asks})"),
        None => format!(" (no credentials were sent{asks})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn endpoint(url: &str) -> Endpoint {
        Endpoint::parse(url).unwrap()
    }

    fn chosen(s: &ProxySettings, relay: &str) -> Option<String> {
        s.proxy_for(&endpoint(relay))
            .unwrap()
            .map(|(p, o)| format!("{p} {o}"))
    }

    #[test]
    fn proxy_urls_parse_as_curl_reads_them() {
        let p = ForwardProxy::parse("http://proxy.corp:3128").unwrap();
        assert_eq!(
            (p.endpoint().host.as_str(), p.endpoint().port),
            ("proxy.corp", 3128)
        );
        assert!(p.authorization().is_none());
        // No scheme means http://, no port 1080; a path is ignored.
        let p = ForwardProxy::parse("proxy.corp").unwrap();
        assert_eq!(p.endpoint().port, DEFAULT_PROXY_PORT);
        assert_eq!(p.to_string(), "http://proxy.corp:1080");
        let p = ForwardProxy::parse("HTTP://[::1]/ignored").unwrap();
        assert_eq!(
            (p.endpoint().host.as_str(), p.endpoint().port),
            ("::1", 1080)
        );
        let p = ForwardProxy::parse("http://[::1]:8080").unwrap();
        assert_eq!(p.endpoint().port, 8080);
        for (url, want) in [
            ("https://proxy:443", ProxyUrlError::Scheme("https".into())),
            (
                "socks5h://proxy:1080",
                ProxyUrlError::Scheme("socks5h".into()),
            ),
            ("http://", ProxyUrlError::Authority(UrlError::NoHost)),
            (
                "http://proxy:port",
                ProxyUrlError::Authority(UrlError::Invalid),
            ),
            ("http://a%zz:b@proxy", ProxyUrlError::Percent),
            ("http://a:b%2@proxy", ProxyUrlError::Percent),
            ("http://a%3Ab:c@proxy", ProxyUrlError::Credentials),
            ("http://a:b%0A@proxy", ProxyUrlError::Credentials),
        ] {
            assert_eq!(ForwardProxy::parse(url).unwrap_err(), want, "{url}");
        }
    }

    /// RFC 7617 §2's example, and percent-decoding of both parts (a `:` in the password is
    /// fine; the first `:` of the pair splits user from password).
    #[test]
    fn credentials_are_basic_percent_decoded_and_never_shown() {
        let p = ForwardProxy::parse("http://Aladdin:open%20sesame@proxy:3128").unwrap();
        let auth = p.authorization().unwrap();
        assert_eq!(auth, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(auth.is_sensitive());
        assert_eq!(p.user(), Some("Aladdin"));
        let p = ForwardProxy::parse("http://al%40ice:s%3Acret:x@proxy:3128").unwrap();
        // "al@ice:s:cret:x"
        assert_eq!(p.authorization().unwrap(), "Basic YWxAaWNlOnM6Y3JldDp4");
        assert_eq!(p.to_string(), "http://al@ice@proxy:3128");
        assert!(!format!("{p:?}").contains("cret"));
        // A user without a password sends an empty one, as curl does.
        let p = ForwardProxy::parse("http://bob@proxy:3128").unwrap();
        assert_eq!(p.authorization().unwrap(), "Basic Ym9iOg==");
    }

    #[test]
    fn bad_urls_are_reported_without_their_password() {
        let e = ProxySettings::from_url("socks5://u:hunter2@proxy:1080").unwrap_err();
        assert_eq!(e.url, "socks5://u:***@proxy:1080");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!(redacted("u:p@h/x@y"), "u:***@h/x@y");
        assert_eq!(redacted("http://u@h"), "http://u@h");
        assert_eq!(redacted("h:1"), "h:1");
    }

    /// curl's variables, in curl's order; `HTTP_PROXY` in upper case is never read.
    #[test]
    fn environment_is_read_as_curl_reads_it() {
        let s = ProxySettings::from_vars(vars(&[
            ("HTTP_PROXY", "http://upper:1"),
            ("HTTPS_PROXY", "http://secure-upper:2"),
            ("ALL_PROXY", "http://all-upper:3"),
        ]));
        assert_eq!(
            chosen(&s, "http://relay/x").as_deref(),
            Some("http://all-upper:3 from ALL_PROXY")
        );
        assert_eq!(
            chosen(&s, "https://relay/x").as_deref(),
            Some("http://secure-upper:2 from HTTPS_PROXY")
        );
        let s = ProxySettings::from_vars(vars(&[
            ("http_proxy", "http://lower:1"),
            ("https_proxy", "http://secure:2"),
            ("HTTPS_PROXY", "http://secure-upper:2"),
            ("all_proxy", "http://all:3"),
            ("ALL_PROXY", "http://all-upper:3"),
        ]));
        assert_eq!(
            chosen(&s, "http://relay/x").as_deref(),
            Some("http://lower:1 from http_proxy")
        );
        assert_eq!(
            chosen(&s, "https://relay/x").as_deref(),
            Some("http://secure:2 from https_proxy")
        );
        // Only HTTP_PROXY: an http:// relay is reached directly.
        let s = ProxySettings::from_vars(vars(&[("HTTP_PROXY", "http://upper:1")]));
        assert_eq!(chosen(&s, "http://relay/x"), None);
        // An empty variable is not set: the next one is read.
        let s =
            ProxySettings::from_vars(vars(&[("https_proxy", ""), ("all_proxy", "http://all:3")]));
        assert_eq!(
            chosen(&s, "https://relay/x").as_deref(),
            Some("http://all:3 from all_proxy")
        );
        assert_eq!(ProxySettings::from_vars(vars(&[])), ProxySettings::direct());
    }

    /// A bad variable matters only for the scheme that reads it.
    #[test]
    fn a_bad_variable_is_reported_for_its_scheme_only() {
        let s = ProxySettings::from_vars(vars(&[
            ("all_proxy", "socks5://p:1080"),
            ("https_proxy", "http://good:3128"),
        ]));
        assert!(chosen(&s, "https://relay/").is_some());
        let e = s.proxy_for(&endpoint("http://relay/")).unwrap_err();
        assert_eq!(e.origin, ProxyOrigin::Env("all_proxy"));
        assert_eq!(
            e.to_string(),
            "proxy URL \"socks5://p:1080\" (from all_proxy): socks5:// proxies are not \
             supported; use an http:// proxy (one that answers CONNECT)"
        );
    }

    #[test]
    fn no_proxy_applies_to_a_given_proxy_and_comes_from_the_environment() {
        let env = vars(&[("no_proxy", "relay.corp"), ("NO_PROXY", "ignored")]);
        let s = ProxySettings::from_url("http://p:1")
            .unwrap()
            .no_proxy(NoProxy::from_vars(&env));
        assert_eq!(chosen(&s, "http://relay.corp/"), None);
        assert!(chosen(&s, "http://ignored/").is_some());
        let s = ProxySettings::from_vars(vars(&[
            ("https_proxy", "http://p:1"),
            ("NO_PROXY", "relay.corp"),
        ]));
        assert_eq!(chosen(&s, "https://www.relay.corp/"), None);
        // An empty list given explicitly proxies everything.
        let s = s.no_proxy(NoProxy::parse(""));
        assert!(chosen(&s, "https://www.relay.corp/").is_some());
    }

    /// curl's `Curl_check_noproxy` cases, and CIDR as curl has had it since 7.86.
    #[test]
    fn no_proxy_matches_as_curl_does() {
        let table: &[(&str, &str, bool)] = &[
            ("*", "anything.example", true),
            (" * ", "10.1.2.3", true),
            ("a,*", "other", false),
            ("", "example.com", false),
            ("example.com", "example.com", true),
            ("example.com", "EXAMPLE.com", true),
            ("example.com", "www.example.com", true),
            ("example.com", "notexample.com", false),
            ("example.com", "example.com.org", false),
            (".example.com", "example.com", true),
            (".example.com", "www.example.com", true),
            ("example.com.", "www.example.com.", true),
            ("*.example.com", "www.example.com", false),
            ("example.com:8080", "example.com", false),
            ("other, example.com", "example.com", true),
            ("other\texample.com", "example.com", true),
            ("other,,example.com", "example.com", true),
            ("localhost", "localhost", true),
            ("localhost", "127.0.0.1", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("127.0.0.0/8", "127.9.9.9", true),
            ("127.0.0.0/8", "128.0.0.1", false),
            ("192.168.0.0/16", "192.168.77.1", true),
            ("10.0.0.0/33", "10.0.0.0", false),
            ("10.0.0.1/0", "10.0.0.1", true),
            ("10.0.0.1/0", "10.0.0.2", false),
            ("10.0.0.0/x", "10.0.0.0", false),
            ("127.0.0.1", "localhost", false),
            ("::1", "::1", true),
            ("::1", "[::1]", true),
            ("[::1]", "::1", true),
            ("fd00::/8", "fd12:3456::1", true),
            ("fd00::/8", "fe80::1", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("::ffff:0:0/96", "127.0.0.1", false),
        ];
        for &(list, host, want) in table {
            assert_eq!(
                NoProxy::parse(list).matches(host),
                want,
                "{list:?} vs {host}"
            );
        }
    }

    #[test]
    fn refusals_say_whether_credentials_were_sent() {
        let refused = |user: Option<&str>, status| ProxyError::Refused {
            proxy: "http://p:3128".into(),
            target: "relay:443".into(),
            status,
            user: user.map(str::to_string),
            challenge: Some("Basic realm=\"corp\"".into()),
        };
        let e = refused(None, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert!(e.is_proxy_auth());
        assert_eq!(
            e.to_string(),
            "the proxy http://p:3128 refused a tunnel to relay:443: 407 Proxy Authentication \
             Required (no credentials were sent; it asks for Basic realm=\"corp\")"
        );
        let e = refused(Some("alice"), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert!(
            e.to_string()
                .contains("rejected the credentials sent for user \"alice\"")
        );
        let e = refused(Some("alice"), StatusCode::FORBIDDEN);
        assert!(!e.is_proxy_auth());
        assert!(e.to_string().ends_with("relay:443: 403 Forbidden"), "{e}");
    }
}
