//! Fuzzing entry points: one function per parser that reads bytes from a peer.
//!
//! Each function takes arbitrary bytes and must never panic, hang or exhaust memory; the
//! assertions inside are invariants (round trips, split-invariance), so a failed one is a bug.
//! The targets in `fuzz/fuzz_targets/` are one-line calls into this module, and
//! `tests/fuzz_replay.rs` replays the committed seeds and regressions through the same functions
//! on stable, so every crash ever found stays covered by `cargo test`.
//!
//! Not part of the public API: compiled only with the `fuzzing` feature (which `fuzz/` and the
//! tests enable, never the binaries), hidden from the docs and free to change.
//!
//! # Stream targets
//! [`dialer_stream`] and [`listener_stream`] run a whole connection over [`FuzzIo`], an
//! in-memory stream that plays the input back as the peer's bytes, throws writes away and ends
//! with EOF. The first input byte is the control byte (see [`FuzzIo::new`] and the targets);
//! the rest is split into segments at [`SPLIT`], and no read crosses a segment boundary, so a
//! seed can say "the handshake ends here" and have the next segment read only after it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, Limited};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{HeadError, Refusal};
use crate::h1;
use crate::limits::Limits;
use crate::listener::{self, ListenerConfig, raw};
use crate::proto::alpn::AlpnId;
use crate::proto::body::{BodyDecoder, Framing};
use crate::proto::request::{self, OfferRules, UpgradeRequest};
use crate::proto::{Protocol, head, path, response, tokens};

/// Separates the segments of a stream target's input; reads never cross it.
pub const SPLIT: &[u8] = b"~~~~";

/// Most body bytes a stream target collects from one message.
const BODY_CAP: usize = 64 * 1024;

/// Longest a stream target may run. Nothing in it waits on a clock (the stream never blocks), so
/// reaching this is a hang and fails the run.
const RUN_GUARD: Duration = Duration::from_secs(10);

/// The `Limits` of the stream targets: smaller caps than the defaults (so the fuzzer reaches
/// them), and short deadlines so that a wait on a timer costs seconds, not minutes.
fn stream_limits() -> Limits {
    Limits {
        max_head_bytes: 2048,
        max_headers: 32,
        max_upgrade_body: 1024,
        max_refusal_body: 1024,
        handshake_timeout: Duration::from_secs(2),
        head_timeout: Duration::from_secs(2),
        idle_timeout: Some(Duration::from_secs(2)),
        h2: Default::default(),
        buffer_bytes: 4096,
    }
}

/// The two `Limits` the head targets parse with: the defaults, and tiny caps.
fn head_limits() -> [Limits; 2] {
    let small = Limits {
        max_head_bytes: 64,
        max_headers: 4,
        ..Limits::default()
    };
    [Limits::default(), small]
}

/// The listener rules the head targets judge with: the defaults, an AirPlay-friendly set, and
/// the defaults with `ptth` (ALPN and origin parsing).
fn offer_rules() -> [OfferRules; 3] {
    let airplay = OfferRules {
        protocols: vec![Protocol::Ptth10],
        methods: vec![Method::POST],
        allow_missing_host: true,
        ..OfferRules::default()
    };
    [
        OfferRules::default(),
        airplay,
        OfferRules::with_transposed(),
    ]
}

/// The protocol sets a dialer may offer.
const OFFERS: [&[Protocol]; 4] = [
    &[Protocol::Ptth09],
    &[Protocol::Ptth10],
    &[Protocol::Ptth09, Protocol::Ptth10],
    &[Protocol::Ptth10, Protocol::Ptth09],
];

