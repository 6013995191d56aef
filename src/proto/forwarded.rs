//! The fields a forwarding hop adds about the client: `Forwarded` (RFC 7239) and the de facto
//! `X-Forwarded-For`, `-Host`, `-Proto` and `-Prefix`.
//!
//! Pure functions of what the hop knows (the client's address, the scheme it came in on, the
//! authority it asked for, the path prefix the hop removed), so the rules are unit-tested here;
//! the relay's engine route asks [`Hop::drops`] which of the client's fields to leave out and
//! lets [`Hop::write`] write this hop's.

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::header::{HeaderName, HeaderValue};

use super::head::Fields;

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
#[cfg(test)]
pub fn element(client: IpAddr, proto: &str, host: Option<&HeaderValue>) -> String {
    let mut out = BytesMut::new();
    put_element(
        &mut out,
        &IpText::of(client),
        proto,
        host.and_then(|h| h.to_str().ok()),
    );
    String::from_utf8_lossy(&out).into_owned()
}

fn put_element(out: &mut BytesMut, client: &IpText, proto: &str, host: Option<&str>) {
    if client.v6 {
        out.put_slice(b"for=\"[");
        out.put_slice(client.as_bytes());
        out.put_slice(b"]\"");
    } else {
        out.put_slice(b"for=");
        out.put_slice(client.as_bytes());
    }
    out.put_slice(b";proto=");
    out.put_slice(proto.as_bytes());
    if let Some(h) = host
        && !h.bytes().any(|b| b == b'"' || b == b'\\')
    {
        out.put_slice(b";host=\"");
        out.put_slice(h.as_bytes());
        out.put_u8(b'"');
    }
}

/// An address as text, made once per request on the stack and copied into both fields that
/// carry it. An IPv4 address is written octet by octet: `Display` cost as much as the rest of
/// the request's fields together, and writing the octets into the head twice, piece by piece,
/// 3% of the relay's instructions (both measured with callgrind, BENCHMARKS.md).
struct IpText {
    /// 45 bytes, POSIX's `INET6_ADDRSTRLEN` without the NUL: more than any IPv6 text.
    buf: [u8; 45],
    len: usize,
    v6: bool,
}

impl IpText {
    fn of(ip: IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 45],
            len: 0,
            v6: ip.is_ipv6(),
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut c = std::io::Cursor::new(&mut t.buf[..]);
                // 45 bytes hold every IPv6 text.
                let _ = write!(c, "{v6}");
                t.len = usize::try_from(c.position()).unwrap_or(0);
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// What a forwarding hop knows about a request it passes on.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// `http` or `https`, as the client came in.
    pub proto: &'static str,
    /// The authority the request was routed by (its `Host`, or its absolute-form target's).
    pub host: Option<&'a str>,
    /// The path prefix this hop removed.
    pub prefix: Option<&'a str>,
    /// Keep (append to) the client's own forwarding fields: the client is a trusted proxy.
    pub trust: bool,
}

impl Hop<'_> {
    /// Whether the client's field `name` is left out of the request sent on: [`Hop::write`]
    /// writes this hop's in its place.
    ///
    /// Fields the client sent are dropped, unless `trust` (the client is itself a trusted
    /// proxy): then this hop's `Forwarded` element and address are appended to the client's
    /// first `Forwarded` and `X-Forwarded-For` lines (`, `-separated), and its
    /// `X-Forwarded-Host` and `-Proto` are kept. `X-Forwarded-Prefix` is this hop's prefix when
    /// it removed one.
    pub fn drops(&self, name: &str) -> bool {
        let is = |n: &HeaderName| name.eq_ignore_ascii_case(n.as_str());
        if name.eq_ignore_ascii_case("forwarded") || is(&X_FORWARDED_FOR) {
            return true;
        }
        if is(&X_FORWARDED_HOST) || is(&X_FORWARDED_PROTO) {
            return !self.trust;
        }
        is(&X_FORWARDED_PREFIX) && (!self.trust || self.prefix.is_some())
    }

    /// Write this hop's forwarding fields, each ending in CRLF; `sent` are the client's fields
    /// (see [`Hop::drops`] for what is kept of them).
    pub fn write(&self, sent: Fields<'_, '_>, out: &mut BytesMut) {
        // The client's first line, when it is trusted and the line is plain visible text.
        // (Trust is checked first: an untrusted hop need not scan the fields at all.)
        let prev = |name: &str| {
            if !self.trust {
                return None;
            }
            sent.get_all(name)
                .next()
                .filter(|v| v.iter().all(|&b| b == b'\t' || (32..127).contains(&b)))
        };
        let put_prev = |out: &mut BytesMut, name: &str| {
            if let Some(p) = prev(name) {
                out.put_slice(p);
                out.put_slice(b", ");
            }
        };
        out.put_slice(b"forwarded: ");
        put_prev(out, "forwarded");
        let client = IpText::of(self.client);
        put_element(out, &client, self.proto, self.host);
        out.put_slice(b"\r\nx-forwarded-for: ");
        put_prev(out, X_FORWARDED_FOR.as_str());
        out.put_slice(client.as_bytes());
        out.put_slice(b"\r\n");
        let has = |n: &HeaderName| sent.get_all(n.as_str()).next().is_some();
        if let Some(h) = self.host
            && (!self.trust || !has(&X_FORWARDED_HOST))
        {
            put_field(out, &X_FORWARDED_HOST, h.as_bytes());
        }
        if !self.trust || !has(&X_FORWARDED_PROTO) {
            put_field(out, &X_FORWARDED_PROTO, self.proto.as_bytes());
        }
        if let Some(p) = self.prefix
            && HeaderValue::from_str(p).is_ok()
        {
            put_field(out, &X_FORWARDED_PREFIX, p.as_bytes());
        }
    }
}

