//! Dot segments in request paths (RFC 3986 §5.2.4), with the encoded forms that servers
//! decode into them.
//!
//! Wherever a path is routed or joined under a prefix, `..` must not climb out of the space the
//! request was routed into: the relay's routing (`relay::route`) and the agent's
//! upstream prefix ([`crate::agent::Proxy`]) both normalise here, so that a relay or an agent
//! never sends a dot segment on.
//!
//! What counts (decisions D22):
//! - A segment is a dot segment when it is `.` or `..` after decoding `%2e`/`%2E`: `..`,
//!   `%2e%2e`, `.%2E`, `%2E.` and `%2e` are all dot segments (RFC 3986 §2.3, §6.2.2.2: a
//!   percent-encoded unreserved character is the character). They are removed as §5.2.4 says.
//! - A dot segment hidden inside a segment is refused ([`PathError::Hidden`]): behind an
//!   encoded slash or backslash (`..%2f`, `%2e%2e%5C`), a raw backslash (`..\`), or before
//!   path parameters (`..;x`). RFC 3986 says these are ordinary segments, but servers that
//!   decode `%2F` or `\` into `/`, or strip `;` parameters (Tomcat), see a `..`.
//! - Other encoded slashes and backslashes (`a%2Fb`) are data and pass unchanged, as does
//!   everything else in the path; the query is never looked at.

use std::borrow::Cow;

/// What a `..` at the root means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AboveRoot {
    /// It stays at the root (RFC 3986 §5.2.4: `/../x` is `/x`): for a path whose root is the
    /// root of the space it was routed into.
    Stay,
    /// It is refused ([`PathError::Climbs`]): for a path under a prefix that the request was
    /// routed by, where climbing out would name another space.
    Refuse,
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `..` would climb above the root the path is confined to.
    #[error("the path climbs out of its root with a .. segment")]
    Climbs,
    /// A dot segment hidden behind an encoded slash or backslash, a backslash, or `;`.
    #[error("the path hides a dot segment behind an encoded slash, a backslash or path parameters")]
    Hidden,
}

/// Remove the dot segments from the path of a path-and-query (origin form); the query is kept
/// as it is. Returns the input itself when there is nothing to remove.
pub fn normalize(path_and_query: &str, above_root: AboveRoot) -> Result<Cow<'_, str>, PathError> {
    let (path, query) = match path_and_query.find('?') {
        Some(q) => path_and_query.split_at(q),
        None => (path_and_query, ""),
    };
    let mut clean = true;
    for segment in path.split('/') {
        match dots(segment) {
            Some(_) => clean = false,
            None if hides_dots(segment) => return Err(PathError::Hidden),
            None => {}
        }
    }
    if clean {
        return Ok(Cow::Borrowed(path_and_query));
    }
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match dots(segment) {
            Some(Dots::One) => trailing_slash = last,
            Some(Dots::Two) => {
                if out.pop().is_none() && above_root == AboveRoot::Refuse {
                    return Err(PathError::Climbs);
                }
                trailing_slash = last;
            }
            None => {
                out.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path_and_query.len());
    for segment in &out {
        s.push('/');
        s.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        s.push('/');
    }
    s.push_str(query);
    Ok(Cow::Owned(s))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dots {
    One,
    Two,
}

/// Whether `segment` is `.` or `..`, with any of its dots written `%2e` or `%2E`.
fn dots(segment: &str) -> Option<Dots> {
    let mut n = 0;
    let mut rest = segment.as_bytes();
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return None,
        };
        n += 1;
    }
    match n {
        1 => Some(Dots::One),
        2 => Some(Dots::Two),
        _ => None,
    }
}