/// The upgrade request head, as the listener reads it: parse, framing, offer check.
///
/// Invariants: a complete head re-parses alone to the same length; the borrowed scan
/// (`head::Request`, what the dialer's head clock uses) frames it as the `HeaderMap` does; an
/// accepted offer's `101` passes the dialer's own check for the same protocol; every refusal
/// the listener would send for an error parses back as a response with that status.
pub fn upgrade_request_head(data: &[u8]) {
    for limits in head_limits() {
        let mut slots = head::Slots::new();
        let scanned = head::Request::parse(data, &mut slots, &limits)
            .map(|h| h.map(|h| (h.len, h.framing())));
        let parsed = request::parse(data, &limits);
        scan_agrees(scanned, &parsed, |head| request::framing(&head.headers));
        match parsed {
            Ok(Some((head, len))) => {
                assert!(len <= data.len() && len <= limits.max_head_bytes);
                match request::parse(&data[..len], &limits) {
                    Ok(Some((_, again))) => assert_eq!(again, len),
                    other => panic!("a complete head did not re-parse alone: {other:?}"),
                }
                let _ = request::framing(&head.headers);
                let _ = request::expects_continue(&head.headers);
                for rules in offer_rules() {
                    match request::check_offer(&head, &rules) {
                        Ok(offer) => {
                            assert!(rules.protocols.contains(&offer.protocol));
                            let raw = response::encode_switching(&offer.token, offer.alpn.as_ref());
                            let (switch, n) = response::parse(&raw, &Limits::default())
                                .expect("own 101 parses")
                                .expect("own 101 is complete");
                            assert_eq!(n, raw.len());
                            assert_eq!(
                                response::check_switch(&switch, &[offer.protocol]),
                                Ok(offer.protocol)
                            );
                            alpn_terms_hold(&head, &offer, &switch);
                        }
                        Err(e) => refusal_round_trip(e.status(), &e),
                    }
                }
            }
            Ok(None) => assert!(data.len() <= limits.max_head_bytes),
            Err(e) => refusal_round_trip(e.status(), &e),
        }
    }
}

/// For an accepted `ptth` offer: the chosen ALPN identifier was offered and is one the
/// listener runs, the `101`'s `ALPN` passes the dialer's check, and every origin re-encodes to
/// a target that reads back the same.
fn alpn_terms_hold(
    head: &http::request::Parts,
    offer: &request::OfferTerms,
    switch: &response::ResponseHead,
) {
    let Some(chosen) = &offer.alpn else {
        assert!(!offer.protocol.negotiates_alpn());
        return;
    };
    let offered = crate::proto::alpn::parse(&head.headers)
        .expect("an accepted offer's ALPN parses")
        .expect("an accepted ptth offer has ALPN");
    assert!(offered.contains(chosen));
    assert_eq!(response::check_alpn(switch, &offered).as_ref(), Ok(chosen));
    for id in &offered {
        let again = AlpnId::decode(id.encode().as_bytes());
        assert_eq!(again.as_ref(), Ok(id), "ALPN encode/decode round trip");
    }
    if !offer.origins.is_empty() {
        let target = crate::proto::origin::well_known_target(&offer.origins);
        let again = crate::proto::origin::parse_well_known(&target, offer.origins.len());
        assert_eq!(
            again.as_ref(),
            Ok(&offer.origins),
            "origin target round trip"
        );
    }
}

/// What a borrowed head scan found: the head's length and its framing, or why not.
type Scanned = Result<Option<(usize, Result<Framing, HeadError>)>, HeadError>;

/// The borrowed scan of a head (its length and framing) must agree with the owned parse of the
/// same bytes: the parse is the scan plus the conversion to `http` types, which alone may fail.
fn scan_agrees<T>(
    scanned: Scanned,
    parsed: &Result<Option<(T, usize)>, HeadError>,
    framing: impl Fn(&T) -> Result<Framing, HeadError>,
) {
    match (scanned, parsed) {
        (Ok(Some((len, scan_framing))), Ok(Some((head, parsed_len)))) => {
            assert_eq!(
                len, *parsed_len,
                "the scan and the parse end the head apart"
            );
            assert_eq!(
                scan_framing,
                framing(head),
                "the scan and the HeaderMap frame apart"
            );
        }
        (Ok(None), Ok(None)) | (Ok(Some(_)), Err(_)) => {}
        (Err(scan), Err(parse)) => assert_eq!(&scan, parse),
        (scanned, _) => panic!("the scan ({scanned:?}) and the parse disagree"),
    }
}

/// The listener's refusal for `reason` must be a complete response with `status`.
fn refusal_round_trip(status: StatusCode, reason: &dyn std::fmt::Display) {
    let body = response::refusal_body(reason);
    let raw = response::encode_refusal(status, &Protocol::ALL, &HeaderMap::new(), &body);
    let (head, len) = response::parse(&raw, &Limits::default())
        .expect("own refusal parses")
        .expect("own refusal is complete");
    assert_eq!(head.status, status);
    assert_eq!(
        response::framing(&head),
        Ok(Framing::Length(body.len() as u64))
    );
    assert_eq!(&raw[len..], &body[..]);
}

