//! Agent authentication: the token file and bearer-token checks.
//!
//! File format, one entry a line: `NAME TOKEN` lets TOKEN claim NAME, `* TOKEN` lets it claim any
//! name that has no line of its own (a name with its own line is only for the tokens on its
//! lines). `#` starts a comment; blank lines are ignored. Tokens are compared in constant time
//! and never printed ([`Secret`]'s `Debug` masks them).

use std::path::Path;

use subtle::ConstantTimeEq;

use super::route::validate_name;

/// A token. `Debug` prints `Secret(***)`, so it can sit in structs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a token.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// Constant-time comparison with presented bytes.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl Secret {
    /// The token's SHA-256, in hex: what the fleet's shared registry stores in its place.
    pub(crate) fn fingerprint(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which names a token may claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Exactly this name.
    Name(String),
    /// Any name without a line of its own (`*`).
    Any,
}

/// Why a claim's token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, or one that is on no line of the file (`401`).
    #[error("a valid bearer token is required")]
    Invalid,
    /// The token is valid, but not for this name (`403`): a `NAME TOKEN` line for another
    /// name, or a `*` token for a name with its own line.
    #[error("this token may not claim the name {0:?}")]
    WrongName(String),
}

/// The parsed token file.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<(Scope, Secret)>,
}

/// A token-file problem, with its line number.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("reading token file: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not `NAME TOKEN`.
    #[error("token file line {line}: {reason}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl Tokens {
    /// Read and parse a token file.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        Tokens::parse(&std::fs::read_to_string(path)?)
    }

    /// Parse token-file text.
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let syntax = |reason: String| TokensError::Syntax {
                line: i + 1,
                reason,
            };
            let mut parts = line.split_whitespace();
            let (Some(name), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(syntax("expected `NAME TOKEN`".into()));
            };
            let scope = if name == "*" {
                Scope::Any
            } else {
                validate_name(name).map_err(|e| syntax(e.to_string()))?;
                Scope::Name(name.to_string())
            };
            entries.push((scope, Secret::new(token)));
        }
        Ok(Tokens { entries })
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The secret that authorises `presented` for `name`. Every entry is compared, so timing
    /// does not reveal which one matched.
    pub fn authorize(&self, name: &str, presented: &[u8]) -> Result<Secret, AuthError> {
        let dedicated = self
            .entries
            .iter()
            .any(|(scope, _)| matches!(scope, Scope::Name(n) if n == name));
        let mut found = None;
        let mut valid = false;
        for (scope, secret) in &self.entries {
            let in_scope = match scope {
                Scope::Any => !dedicated,
                Scope::Name(n) => n == name,
            };
            let matched = secret.matches(presented);
            valid |= matched;
            if matched && in_scope && found.is_none() {
                found = Some(secret.clone());
            }
        }
        match found {
            Some(secret) => Ok(secret),
            None if valid => Err(AuthError::WrongName(name.to_string())),
            None => Err(AuthError::Invalid),
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` value.
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let s = value.strip_prefix(b"Bearer ").or_else(|| {
        (value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &value[7..])
    })?;
    let s = s.trim_ascii();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_authorizes() {
        let t = Tokens::parse("# comment\n\napp s3cret\n* master # any\n").unwrap();
        assert!(t.authorize("app", b"s3cret").is_ok());
        let wrong_name = Err(AuthError::WrongName("other".into()));
        assert_eq!(t.authorize("other", b"s3cret"), wrong_name);
        assert!(t.authorize("other", b"master").is_ok());
        assert_eq!(t.authorize("app", b"wrong"), Err(AuthError::Invalid));
        // `app` has its own line: `*` does not reach it.
        let app = Err(AuthError::WrongName("app".into()));
        assert_eq!(t.authorize("app", b"master"), app);
        // Two lines for one name: either token.
        let t = Tokens::parse("app one\napp two\n").unwrap();
        assert!(t.authorize("app", b"one").is_ok() && t.authorize("app", b"two").is_ok());
        assert!(Tokens::parse("app").is_err());
        assert!(Tokens::parse("Bad_Name tok").is_err());
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
    }
}
