//! Comma-separated list fields (`Upgrade`, `Connection`, `Transfer-Encoding`).
//!
//! RFC 9110 §5.3 lets a list field be split over several field lines and §5.6.1 lets members be
//! empty or padded with optional whitespace; a recipient must treat all of these the same as one
//! line. Every list lookup in the crate goes through [`members`] (fields in a `HeaderMap`) or
//! [`list_members`] (one field value, as the borrowed heads of [`super::head`] give them) so
//! that no caller re-invents the splitting.

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, UPGRADE};

use super::Protocol;

/// Every non-empty member of the list field `name`, across all of its field lines, trimmed of
/// optional whitespace (SP and HTAB).
pub fn members<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| list_members(value.as_bytes()))
}

/// Every non-empty member of one field line's list value, trimmed of optional whitespace.
pub fn list_members(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|m| !m.is_empty())
}

/// `tchar` (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether the list field `name` has a member equal to `token`, ignoring ASCII case.
pub fn has_member(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    members(headers, name).any(|m| m.eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether `Connection` carries the `upgrade` option (RFC 9110 §7.6.1, §7.8).
pub fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    has_member(headers, &CONNECTION, "upgrade")
}

/// The first PTTH protocol in `Upgrade` that is also in `accepted`, with the exact bytes the
/// peer used to spell it (the listener echoes them, because strict dialers compare bytes).
///
/// The peer's order wins: RFC 9110 §7.8 lists the offers "in order of descending preference".
pub fn offered_protocol<'a>(
    headers: &'a HeaderMap,
    accepted: &[Protocol],
) -> Option<(Protocol, &'a [u8])> {
    members(headers, &UPGRADE).find_map(|member| {
        Protocol::from_member(member)
            .filter(|p| accepted.contains(p))
            .map(|p| (p, member))
    })
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in lines {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn splits_lists_over_lines_and_trims() {
        let h = map(&[
            ("connection", " keep-alive ,, "),
            ("connection", "\tUPGRADE"),
        ]);
        let got: Vec<_> = members(&h, &CONNECTION).collect();
        assert_eq!(got, vec![&b"keep-alive"[..], b"UPGRADE"]);
        assert!(connection_has_upgrade(&h));
    }

    #[test]
    fn upgrade_token_is_not_a_substring_match() {
        let h = map(&[("connection", "upgraded, not-upgrade")]);
        assert!(!connection_has_upgrade(&h));
    }

    #[test]
    fn finds_first_accepted_offer_with_its_spelling() {
        let h = map(&[("upgrade", "websocket, ptth/1.0"), ("upgrade", "PTTH/0.9")]);
        assert_eq!(
            offered_protocol(&h, &Protocol::ALL),
            Some((Protocol::Ptth10, &b"ptth/1.0"[..]))
        );
        assert_eq!(
            offered_protocol(&h, &[Protocol::Ptth09]),
            Some((Protocol::Ptth09, &b"PTTH/0.9"[..]))
        );
        let none = map(&[("upgrade", "ptth, PTTH/2.0, websocket")]);
        assert_eq!(offered_protocol(&none, &Protocol::ALL), None);
    }
}