/// The answer to the upgrade request, as the dialer reads it: parse, switch check, and for a
/// final answer its framing and (truncated) body, as [`crate::dialer::handshake()`] does.
/// Invariant: the borrowed scan (`head::Response`) frames a head as the `HeaderMap` does.
pub fn switching_response_head(data: &[u8]) {
    for limits in head_limits() {
        let mut slots = head::Slots::new();
        let scanned = head::Response::parse(data, &mut slots, &limits)
            .map(|h| h.map(|h| (h.len, h.framing())));
        let parsed = response::parse(data, &limits);
        scan_agrees(scanned, &parsed, response::framing);
        match parsed {
            Ok(Some((head, len))) => {
                assert!(len <= data.len() && len <= limits.max_head_bytes);
                for offered in OFFERS {
                    if let Ok(p) = response::check_switch(&head, offered) {
                        assert!(offered.contains(&p));
                        assert!(tokens::connection_has_upgrade(&head.headers));
                    }
                }
                if response::check_switch(&head, &[Protocol::Transposed]).is_ok() {
                    // The ALPN parser, as the dialer reads a ptth 101.
                    let offered = [AlpnId::h2(), AlpnId::http11()];
                    if let Ok(id) = response::check_alpn(&head, &offered) {
                        assert!(offered.contains(&id));
                    }
                }
                let Ok(framing) = response::framing(&head) else {
                    continue;
                };
                let mut body = BodyDecoder::new(framing, limits.max_refusal_body, true);
                let mut rest = BytesMut::from(&data[len..]);
                if let Ok(false) = body.decode(&mut rest) {
                    body.eof();
                }
                let (body, body_truncated) = body.finish();
                assert!(body.len() <= limits.max_refusal_body);
                let refusal = Refusal {
                    status: head.status,
                    headers: head.headers,
                    body,
                    body_truncated,
                };
                let _ = (
                    refusal.retry_after(),
                    refusal.location(),
                    refusal.www_authenticate(),
                );
                let _ = refusal.to_string();
            }
            Ok(None) => assert!(data.len() <= limits.max_head_bytes),
            Err(e) => {
                let _ = e.status();
            }
        }
    }
}

/// List fields: build a `HeaderMap` from the input's lines and run every token function on it.
///
/// A line `name:value` adds that field (skipped when the name or value is invalid); a line with
/// no colon is a value for `Upgrade`, `Connection`, `Transfer-Encoding` or `Content-Length`, in
/// turn. Invariants: members are never empty nor padded, and the spelling of an offered
/// protocol names that protocol.
pub fn token_lists(data: &[u8]) {
    const LISTS: [HeaderName; 4] = [
        http::header::UPGRADE,
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::CONTENT_LENGTH,
    ];
    let mut headers = HeaderMap::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => match HeaderName::from_bytes(&line[..colon]) {
                Ok(name) => (name, &line[colon + 1..]),
                Err(_) => continue,
            },
            None => (LISTS[i % LISTS.len()].clone(), line),
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
        if let Ok(text) = std::str::from_utf8(line) {
            let _ = text.parse::<Protocol>();
        }
    }
    for name in &LISTS {
        for member in tokens::members(&headers, name) {
            assert!(!member.is_empty());
            assert!(!matches!(member.first(), Some(b' ' | b'\t')));
            assert!(!matches!(member.last(), Some(b' ' | b'\t')));
            assert!(!member.contains(&b','));
            if let Some(p) = Protocol::from_member(member) {
                assert!(p.matches(member));
                assert!(member.eq_ignore_ascii_case(p.as_str().as_bytes()));
            }
        }
        let _ = tokens::has_member(&headers, name, "upgrade");
    }
    let _ = tokens::connection_has_upgrade(&headers);
    for accepted in OFFERS {
        if let Some((p, spelling)) = tokens::offered_protocol(&headers, accepted) {
            assert!(accepted.contains(&p));
            assert_eq!(Protocol::from_member(spelling), Some(p));
        }
    }
    let _ = request::framing(&headers);
}

