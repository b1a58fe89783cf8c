//! Bearer tokens for the submission endpoint, from a file or an environment
//! variable. Only their SHA-256 digests are kept, so a token never sits in
//! memory longer than the request that carries it, and lookups take the same
//! time whatever the token.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Which namespaces a token may send in.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    All,
    Namespaces(HashSet<String>),
}

/// The accepted tokens. Format, one per line (`#` starts a comment):
/// `TOKEN` (every namespace) or `TOKEN ns1,ns2`.
#[derive(Clone, Default)]
pub struct SubmissionTokens {
    entries: HashMap<[u8; 32], Scope>,
}

impl fmt::Debug for SubmissionTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubmissionTokens({} configured)", self.entries.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("line {line} of the token file is not `TOKEN` or `TOKEN namespace,…`")]
    Malformed { line: usize },
    #[error("no token configured: the submission endpoint would refuse everything; add one")]
    Empty,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that is not configured: 401.
    Unauthenticated,
    /// A configured token not allowed in this namespace: 403.
    Forbidden,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl SubmissionTokens {
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let mut entries = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(token), rest) = (words.next(), words.next()) else {
                continue;
            };
            if words.next().is_some() {
                return Err(TokenError::Malformed { line: i + 1 });
            }
            let scope = match rest {
                None => Scope::All,
                Some(list) => Scope::Namespaces(
                    list.split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ),
            };
            entries.insert(digest(token), scope);
        }
        if entries.is_empty() {
            return Err(TokenError::Empty);
        }
        Ok(Self { entries })
    }

    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokenError::Unreadable {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text)
    }

    /// Checks a bearer token for a namespace.
    pub(crate) fn check(&self, bearer: Option<&str>, namespace: &str) -> Result<(), Denied> {
        let scope = bearer
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .and_then(|t| self.entries.get(&digest(t)))
            .ok_or(Denied::Unauthenticated)?;
        match scope {
            Scope::All => Ok(()),
            Scope::Namespaces(allowed) if allowed.contains(namespace) => Ok(()),
            Scope::Namespaces(_) => Err(Denied::Forbidden),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_refusals() {
        let tokens = SubmissionTokens::parse("# apps\nsecret-all\nsecret-hr hr,payroll\n").unwrap();
        assert_eq!(tokens.check(Some("secret-all"), "any"), Ok(()));
        assert_eq!(tokens.check(Some("secret-hr"), "payroll"), Ok(()));
        assert_eq!(
            tokens.check(Some("secret-hr"), "sales"),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            tokens.check(Some("wrong"), "hr"),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(tokens.check(None, "hr"), Err(Denied::Unauthenticated));
        assert!(!format!("{tokens:?}").contains("secret"));
        assert!(matches!(
            SubmissionTokens::parse("# nothing\n"),
            Err(TokenError::Empty)
        ));
        assert!(matches!(
            SubmissionTokens::parse("a b c\n"),
            Err(TokenError::Malformed { line: 1 })
        ));
    }
}
