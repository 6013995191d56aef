//! The fields a forwarding hop adds about the client: `Forwarded` (RFC 7239) and the de facto
//! `X-Forwarded-For`, `-Host`, `-Proto` and `-Prefix`.
//!
//! Pure functions of what the hop knows (the client's address, the scheme it came in on, the
//! authority it asked for, the path prefix the hop removed), so the rules are unit-tested here
//! and the relay only calls [`request_head`].

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version, request};

use super::hop::{Keep, strip_hop_by_hop};

/// `X-Forwarded-For`: the client's address.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Host`: the authority the client asked for.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Proto`: `http` or `https`, as the client came in.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Prefix`: the path prefix the hop removed (`/NAME` in the relay's path mode).
pub const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// `PTTH-Timing` on an agent's upgrade request: what timing it asks the relay to report on the
/// requests it forwards down that connection (decision D66). [`TIMING_QUEUE_WAIT`] is the one
/// value.
pub const TIMING_FIELD: &str = "ptth-timing";
/// `PTTH-Timing: queue-wait`: add [`QUEUE_WAIT_FIELD`] to each forwarded request.
pub const TIMING_QUEUE_WAIT: &str = "queue-wait";
/// `PTTH-Queue-Wait: <microseconds>`, added by the relay to a forwarded request when the agent
/// asked for it: how long the request waited at the relay, from its head's arrival to its
/// being written to the agent (decision D66). The agent drops it before the upstream.
pub const QUEUE_WAIT_FIELD: &str = "ptth-queue-wait";

/// This hop's `Forwarded` element (RFC 7239 §4): `for=<client>;proto=<proto>`, then
/// `;host="<host>"` when there is one.
///
/// The node is the address alone, no port (§6: the port is optional). An IPv6 address is put in
/// brackets and, because `[`, `:` and `]` are not token characters, in quotes (§6, §4:
/// `for="[2001:db8::1]"`). `host` is always quoted; a host with a `"` or `\` would need
/// escaping and is left out instead (`Host` values never hold them: RFC 9112 §3.2).
pub fn element(client: IpAddr, proto: &str, host: Option<&HeaderValue>) -> String {
    let node = if client.is_ipv6() {
        format!("\"[{client}]\"")
    } else {
        client.to_string()
    };
    let mut fwd = format!("for={node};proto={proto}");
    if let Some(h) = host.and_then(|h| h.to_str().ok())
        && !h.contains(['"', '\\'])
    {
        fwd.push_str(&format!(";host=\"{h}\""));
    }
    fwd
}

/// Set `Forwarded` and `X-Forwarded-*` for a request from `client` that came in on `proto`
/// (`http`/`https`) for `host`, with `prefix` removed from its path.
///
/// Fields the client sent are dropped, unless `trust` (the client is itself a trusted proxy):
/// then this hop's `Forwarded` element and address are appended to the first `Forwarded` and
/// `X-Forwarded-For` lines (`, `-separated), and its `X-Forwarded-Host` and `-Proto` are kept.
/// `X-Forwarded-Prefix` is this hop's prefix when it removed one.
pub fn set(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
    prefix: Option<&str>,
    trust: bool,
) {
    let append = |headers: &mut HeaderMap, name: HeaderName, value: String| {
        let prev = if trust {
            headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        } else {
            None
        };
        let v = match prev {
            Some(p) => format!("{p}, {value}"),
            None => value,
        };
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(name, v);
        }
    };
    append(headers, header::FORWARDED, element(client, proto, host));
    append(headers, X_FORWARDED_FOR, client.to_string());
    if !trust {
        headers.remove(X_FORWARDED_HOST);
        headers.remove(X_FORWARDED_PROTO);
        headers.remove(X_FORWARDED_PREFIX);
    }
    if let Some(h) = host
        && (!trust || !headers.contains_key(X_FORWARDED_HOST))
    {
        headers.insert(X_FORWARDED_HOST, h.clone());
    }
    if !trust || !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(p) = prefix.and_then(|p| HeaderValue::from_str(p).ok()) {
        headers.insert(X_FORWARDED_PREFIX, p);
    }
}

/// What a forwarding hop knows about a request it passes on.
#[derive(Debug, Clone)]
pub struct Hop<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// `http` or `https`, as the client came in.
    pub proto: &'static str,
    /// The authority the request was routed by (its `Host`, or its absolute-form target's).
    pub host: Option<&'a HeaderValue>,
    /// The path prefix this hop removed.
    pub prefix: Option<&'a str>,
    /// Keep (append to) the client's own forwarding fields: the client is a trusted proxy.
    pub trust: bool,
    /// The target to send, in origin form.
    pub target: Uri,
    /// The hop-by-hop fields passed on on purpose.
    pub keep: Keep,
}