/// A chunked body, fed to [`BodyDecoder`] in pieces whose sizes come from the first byte.
///
/// The first byte also picks the cap and whether the decoder truncates. Invariant: a body that
/// completes when fed in pieces completes the same way when fed at once.
pub fn chunked_body(data: &[u8]) {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let limit = [0, 5, 100, 64 * 1024][usize::from(ctl >> 6)];
    let truncate = ctl & 0x20 != 0;
    let mut sizes = ReadSizes::new(ctl);

    let mut pieces = BodyDecoder::new(Framing::Chunked, limit, truncate);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut outcome = Ok(false);
    while fed < input.len() {
        let n = sizes.next(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        outcome = pieces.decode(&mut buf);
        if !matches!(outcome, Ok(false)) {
            break;
        }
    }
    buf.extend_from_slice(&input[fed..]);

    let mut whole = BodyDecoder::new(Framing::Chunked, limit, truncate);
    let mut all = BytesMut::from(input);
    let whole_outcome = whole.decode(&mut all);
    if outcome == Ok(true) {
        assert_eq!(whole_outcome, Ok(true), "piecewise done, at once not");
        assert_eq!(buf, all, "piecewise and at once left different bytes");
        let (a, b) = (pieces.finish(), whole.finish());
        assert_eq!(a, b, "piecewise and at once decoded differently");
        assert!(a.0.len() <= limit);
    }
}

/// The dialer against an arbitrary relay: [`crate::dialer::handshake()`], then, if it switched,
/// [`crate::dialer::Flipped::serve`] with a service that reads each request body and answers
/// `200`.
///
/// Control byte: bits 0-2 as in [`FuzzIo::new`]; bits 3-4 pick the protocols offered.
pub fn dialer_stream(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let io = FuzzIo::new(ctl, rest);
    let mut req = UpgradeRequest::new(HeaderValue::from_static("relay.example"));
    req.target = "/device".to_string();
    req.protocols = OFFERS[usize::from((ctl >> 3) & 3)].to_vec();
    run(async move {
        let limits = stream_limits();
        if let Ok(flipped) = crate::dialer::handshake(io, &req, &limits).await {
            let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                let _ = Limited::new(req.into_body(), BODY_CAP).collect().await;
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"ok",
                ))))
            });
            let _ = flipped.serve(service, &limits).await;
        }
    });
}

/// The listener against an arbitrary dialer: [`raw::read_offer`], `accept`, then
/// [`listener::reverse`], one `GET /status` and its response read from the input.
///
/// Control byte: bits 0-2 as in [`FuzzIo::new`]; bit 3 allows a missing `Host` (AirPlay);
/// bit 4 accepts `PTTH/1.0` only.
pub fn listener_stream(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let io = FuzzIo::new(ctl, rest);
    let mut config = ListenerConfig {
        limits: stream_limits(),
        ..ListenerConfig::default()
    };
    config.rules.allow_missing_host = ctl & 0x08 != 0;
    if ctl & 0x10 != 0 {
        config.rules.protocols = vec![Protocol::Ptth10];
    }
    run(async move {
        let Ok(offer) = raw::read_offer(io, &config).await else {
            return;
        };
        assert!(offer.body().len() <= config.limits.max_upgrade_body);
        assert!(config.rules.protocols.contains(&offer.protocol()));
        let Ok(io) = offer.accept().await else {
            return;
        };
        let Ok((mut client, conn)) = listener::reverse::<_, Empty<Bytes>>(io, &config).await else {
            return;
        };
        let exchange = async move {
            let req = Request::get("/status")
                .body(Empty::new())
                .expect("static request");
            if let Ok(res) = client.send(req).await {
                let _ = Limited::new(res.into_body(), BODY_CAP).collect().await;
            }
            drop(client);
        };
        let _ = tokio::join!(exchange, conn);
    });
}

