//! Secrets presented to us: the homeserver's `hs_token`, and LiveKit-format access
//! tokens (`token`); Matrix OpenID tokens (`openid`); room membership (`membership`); the one reader of
//! `Authorization: Bearer` headers ([`bearer`]). Comparisons are constant-time and never
//! log the secret.

pub mod api_token;
pub mod browser;
pub mod membership;
pub mod openid;
pub mod token;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a request's `Authorization` header holds, as far as bearer tokens go. Each
/// caller decides what an absent or malformed header means for it (the appservice API
/// and the bot API answer with different Matrix error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// No `Authorization` header.
    Absent,
    /// A header that is not `Bearer <token>`: another scheme, no space, not text.
    Malformed,
    /// The token after `Bearer ` (scheme in any case), trimmed; possibly empty, which
    /// matches no secret.
    Token(&'a str),
}

impl<'a> Bearer<'a> {
    /// The token, when there is one.
    pub fn token(self) -> Option<&'a str> {
        match self {
            Bearer::Token(token) => Some(token),
            Bearer::Absent | Bearer::Malformed => None,
        }
    }
}

/// Reads `Authorization: Bearer <token>` from `headers`.
pub fn bearer(headers: &HeaderMap) -> Bearer<'_> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Bearer::Absent;
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or(Bearer::Malformed, |(_, token)| Bearer::Token(token.trim()))
}

/// A secret we check presented values against. Both sides are hashed first so the
/// comparison takes the same time whatever the presented value's length.
#[derive(Clone)]
pub struct SecretToken {
    digest: [u8; 32],
}

impl SecretToken {
    pub fn new(secret: &str) -> Self {
        Self {
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    /// A key for another purpose, derived from this secret and `label` (the secret itself
    /// never leaves; one label, one key).
    pub fn derive_key(&self, label: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(label.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.digest);
        hasher.finalize().into()
    }

    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&presented).into()
    }
}

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretToken(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            axum::http::HeaderValue::from_bytes(value).expect("a header value"),
        );
        headers
    }

    #[test]
    fn bearer_tokens_are_read_in_any_scheme_case_and_trimmed() {
        assert_eq!(bearer(&HeaderMap::new()), Bearer::Absent);
        assert_eq!(bearer(&headers(b"Bearer abc")), Bearer::Token("abc"));
        assert_eq!(bearer(&headers(b"bearer  abc ")), Bearer::Token("abc"));
        assert_eq!(bearer(&headers(b"BEARER abc")), Bearer::Token("abc"));
        assert_eq!(bearer(&headers(b"Bearer ")), Bearer::Token(""));
        for malformed in [&b"Bearer"[..], b"Basic abc", b"abc", b"Bearer \xff"] {
            assert_eq!(
                bearer(&headers(malformed)),
                Bearer::Malformed,
                "{malformed:?}"
            );
        }
        assert_eq!(Bearer::Token("t").token(), Some("t"));
        assert_eq!(Bearer::Malformed.token(), None);
    }

    #[test]
    fn matches_only_the_secret_and_never_prints_it() {
        let token = SecretToken::new("s3cret-token");
        assert!(token.matches("s3cret-token"));
        assert!(!token.matches("s3cret-tokem"));
        assert!(!token.matches(""));
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
