//! Secrets presented to us: the homeserver's `hs_token`, and LiveKit-format access
//! tokens (`token`); Matrix OpenID verification later. Comparisons are constant-time
//! and never log the secret.

pub mod api_token;
pub mod browser;
pub mod token;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

    #[test]
    fn matches_only_the_secret_and_never_prints_it() {
        let token = SecretToken::new("s3cret-token");
        assert!(token.matches("s3cret-token"));
        assert!(!token.matches("s3cret-tokem"));
        assert!(!token.matches(""));
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