/// The relay's routing of a public request (Host and path to an agent name) and of a claim.
///
/// Input: the `Host` value, a newline, the request target, a newline, the domain. Checks that
/// a routed name is a valid DNS label, that the forwarded path is origin-form with no dot
/// segment left, that the name and path can be put back into the request the agent receives,
/// and that dot-segment removal ([`path::normalize`]) is idempotent.
pub fn relay_route(data: &[u8]) {
    use crate::relay::route;
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let host = parts.next().filter(|h| !h.is_empty());
    let target = parts.next().unwrap_or("/");
    let domain = parts.next().unwrap_or("localhost");
    if let Ok(r) = route::route(host, target, domain) {
        assert!(
            route::validate_name(&r.name).is_ok(),
            "routed to an invalid name {:?}",
            r.name
        );
        assert!(
            r.path.starts_with('/'),
            "forwarded path not origin-form: {:?}",
            r.path
        );
        if let Some(prefix) = &r.prefix {
            assert_eq!(prefix, &format!("/{}", r.name));
        }
        // No dot segment is forwarded: the path is already normal, even under a prefix.
        if r.path.starts_with('/') {
            assert!(
                matches!(
                    path::normalize(&r.path, path::AboveRoot::Refuse),
                    Ok(std::borrow::Cow::Borrowed(_))
                ),
                "forwarded path has dot segments: {:?}",
                r.path
            );
        }
        let _ = r.path.parse::<http::Uri>();
    }
    if target.starts_with('/') {
        let p = target;
        // Normalising twice changes nothing; refusing in `Stay` mode implies refusing in both.
        match path::normalize(p, path::AboveRoot::Stay) {
            Ok(once) => assert!(
                matches!(
                    path::normalize(&once, path::AboveRoot::Refuse),
                    Ok(std::borrow::Cow::Borrowed(_))
                ),
                "normalising {p:?} twice changed {once:?}"
            ),
            Err(e) => assert_eq!(path::normalize(p, path::AboveRoot::Refuse), Err(e)),
        }
    }
    if let Ok(name) = route::claim(host, target, domain) {
        assert!(route::validate_name(&name).is_ok());
    }
}

/// Where the inbound bytes end and the next hop's begin, in an [`h1_exchange`] input.
pub const SIDES: &[u8] = b"%%%%";

/// The forwarding engine (`src/h1`) between an arbitrary client and an arbitrary next
/// hop: up to 8 exchanges on one inbound connection (and a tunnel after a `101`), asserting
/// that nothing panics or hangs and that what the engine wrote is validly framed: a sequence
/// of request heads and bodies to the next hop, of response heads and bodies to the client
/// (each possibly cut short at its end, where an exchange failed).
///
/// Input: two control bytes (inbound, outbound; as in [`FuzzIo::new`]), then the client's
/// bytes, [`SIDES`], the next hop's bytes. Without [`SIDES`], the next hop sends nothing. An
/// input of even length runs with a tap (the inspector's hook, `h1::tap`), whose captures must
/// keep at most its limit of each body; the framing checks are the same either way.
pub fn h1_exchange(data: &[u8]) {
    let tapped = data.len().is_multiple_of(2);
    let [ctl_in, ctl_out, rest @ ..] = data else {
        return;
    };
    let (inbound, outbound) = match find(rest, SIDES) {
        Some(at) => (&rest[..at], &rest[at + SIDES.len()..]),
        None => (rest, &b""[..]),
    };
    let to_client = Arc::new(Mutex::new(Vec::new()));
    let to_next = Arc::new(Mutex::new(Vec::new()));
    let inb_io = Recorder {
        inner: FuzzIo::new(*ctl_in, inbound),
        out: to_client.clone(),
    };
    let route = FuzzRoute {
        next: Mutex::new(Some(Recorder {
            inner: FuzzIo::new(*ctl_out, outbound),
            out: to_next.clone(),
        })),
    };
    run(async move {
        let limits = stream_limits();
        let mut inb = h1::Conn::new(inb_io, b"", &limits);
        let mut out = None;
        let closing = || false;
        let settings = h1::Settings {
            continue_wait: Duration::from_millis(5),
            tap: tapped.then_some(&CheckTap as &dyn h1::tap::Tap),
            ..h1::Settings::new(&limits, &limits, &closing)
        };
        for _ in 0..8 {
            if inb.rbuf.is_empty() && !matches!(inb.fill().await, Ok(n) if n > 0) {
                break;
            }
            match h1::exchange(
                &mut inb,
                &mut out,
                &route,
                &settings,
                &mut h1::Record::default(),
            )
            .await
            {
                h1::After::KeepAlive => {}
                h1::After::Close => break,
                h1::After::Switched => {
                    if let Some(next) = out.take() {
                        h1::tunnel(inb, next).await;
                    }
                    return;
                }
            }
        }
    });
    let to_next = to_next.lock().unwrap_or_else(PoisonError::into_inner);
    check_framing(&to_next, Side::Requests);
    // A response to HEAD has no body whatever its fields say: only the requests can tell, so
    // the responses are checked when no HEAD was sent.
    if find(&to_next, b"HEAD ").is_none() {
        let to_client = to_client.lock().unwrap_or_else(PoisonError::into_inner);
        check_framing(&to_client, Side::Responses);
    }
}

