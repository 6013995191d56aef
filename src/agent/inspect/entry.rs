//! One recorded exchange, and the ways it is shown: ngrok's captured-request JSON, a HAR
//! entry, a curl command line.
//!
//! Heads are kept as they came (a replay sends them again); what is shown goes through
//! [`redact`] first unless the inspector was told not to, raw bytes included.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};

use super::InspectConfig;
use crate::h1::tap::{Capture, Kept};
use crate::proto::forwarded::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PREFIX, X_FORWARDED_PROTO,
};
use crate::proto::hop::is_hop_by_hop;

/// Fields whose values are shown as `[redacted]` by default (credentials and sessions).
const REDACTED: [&str; 4] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];

/// What a redacted value is shown as.
const REDACTION: &str = "[redacted]";

use crate::proto::forwarded::QUEUE_WAIT_FIELD;

/// Most fields parsed from a recorded head (the engine's own cap is lower).
const MAX_FIELDS: usize = 256;

/// One recorded exchange.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: String,
    /// The entry this one replays, if it is a replay.
    pub(crate) replay_of: Option<String>,
    pub(crate) start: SystemTime,
    pub(crate) request: Head,
    pub(crate) request_body: Kept,
    /// `None` when no response head came (the exchange failed first).
    pub(crate) response: Option<Head>,
    pub(crate) response_body: Kept,
    pub(crate) timing: Timing,
    pub(crate) failed: Option<String>,
    /// The response head has gone and its body has not ended yet: the entry is replaced when it
    /// does (its timing and response body are so far).
    pub(crate) in_progress: bool,
}

/// A parsed head, and its bytes as they came.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) raw: Vec<u8>,
    /// The method, or for a response its status code as text.
    pub(crate) first: String,
    /// The target, or for a response its reason phrase.
    pub(crate) second: String,
    pub(crate) version: &'static str,
    pub(crate) fields: Vec<(String, String)>,
}

/// How long each part took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// At the relay, from the request's arrival to its being written to the agent (only when
    /// the relay reports it).
    pub(crate) relay_queue: Option<Duration>,
    /// From the request head's arrival to its being handed to a connected upstream (the
    /// connect, when one was needed).
    pub(crate) connect: Option<Duration>,
    /// From the request handed to the upstream to its response head.
    pub(crate) upstream: Option<Duration>,
    /// From the request head's arrival to the end of the response.
    pub(crate) total: Duration,
}