/// Whether a segment that is not a dot segment becomes one for a server that splits it at
/// `%2F`, `%5C` or `\`, or cuts it at `;`.
fn hides_dots(segment: &str) -> bool {
    if !segment.contains(['.', '%']) {
        return false;
    }
    let bytes = segment.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i <= bytes.len() {
        let sep = match &bytes[i..] {
            [] => 0,
            [b'\\' | b';', ..] => 1,
            [b'%', b'2', b'f' | b'F', ..] | [b'%', b'5', b'c' | b'C', ..] => 3,
            _ => {
                i += 1;
                continue;
            }
        };
        if dots(&segment[start..i]).is_some() {
            return true;
        }
        if sep == 0 {
            break;
        }
        i += sep;
        start = i;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stay(p: &str) -> Result<Cow<'_, str>, PathError> {
        normalize(p, AboveRoot::Stay)
    }

    #[test]
    fn rfc_3986_examples() {
        // RFC 3986 §5.2.4 and §5.4.1/§5.4.2, as paths.
        assert_eq!(stay("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(stay("/mid/content=5/../6").unwrap(), "/mid/6");
        assert_eq!(stay("/a/b/c/.").unwrap(), "/a/b/c/");
        assert_eq!(stay("/a/b/c/./").unwrap(), "/a/b/c/");
        assert_eq!(stay("/a/b/c/..").unwrap(), "/a/b/");
        assert_eq!(stay("/a/b/c/../").unwrap(), "/a/b/");
        assert_eq!(stay("/a/b/c/../../../g").unwrap(), "/g");
        assert_eq!(stay("/a/b/c/../../../../g").unwrap(), "/g");
        assert_eq!(stay("/a//../b").unwrap(), "/a/b");
        assert_eq!(stay("/..").unwrap(), "/");
        assert_eq!(stay("/.").unwrap(), "/");
        assert_eq!(stay("/a/..").unwrap(), "/");
    }

    #[test]
    fn clean_paths_are_borrowed() {
        for p in [
            "/",
            "/a/b?q=../x",
            "/.well-known/x",
            "/a..b/c.",
            "/a%2Fb",
            "/x;y",
            "//",
        ] {
            assert!(matches!(stay(p), Ok(Cow::Borrowed(q)) if q == p), "{p}");
        }
    }

    #[test]
    fn encoded_dots_are_dots() {
        for p in [
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/.%2E/x",
            "/%2e./x",
            "/a/%2e/../x",
        ] {
            assert_eq!(stay(p).unwrap(), "/x", "{p}");
        }
        assert_eq!(stay("/a/%2e%2e%2e/b").unwrap(), "/a/%2e%2e%2e/b");
        assert_eq!(stay("/a/../b?x=/../y").unwrap(), "/b?x=/../y");
    }

    #[test]
    fn climbing_is_refused_under_a_prefix() {
        let refuse = |p| normalize(p, AboveRoot::Refuse);
        assert_eq!(refuse("/.."), Err(PathError::Climbs));
        assert_eq!(refuse("/../b/x"), Err(PathError::Climbs));
        assert_eq!(refuse("/a/../../b"), Err(PathError::Climbs));
        assert_eq!(refuse("/%2e%2e"), Err(PathError::Climbs));
        assert_eq!(refuse("/a/../b").unwrap(), "/b");
        assert_eq!(refuse("/./x").unwrap(), "/x");
    }

    #[test]
    fn hidden_dot_segments_are_refused() {
        for p in [
            "/..%2fx",
            "/..%2Fx",
            "/a%2f..",
            "/%2e%2e%5cx",
            "/..%5C",
            "/..\\x",
            "/a\\..\\b",
            "/..;/x",
            "/.;x",
            "/x/%2e;jsessionid=1",
        ] {
            assert_eq!(stay(p), Err(PathError::Hidden), "{p}");
        }
        for p in ["/a%2Fb", "/a\\b", "/a;b", "/...;x", "/x%5c.y", "/%2f%2f"] {
            assert!(stay(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn output_is_a_fixed_point() {
        for p in ["/a/./b/../c/", "/%2e%2e/a/%2E/", "/x/..", "/a//./b"] {
            let once = stay(p).unwrap().into_owned();
            assert!(matches!(stay(&once), Ok(Cow::Borrowed(_))), "{p} -> {once}");
        }
    }
}