/// A tap that checks each capture against its limit and drops it.
struct CheckTap;

impl h1::tap::Tap for CheckTap {
    fn body_limit(&self) -> usize {
        16
    }

    fn record(&self, c: h1::tap::Capture, _record: &h1::Record) {
        for body in [&c.request_body, &c.response_body] {
            assert!(body.bytes.len() <= 16 && body.total >= body.bytes.len() as u64);
        }
        assert!(!c.request_head.is_empty());
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Requests,
    Responses,
}

/// Walk `bytes` as the engine's output: every complete head must parse and frame its body,
/// and every chunked body must be the engine's own plain framing. The last message may be cut.
fn check_framing(bytes: &[u8], side: Side) {
    let limits = Limits {
        max_head_bytes: 1 << 20,
        max_headers: 1 << 10,
        ..Limits::default()
    };
    let mut at = 0;
    let mut switched = false;
    while at < bytes.len() && !switched {
        let mut slots = head::Slots::new();
        let (framing, len) = match side {
            Side::Requests => match head::Request::parse(&bytes[at..], &mut slots, &limits) {
                Ok(Some(h)) => {
                    // Behind an upgrade request may be a tunnel's bytes (if the next hop said
                    // `101`): nothing after it is framing.
                    switched = h.fields.get_all("upgrade").next().is_some();
                    (h.framing().expect("a request the engine framed"), h.len)
                }
                Ok(None) => return,
                Err(e) => panic!("the engine wrote a bad request head: {e}"),
            },
            Side::Responses => match head::Response::parse(&bytes[at..], &mut slots, &limits) {
                Ok(Some(h)) => {
                    switched = h.status == StatusCode::SWITCHING_PROTOCOLS;
                    let (f, conflict) = h
                        .forward_framing(false)
                        .expect("a response the engine framed");
                    assert!(
                        !conflict,
                        "the engine wrote both Content-Length and chunked"
                    );
                    (f, h.len)
                }
                Ok(None) => return,
                Err(e) => panic!("the engine wrote a bad response head: {e}"),
            },
        };
        at += len;
        if framing == Framing::UntilClose {
            return;
        }
        let mut body = BodyDecoder::new(framing, 0, true);
        let (used, done) = body
            .decode_slice(&bytes[at..])
            .expect("a body the engine framed");
        at += used;
        if !done {
            return;
        }
    }
}

/// The engine's route in [`h1_exchange`]: one connection to the next hop, targets unchanged.
struct FuzzRoute {
    next: Mutex<Option<Recorder<FuzzIo>>>,
}

impl h1::Route for FuzzRoute {
    type Io = Recorder<FuzzIo>;
    fn target(&self, target: &str, out: &mut BytesMut) -> Result<(), String> {
        let pq = path::normalize(target, path::AboveRoot::Stay).map_err(|e| e.to_string())?;
        out.extend_from_slice(pq.as_bytes());
        Ok(())
    }
    fn drops(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case("host")
    }
    fn add_fields(&self, _req: &head::Request<'_, '_>, out: &mut BytesMut) {
        out.extend_from_slice(b"host: upstream.example\r\n");
    }
    async fn connect(&self) -> Result<Recorder<FuzzIo>, h1::BoxError> {
        let next = self
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        next.ok_or_else(|| "the next hop was used up".into())
    }
    fn failed(&self, why: &dyn std::fmt::Display) -> String {
        format!("502: {why}\n")
    }
}

/// A stream that keeps a copy of everything written to it.
#[derive(Debug)]
pub struct Recorder<IO> {
    inner: IO,
    out: Arc<Mutex<Vec<u8>>>,
}

crate::io::read_through!(Recorder, inner);

impl<IO: AsyncWrite + Unpin> AsyncWrite for Recorder<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Run `fut` to completion on a fresh current-thread runtime; panic if it outlives [`RUN_GUARD`].
fn run(fut: impl std::future::Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    rt.block_on(async {
        tokio::time::timeout(RUN_GUARD, fut)
            .await
            .expect("stream target hung");
    });
}

/// Read sizes derived from a control byte, deterministic for a given byte.
#[derive(Debug, Clone)]
struct ReadSizes {
    mode: u8,
    state: u32,
}

impl ReadSizes {
    /// Bits 0-1 pick the mode: 0 as much as asked, 1 one byte, 2 pseudo-random 1..=16, 3
    /// pseudo-random 1..=512. Bits 5-7 seed the pseudo-random sizes.
    fn new(ctl: u8) -> Self {
        ReadSizes {
            mode: ctl & 3,
            state: 0x9E37_79B9 ^ u32::from(ctl >> 5),
        }
    }