/// Rewrite a request head for the next hop: hop-by-hop fields stripped, `Forwarded` and
/// `X-Forwarded-*` set ([`set`]), the target in origin form and HTTP/1.1.
///
/// A request that came in absolute form is sent with the authority it was routed by as its
/// `Host` (RFC 9112 §3.2.2: that authority wins over any `Host` sent), so the next hop sees what
/// this one saw. An expectation in an HTTP/1.0 request is dropped (RFC 9110 §10.1.1: it is
/// ignored, and the body is on its way without a `100`).
pub fn request_head(parts: &mut request::Parts, hop: Hop<'_>) {
    let absolute = parts.uri.authority().is_some();
    if parts.version == Version::HTTP_10 {
        parts.headers.remove(header::EXPECT);
    }
    strip_hop_by_hop(&mut parts.headers, hop.keep);
    set(
        &mut parts.headers,
        hop.client,
        hop.proto,
        hop.host,
        hop.prefix,
        hop.trust,
    );
    if absolute && let Some(h) = hop.host {
        parts.headers.insert(header::HOST, h.clone());
    }
    parts.uri = hop.target;
    parts.version = Version::HTTP_11;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn host(h: &'static str) -> HeaderValue {
        HeaderValue::from_static(h)
    }

    /// Headers a client sent, claiming to be forwarded already.
    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, host("for=6.6.6.6"));
        h.insert(X_FORWARDED_FOR, host("6.6.6.6"));
        h.insert(X_FORWARDED_HOST, host("evil"));
        h.insert(X_FORWARDED_PROTO, host("https"));
        h.insert(X_FORWARDED_PREFIX, host("/evil"));
        h
    }

    #[test]
    fn elements_quote_ipv6_and_the_host_and_carry_no_port() {
        let h = host("demo.localhost:8080");
        assert_eq!(
            element(ip("192.0.2.1"), "http", Some(&h)),
            "for=192.0.2.1;proto=http;host=\"demo.localhost:8080\""
        );
        assert_eq!(
            element(ip("2001:db8::1"), "https", None),
            "for=\"[2001:db8::1]\";proto=https"
        );
        assert_eq!(
            element(ip("::ffff:192.0.2.1"), "http", Some(&host("[::1]:80"))),
            "for=\"[::ffff:192.0.2.1]\";proto=http;host=\"[::1]:80\""
        );
        let odd = HeaderValue::from_static("a\"b");
        assert_eq!(
            element(ip("192.0.2.1"), "http", Some(&odd)),
            "for=192.0.2.1;proto=http"
        );
    }

    #[test]
    fn untrusted_client_fields_are_replaced() {
        let mut h = spoofed();
        let name = host("demo.localhost");
        set(&mut h, ip("127.0.0.1"), "http", Some(&name), None, false);
        assert_eq!(
            h[header::FORWARDED],
            "for=127.0.0.1;proto=http;host=\"demo.localhost\""
        );
        assert_eq!(h[X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(h[X_FORWARDED_HOST], "demo.localhost");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert!(!h.contains_key(X_FORWARDED_PREFIX));

        let mut h = spoofed();
        set(&mut h, ip("::1"), "https", None, Some("/demo"), false);
        assert_eq!(h[header::FORWARDED], "for=\"[::1]\";proto=https");
        assert_eq!(h[X_FORWARDED_FOR], "::1");
        assert!(!h.contains_key(X_FORWARDED_HOST));
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_PREFIX], "/demo");
    }

    #[test]
    fn trusted_client_fields_are_appended_to() {
        let mut h = spoofed();
        let name = host("demo.localhost");
        set(
            &mut h,
            ip("10.0.0.2"),
            "http",
            Some(&name),
            Some("/demo"),
            true,
        );
        assert_eq!(
            h[header::FORWARDED],
            "for=6.6.6.6, for=10.0.0.2;proto=http;host=\"demo.localhost\""
        );
        assert_eq!(h[X_FORWARDED_FOR], "6.6.6.6, 10.0.0.2");
        assert_eq!(h[X_FORWARDED_HOST], "evil");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_PREFIX], "/demo");

        // Nothing sent: a trusted hop sets the fields as an untrusted one would.
        let mut h = HeaderMap::new();
        set(&mut h, ip("10.0.0.2"), "http", Some(&name), None, true);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.2");
        assert_eq!(h[X_FORWARDED_HOST], "demo.localhost");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
    }

    /// The head the relay sends on: target and version replaced, hop-by-hop fields gone, the
    /// routed authority as `Host` for an absolute-form request, no expectation from HTTP/1.0.
    #[test]
    fn request_heads_are_rewritten_for_the_next_hop() {
        let req = http::Request::get("http://demo.localhost/app/x?q")
            .version(Version::HTTP_10)
            .header(header::HOST, "ignored")
            .header(header::EXPECT, "100-continue")
            .header(header::CONNECTION, "x-hop")
            .header("x-hop", "1")
            .header(header::TE, "trailers")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        let name = host("demo.localhost");
        request_head(
            &mut parts,
            Hop {
                client: ip("192.0.2.7"),
                proto: "https",
                host: Some(&name),
                prefix: None,
                trust: false,
                target: Uri::from_static("/x?q"),
                keep: Keep {
                    upgrade: false,
                    te_trailers: true,
                },
            },
        );
        assert_eq!(parts.uri, "/x?q");
        assert_eq!(parts.version, Version::HTTP_11);
        let h = &parts.headers;
        assert_eq!(h[header::HOST], "demo.localhost");
        assert!(!h.contains_key(header::EXPECT));
        assert!(!h.contains_key("x-hop") && !h.contains_key(header::CONNECTION));
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(
            h[header::FORWARDED],
            "for=192.0.2.7;proto=https;host=\"demo.localhost\""
        );

        // Origin form: the client's own Host stays; HTTP/1.1 keeps its expectation.
        let req = http::Request::get("/x")
            .header(header::HOST, "demo.localhost:8080")
            .header(header::EXPECT, "100-continue")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        let routed = host("demo.localhost:8080");
        request_head(
            &mut parts,
            Hop {
                client: ip("192.0.2.7"),
                proto: "http",
                host: Some(&routed),
                prefix: None,
                trust: false,
                target: Uri::from_static("/x"),
                keep: Keep::default(),
            },
        );
        assert_eq!(parts.headers[header::HOST], "demo.localhost:8080");
        assert_eq!(parts.headers[header::EXPECT], "100-continue");
    }
}