fn put_field(out: &mut BytesMut, name: &HeaderName, value: &[u8]) {
    out.put_slice(name.as_str().as_bytes());
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.12.3",
            "192.168.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.1.2.3",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "1:2:3:4:5:6:7:8",
            "9.99.100.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }
    use crate::limits::Limits;
    use crate::proto::head::{Request, Slots};
    use http::HeaderMap;
    use http::header;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn host(h: &'static str) -> HeaderValue {
        HeaderValue::from_static(h)
    }

    /// Fields a client sent, claiming to be forwarded already.
    const SPOOFED: &str = "Forwarded: for=6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n\
        X-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Prefix: /evil\r\n";

    /// The fields sent on for a request with `sent` fields: the client's that `hop` keeps, then
    /// the ones it writes.
    fn forward(sent: &str, hop: Hop<'_>) -> HeaderMap {
        let raw = format!("GET / HTTP/1.1\r\n{sent}\r\n");
        let mut slots = Slots::new();
        let req = Request::parse(raw.as_bytes(), &mut slots, &Limits::default())
            .unwrap()
            .unwrap();
        let mut out = BytesMut::from("GET / HTTP/1.1\r\n");
        for (name, value) in req.fields.iter() {
            if !hop.drops(name) {
                put_field(
                    &mut out,
                    &HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value,
                );
            }
        }
        hop.write(req.fields, &mut out);
        out.put_slice(b"\r\n");
        let mut slots = Slots::new();
        Request::parse(&out, &mut slots, &Limits::default())
            .unwrap()
            .unwrap()
            .fields
            .to_header_map()
            .unwrap()
    }

    fn hop<'a>(
        client: &str,
        proto: &'static str,
        host: Option<&'a str>,
        prefix: Option<&'a str>,
        trust: bool,
    ) -> Hop<'a> {
        Hop {
            client: ip(client),
            proto,
            host,
            prefix,
            trust,
        }
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
        let h = forward(
            SPOOFED,
            hop("127.0.0.1", "http", Some("demo.localhost"), None, false),
        );
        assert_eq!(
            h[header::FORWARDED],
            "for=127.0.0.1;proto=http;host=\"demo.localhost\""
        );
        assert_eq!(h[X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(h[X_FORWARDED_HOST], "demo.localhost");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert!(!h.contains_key(X_FORWARDED_PREFIX));
        for name in [header::FORWARDED, X_FORWARDED_FOR, X_FORWARDED_HOST] {
            assert_eq!(h.get_all(&name).iter().count(), 1, "{name}");
        }

        let h = forward(SPOOFED, hop("::1", "https", None, Some("/demo"), false));
        assert_eq!(h[header::FORWARDED], "for=\"[::1]\";proto=https");
        assert_eq!(h[X_FORWARDED_FOR], "::1");
        assert!(!h.contains_key(X_FORWARDED_HOST));
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_PREFIX], "/demo");
    }

    #[test]
    fn trusted_client_fields_are_appended_to() {
        let h = forward(
            SPOOFED,
            hop(
                "10.0.0.2",
                "http",
                Some("demo.localhost"),
                Some("/demo"),
                true,
            ),
        );
        assert_eq!(
            h[header::FORWARDED],
            "for=6.6.6.6, for=10.0.0.2;proto=http;host=\"demo.localhost\""
        );
        assert_eq!(h[X_FORWARDED_FOR], "6.6.6.6, 10.0.0.2");
        assert_eq!(h[X_FORWARDED_HOST], "evil");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_PREFIX], "/demo");
        assert_eq!(h.get_all(X_FORWARDED_PREFIX).iter().count(), 1);

        // Nothing sent: a trusted hop sets the fields as an untrusted one would.
        let h = forward(
            "",
            hop("10.0.0.2", "http", Some("demo.localhost"), None, true),
        );
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.2");
        assert_eq!(h[X_FORWARDED_HOST], "demo.localhost");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
    }
}