    /// The next size, at least 1 and at most `max` (`max` must be at least 1).
    fn next(&mut self, max: usize) -> usize {
        let want = match self.mode {
            0 => max,
            1 => 1,
            m => {
                // xorshift32
                self.state ^= self.state << 13;
                self.state ^= self.state >> 17;
                self.state ^= self.state << 5;
                let span = if m == 2 { 16 } else { 512 };
                1 + (self.state % span) as usize
            }
        };
        want.clamp(1, max.max(1))
    }
}

/// An in-memory stream that plays back fuzz input as the peer's bytes.
///
/// Reads return the input in pieces sized by `ReadSizes`, never across a [`SPLIT`] segment
/// boundary, then EOF. Writes succeed and are discarded.
///
/// After each segment (and before EOF) the stream holds back: once a read finds the boundary,
/// reads return `Pending` until the code under test writes something, or until it has polled
/// [`GATE_POLLS`] times, as a peer answers only what it was asked while it waited. Without this, a reversed response would be readable before
/// the request was sent, and EOF would arrive while the dialer is still writing its answer. It
/// never blocks for good: every `Pending` wakes itself at once. When bit 2 of the control byte
/// is set, every other read also yields once first, to vary how the state machines interleave.
#[derive(Debug)]
pub struct FuzzIo {
    segments: Vec<Bytes>,
    sizes: ReadSizes,
    yield_reads: bool,
    yielded: bool,
    gate: u8,
    waiting: bool,
}

/// How many reads a segment boundary holds back when nothing is written.
pub const GATE_POLLS: u8 = 16;

impl FuzzIo {
    /// A stream over `input`, controlled by `ctl` (bits 0-1 and 5-7: read sizes, see
    /// `ReadSizes`; bit 2: yield before every other read).
    pub fn new(ctl: u8, input: &[u8]) -> Self {
        let input = Bytes::copy_from_slice(input);
        let mut segments = Vec::new();
        let mut start = 0;
        while let Some(at) = find(&input[start..], SPLIT) {
            segments.push(input.slice(start..start + at));
            start += at + SPLIT.len();
        }
        segments.push(input.slice(start..));
        segments.retain(|s| !s.is_empty());
        segments.reverse();
        FuzzIo {
            segments,
            sizes: ReadSizes::new(ctl),
            yield_reads: ctl & 4 != 0,
            yielded: false,
            gate: 0,
            waiting: false,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl AsyncRead for FuzzIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if self.yield_reads && !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.gate > 0 {
            self.gate -= 1;
            self.waiting = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yielded = false;
        self.waiting = false;
        let max = buf.remaining();
        let this = &mut *self;
        let Some(segment) = this.segments.last_mut() else {
            return Poll::Ready(Ok(())); // EOF
        };
        let n = this.sizes.next(max.min(segment.len()));
        buf.put_slice(&segment.split_to(n));
        if segment.is_empty() {
            this.segments.pop();
            this.gate = GATE_POLLS;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FuzzIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.waiting && !buf.is_empty() {
            self.gate = 0;
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn fuzz_io_keeps_segments_apart_and_ends() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for ctl in [0u8, 1, 2, 3, 4, 0xff] {
            let mut io = FuzzIo::new(ctl, b"abc~~~~defg~~~~~~~~h");
            let got = rt.block_on(async {
                let mut reads = Vec::new();
                let mut chunk = [0u8; 64];
                loop {
                    let n = io.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break reads;
                    }
                    reads.push(chunk[..n].to_vec());
                }
            });
            assert_eq!(got.concat(), b"abcdefgh", "ctl {ctl}");
            if ctl == 0 {
                assert_eq!(got, vec![b"abc".to_vec(), b"defg".to_vec(), b"h".to_vec()]);
            }
        }
    }
}
