//! Bot API tokens: made by `tchap-visio api-token create`, shown once, stored as their
//! SHA-256 only. A presented token is hashed and compared with every active token's
//! hash in constant time, so neither the comparison nor its timing tells how close a
//! guess was. Depends on the store's token records only.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::api_tokens::ActiveToken;

/// Marks our tokens, so a leaked one is recognisable in a secret scanner.
pub const TOKEN_PREFIX: &str = "tvb_";
/// Random bytes in a token: 256 bits.
const TOKEN_BYTES: usize = 32;
/// Longest token name.
pub const NAME_MAX_LEN: usize = 64;

/// Why a token name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenNameError {
    #[error(
        "a token name is 1 to {NAME_MAX_LEN} characters of A-Z, a-z, 0-9, `.`, `_` and `-` (e.g. compte-rendu-bot)"
    )]
    Invalid,
}

/// Checks a token name (it appears in logs and in `api-token list`).
pub fn validate_name(name: &str) -> Result<&str, TokenNameError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(name)
    } else {
        Err(TokenNameError::Invalid)
    }
}

/// A fresh token: the prefix and 256 random bits in hex.
pub fn generate() -> String {
    let bytes: [u8; TOKEN_BYTES] = rand::rng().random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// What the database keeps of a token.
pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The name of the active token `presented` is, if any. Every stored hash is compared,
/// each in constant time, whatever matched before.
pub fn find<'a>(presented: &str, tokens: &'a [ActiveToken]) -> Option<&'a str> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for token in tokens {
        // A hash that does not decode (a hand-edited row) matches nothing.
        let stored = hex::decode(&token.sha256_hex).unwrap_or_default();
        let equal: bool = stored.len() == 32 && bool::from(digest.ct_eq(stored.as_slice()));
        if equal {
            found = Some(token.name.as_str());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_found_by_hash() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        let tokens = vec![
            ActiveToken {
                name: "a".into(),
                sha256_hex: sha256_hex(&a),
            },
            ActiveToken {
                name: "b".into(),
                sha256_hex: sha256_hex(&b),
            },
            ActiveToken {
                name: "broken".into(),
                sha256_hex: "zz".into(),
            },
        ];
        assert_eq!(find(&a, &tokens), Some("a"));
        assert_eq!(find(&b, &tokens), Some("b"));
        assert_eq!(find(&a[..a.len() - 1], &tokens), None);
        assert_eq!(find("", &tokens), None);
        assert_eq!(
            find(&sha256_hex(&a), &tokens),
            None,
            "the hash is not the token"
        );
        assert_eq!(find(&a, &[]), None);
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(
            validate_name("compte-rendu_bot.1"),
            Ok("compte-rendu_bot.1")
        );
        for bad in ["", "with space", "é", &"x".repeat(65), "a\nb"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