impl Entry {
    /// The entry of `c`, whose response head went at `answered` (the exchange's record).
    pub(crate) fn new(
        id: String,
        replay_of: Option<String>,
        c: Capture,
        answered: Option<tokio::time::Instant>,
        in_progress: bool,
    ) -> Self {
        let now = tokio::time::Instant::now();
        let request = Head::request(&c.request_head);
        let relay_queue = request
            .field(QUEUE_WAIT_FIELD)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_micros);
        let timing = Timing {
            relay_queue,
            connect: c.sent.map(|s| s - c.started),
            upstream: c
                .sent
                .zip(answered)
                .map(|(s, a)| a.saturating_duration_since(s)),
            total: now - c.started,
        };
        let response = (!c.response_head.is_empty()).then(|| Head::response(&c.response_head));
        Entry {
            id,
            replay_of,
            start: c.started_wall,
            request,
            request_body: c.request_body,
            response,
            response_body: c.response_body,
            timing,
            failed: c.failed,
            in_progress,
        }
    }

    /// What the entry holds in memory, as the ring counts it.
    pub(crate) fn size(&self) -> usize {
        self.request.raw.len()
            + self.request_body.bytes.len()
            + self.response.as_ref().map_or(0, |h| h.raw.len())
            + self.response_body.bytes.len()
    }

    /// Drop the kept bodies (the ring's byte bound, for an entry too large alone).
    pub(crate) fn drop_bodies(&mut self) {
        self.request_body.bytes = Vec::new();
        self.response_body.bytes = Vec::new();
    }

    /// The address of the public client, as the relay reported it (`X-Forwarded-For`'s first).
    fn remote_addr(&self) -> String {
        self.request
            .field("x-forwarded-for")
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    }

    /// ngrok's captured-request object, with this inspector's additions (`replay_of`, bodies,
    /// `timing`, `curl`).
    pub(crate) fn to_json(&self, shown: &InspectConfig) -> Value {
        let redact_on = shown.redact;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let raw = |head: &Head, body: &Kept| {
            let mut bytes = shown_head(&head.raw, redact_on);
            bytes.extend_from_slice(&body.bytes);
            b64(&bytes)
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let response = self.response.as_ref().map(|h| {
            json!({
                "status": format!("{} {}", h.first, h.second),
                "status_code": h.first.parse::<u16>().unwrap_or(0),
                "proto": h.version,
                "headers": headers_json(&h.fields, redact_on),
                "raw": raw(h, &self.response_body),
                "body": body_json(&self.response_body),
            })
        });
        json!({
            "uri": format!("/api/requests/http/{}", self.id),
            "id": self.id,
            "tunnel_name": "ptth",
            "remote_addr": self.remote_addr(),
            "start": rfc3339(self.start),
            // Nanoseconds, as ngrok's example (3893202 for a 3.9 ms exchange).
            "duration": u64::try_from(self.timing.total.as_nanos()).unwrap_or(u64::MAX),
            "request": {
                "method": self.request.first,
                "proto": self.request.version,
                "headers": headers_json(&self.request.fields, redact_on),
                "uri": self.request.second,
                "raw": raw(&self.request, &self.request_body),
                "body": body_json(&self.request_body),
            },
            "response": response,
            "replay_of": self.replay_of,
            "in_progress": self.in_progress,
            "error": self.failed,
            "timing": {
                "relay_queue_ms": self.timing.relay_queue.map(ms),
                "connect_ms": self.timing.connect.map(ms),
                "upstream_ms": self.timing.upstream.map(ms),
                "total_ms": ms(self.timing.total),
            },
            "curl": self.curl(shown),
        })
    }

    /// The request as a curl command line against the public URL it came to
    /// ([`InspectConfig::public_url`]): what the client sent, without the fields the relay and
    /// curl write themselves (`Host`, the framing, hop-by-hop and forwarding fields).
    pub(crate) fn curl(&self, shown: &InspectConfig) -> String {
        let mut cmd = format!("curl -X {}", shell_quote(&self.request.first));
        for (name, value) in shown_fields(&self.request.fields, shown.redact) {
            if is_relay_field(&name) || is_curls_field(&name) {
                continue;
            }
            cmd.push_str(" -H ");
            cmd.push_str(&shell_quote(&format!("{name}: {value}")));
        }
        if !self.request_body.bytes.is_empty() {
            cmd.push_str(" --data-binary ");
            cmd.push_str(&shell_quote(&String::from_utf8_lossy(
                &self.request_body.bytes,
            )));
        }
        cmd.push(' ');
        cmd.push_str(&shell_quote(&self.public_url(shown)));
        cmd
    }

    /// The URL the public client asked for: the public URL (which names the service) with the
    /// request's path and query under it.
    pub(crate) fn public_url(&self, shown: &InspectConfig) -> String {
        let base = shown.public_url.as_deref().unwrap_or("http://localhost/");
        let base = base.trim_end_matches('/');
        let target = &self.request.second;
        if target.starts_with('/') {
            format!("{base}{target}")
        } else {
            // `*` or an absolute form: the service's root.
            format!("{base}/")
        }
    }

    /// One HAR 1.2 entry.
    pub(crate) fn to_har(&self, shown: &InspectConfig) -> Value {
        let redact_on = shown.redact;
        let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
        let pairs = |fields: &[(String, String)]| {
            shown_fields(fields, redact_on)
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect::<Vec<_>>()
        };
        let response = match &self.response {
            Some(h) => json!({
                "status": h.first.parse::<u16>().unwrap_or(0),
                "statusText": h.second,
                "httpVersion": h.version,
                "cookies": [],
                "headers": pairs(&h.fields),
                "content": {
                    "size": self.response_body.total,
                    "mimeType": h.field("content-type").unwrap_or(""),
                    "text": String::from_utf8_lossy(&self.response_body.bytes),
                },
                "redirectURL": h.field("location").unwrap_or(""),
                "headersSize": h.raw.len(),
                "bodySize": self.response_body.total,
            }),
            None => json!({
                "status": 0, "statusText": "", "httpVersion": "", "cookies": [], "headers": [],
                "content": {"size": 0, "mimeType": ""}, "redirectURL": "", "headersSize": -1,
                "bodySize": -1,
            }),
        };
        let mut request = json!({
            "method": self.request.first,
            "url": self.public_url(shown),
            "httpVersion": self.request.version,
            "cookies": [],
            "headers": pairs(&self.request.fields),
            "queryString": [],
            "headersSize": self.request.raw.len(),
            "bodySize": self.request_body.total,
        });
        if self.request_body.total > 0 {
            request["postData"] = json!({
                "mimeType": self.request.field("content-type").unwrap_or(""),
                "text": String::from_utf8_lossy(&self.request_body.bytes),
            });
        }
        json!({
            "startedDateTime": rfc3339(self.start),
            "time": self.timing.total.as_secs_f64() * 1000.0,
            "request": request,
            "response": response,
            "cache": {},
            "timings": {
                "blocked": ms(self.timing.relay_queue),
                "connect": ms(self.timing.connect),
                "send": 0,
                "wait": ms(self.timing.upstream),
                "receive": ms(self.timing.connect.zip(self.timing.upstream).map(|(c, u)| {
                    self.timing.total.saturating_sub(c + u)
                })),
            },
            "comment": self.id,
        })
    }
}

