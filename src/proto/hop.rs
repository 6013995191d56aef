//! Hop-by-hop fields (RFC 9110 §7.6.1): what a proxy removes before it forwards a message.
//!
//! The relay (public client → agent) and the agent (relay → upstream) are both proxies, so both
//! strip with this one rule: [`strip_hop_by_hop`] on a `HeaderMap`, [`is_hop_by_hop`] and
//! [`connection_names`] on the borrowed fields of a scanned head (the forwarding engine,
//! `crate::h1`). Callers differ only in what they deliberately let through.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::tokens;

/// The fields RFC 9110 §7.6.1 names as hop-by-hop, besides those `Connection` lists.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` is one of the fields RFC 9110 §7.6.1 names as hop-by-hop (ASCII
/// case-insensitive). The fields a `Connection` line names are hop-by-hop too: see
/// [`connection_names`].
pub fn is_hop_by_hop(name: &str) -> bool {
    // The names as plain strings: a `const` array of `HeaderName`s would be built and dropped
    // on every call, and this runs for every field the engine forwards.
    const NAMES: [&str; 6] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
    ];
    NAMES.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether one of the `Connection` values names the field `name` (RFC 9110 §7.6.1: the
/// options it lists are this hop's, and so are the fields of the same names).
pub fn connection_names<'v>(connection: impl IntoIterator<Item = &'v [u8]>, name: &str) -> bool {
    connection
        .into_iter()
        .any(|v| tokens::list_members(v).any(|m| m.eq_ignore_ascii_case(name.as_bytes())))
}

/// Which hop-by-hop fields a caller carries to the next hop on purpose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    /// Keep `Upgrade` (and send `Connection: upgrade`): the request is passed through as an
    /// upgrade (WebSocket and others).
    pub upgrade: bool,
    /// Keep `TE: trailers` when it was sent: the next hop may then send trailers.
    pub te_trailers: bool,
}

/// Remove `Connection`, every field it names, and the other hop-by-hop fields, except what
/// `keep` asks for. `Transfer-Encoding` always goes: hyper frames each hop itself.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep: Keep) {
    let upgrade = keep
        .upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    let te_trailers = keep.te_trailers && tokens::has_member(headers, &header::TE, "trailers");
    let named: Vec<HeaderName> = tokens::members(headers, &header::CONNECTION)
        .filter_map(|m| HeaderName::from_bytes(m).ok())
        .collect();
    debug_assert!(HOP_BY_HOP.iter().all(|h| is_hop_by_hop(h.as_str())));
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret, te".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        h
    }

    #[test]
    fn the_borrowed_rule_is_the_map_rule() {
        let h = sample();
        let mut stripped = h.clone();
        strip_hop_by_hop(&mut stripped, Keep::default());
        let conn: Vec<&[u8]> = h
            .get_all("connection")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        for name in h.keys() {
            let gone =
                is_hop_by_hop(name.as_str()) || connection_names(conn.clone(), name.as_str());
            assert_eq!(gone, !stripped.contains_key(name), "{name}");
        }
        assert!(is_hop_by_hop("Transfer-Encoding") && !is_hop_by_hop("host"));
    }

    #[test]
    fn strips_everything_by_default() {
        let mut h = sample();
        strip_hop_by_hop(&mut h, Keep::default());
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn keeps_what_is_asked_for() {
        let mut h = sample();
        strip_hop_by_hop(
            &mut h,
            Keep {
                upgrade: true,
                te_trailers: true,
            },
        );
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(!h.contains_key("x-secret") && !h.contains_key("keep-alive"));
        assert!(!h.contains_key("transfer-encoding"));
    }
}