/// Whether a field is one the relay adds for this hop (not part of what the client sent).
fn is_relay_field(name: &str) -> bool {
    name.eq_ignore_ascii_case(QUEUE_WAIT_FIELD)
        || name.eq_ignore_ascii_case("forwarded")
        || [
            X_FORWARDED_FOR,
            X_FORWARDED_HOST,
            X_FORWARDED_PROTO,
            X_FORWARDED_PREFIX,
        ]
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f.as_str()))
}

/// Whether curl writes a field itself: `Host` from the URL, the framing from `--data-binary`,
/// and the hop-by-hop fields of its own connection.
fn is_curls_field(name: &str) -> bool {
    ["host", "content-length", "transfer-encoding"]
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f))
        || is_hop_by_hop(name)
}

impl Head {
    fn request(raw: &[u8]) -> Head {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        let _ = req.parse(raw);
        Head {
            first: req.method.unwrap_or("").to_string(),
            second: req.path.unwrap_or("").to_string(),
            version: version(req.version),
            fields: collect(req.headers),
            raw: raw.to_vec(),
        }
    }

    fn response(raw: &[u8]) -> Head {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut res = httparse::Response::new(&mut fields);
        let _ = res.parse(raw);
        Head {
            first: res.code.map(|c| c.to_string()).unwrap_or_default(),
            second: res.reason.unwrap_or("").to_string(),
            version: version(res.version),
            fields: collect(res.headers),
            raw: raw.to_vec(),
        }
    }

    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn version(v: Option<u8>) -> &'static str {
    match v {
        Some(0) => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

fn collect(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .take_while(|h| !h.name.is_empty())
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// A field name as Go's `textproto.CanonicalMIMEHeaderKey` writes it: each word capitalised.
fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

fn is_redacted(name: &str) -> bool {
    REDACTED.iter().any(|r| name.eq_ignore_ascii_case(r))
}

/// The fields as shown: credentials redacted when `redact_on`.
fn shown_fields(
    fields: &[(String, String)],
    redact_on: bool,
) -> impl Iterator<Item = (String, String)> + '_ {
    fields.iter().map(move |(n, v)| {
        let v = if redact_on && is_redacted(n) {
            REDACTION.to_string()
        } else {
            v.clone()
        };
        (n.clone(), v)
    })
}

/// ngrok's `headers`: each name, in the canonical case ngrok's Go shows (`Content-Type`,
/// whatever case it came in), to the list of its values.
fn headers_json(fields: &[(String, String)], redact_on: bool) -> Value {
    let mut map = serde_json::Map::new();
    for (n, v) in shown_fields(fields, redact_on) {
        match map
            .entry(canonical(&n))
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(a) => a.push(Value::String(v)),
            _ => unreachable!("every value inserted is an array"),
        }
    }
    Value::Object(map)
}

/// The kept body: as text when it is UTF-8, else base64; with its whole size.
fn body_json(body: &Kept) -> Value {
    let (text, encoding) = match std::str::from_utf8(&body.bytes) {
        Ok(t) => (t.to_string(), "utf-8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&body.bytes),
            "base64",
        ),
    };
    json!({
        "size": body.total,
        "kept": body.bytes.len(),
        "truncated": body.truncated(),
        "encoding": encoding,
        "text": text,
    })
}

/// A head's bytes as shown: each redacted field's value replaced, line by line.
pub(crate) fn shown_head(raw: &[u8], redact_on: bool) -> Vec<u8> {
    if !redact_on {
        return raw.to_vec();
    }
    let mut out = Vec::with_capacity(raw.len());
    for line in raw.split_inclusive(|&b| b == b'\n') {
        match line.iter().position(|&b| b == b':') {
            Some(colon)
                if std::str::from_utf8(&line[..colon])
                    .is_ok_and(|name| is_redacted(name.trim())) =>
            {
                out.extend_from_slice(&line[..colon]);
                out.extend_from_slice(b": ");
                out.extend_from_slice(REDACTION.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            _ => out.extend_from_slice(line),
        }
    }
    out
}

/// `s` in single quotes for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// RFC 3339 in UTC with milliseconds, from the civil-from-days algorithm (H. Hinnant): a dozen
/// lines instead of a date crate in the library.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn credentials_are_redacted_in_raw_heads() {
        let raw = b"GET / HTTP/1.1\r\nAuthorization: Bearer s3cret\r\ncookie: a=b\r\nX: y\r\n\r\n";
        let shown = String::from_utf8(shown_head(raw, true)).unwrap();
        assert_eq!(
            shown,
            "GET / HTTP/1.1\r\nAuthorization: [redacted]\r\ncookie: [redacted]\r\nX: y\r\n\r\n"
        );
        assert_eq!(shown_head(raw, false), raw);
    }

    #[test]
    fn names_are_shown_in_gos_canonical_case() {
        assert_eq!(canonical("content-type"), "Content-Type");
        assert_eq!(canonical("X-FORWARDED-FOR"), "X-Forwarded-For");
    }

    #[test]
    fn urls_are_the_public_ones_in_path_and_host_mode() {
        let head = b"GET /a/b?c=1 HTTP/1.1\r\nHost: relay:8080\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n";
        let e = Entry::new("1".into(), None, Capture::new(head, 0), None, false);
        let shown = |public_url: Option<&str>| InspectConfig {
            public_url: public_url.map(str::to_string),
            ..InspectConfig::default()
        };
        let path_mode = shown(Some("http://relay:8080/app/"));
        assert_eq!(e.public_url(&path_mode), "http://relay:8080/app/a/b?c=1");
        let host_mode = shown(Some("https://app.relay.example/"));
        assert_eq!(
            e.public_url(&host_mode),
            "https://app.relay.example/a/b?c=1"
        );
        assert_eq!(e.public_url(&shown(None)), "http://localhost/a/b?c=1");
        assert_eq!(
            e.curl(&host_mode),
            "curl -X 'GET' 'https://app.relay.example/a/b?c=1'"
        );
    }

    #[test]
    fn curl_is_quoted_for_a_shell() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
