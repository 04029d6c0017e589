//! The stable per-browser id that lets attendance merge one person's rejoins and gives a
//! guest one Matrix ghost. The server issues it, in an HttpOnly cookie signed with a key
//! only the service holds; a page cannot read it, and a value sent in a request body is
//! never taken for it. What the room sees (inside LiveKit identities, hence in every
//! participant's SDK) is a pseudonym derived from it with the same key: knowing someone's
//! pseudonym does not let anyone obtain a token under it, so it cannot be used to speak
//! as their ghost.
//!
//! Depends on `ids`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ids::BrowserId;

/// Name of the cookie that carries the signed browser id.
pub const COOKIE_NAME: &str = "tv_browser";
/// How long a browser keeps its id (a year, renewed at every join).
pub const COOKIE_MAX_AGE_SECS: u64 = 365 * 24 * 3600;
/// Random characters of an issued id (base32, 100 bits).
const ID_LEN: usize = 20;
/// Characters of the pseudonym the room sees (base32, 80 bits).
const PSEUDONYM_LEN: usize = 16;

/// Issues and checks browser ids, and derives their pseudonyms.
#[derive(Clone)]
pub struct BrowserIds {
    key: [u8; 32],
}

impl std::fmt::Debug for BrowserIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrowserIds(***)")
    }
}

impl BrowserIds {
    /// Keys derived from a stable service secret (the `hs_token`), so that ids stay valid
    /// across restarts; the label keeps this key apart from any other use of the secret.
    pub fn from_secret(secret: &super::SecretToken) -> Self {
        Self {
            key: secret.derive_key("tchap-visio browser ids v1"),
        }
    }

    fn mac(&self, label: &str, value: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        mac.update(label.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A new id and its cookie value.
    pub fn issue(&self) -> (BrowserId, String) {
        let id = crate::ids::random_base32(ID_LEN);
        let cookie = format!("{id}.{}", hex::encode(&self.mac("cookie", &id)[..16]));
        (
            BrowserId::parse(&id).expect("base32 characters make a valid browser id"),
            cookie,
        )
    }

    /// The id a cookie value carries, if we signed it.
    pub fn verify(&self, cookie: &str) -> Option<BrowserId> {
        let (id, signature) = cookie.split_once('.')?;
        let signature = hex::decode(signature).ok()?;
        let expected = self.mac("cookie", id);
        if signature.len() != 16 || !bool::from(signature.ct_eq(&expected[..16])) {
            return None;
        }
        BrowserId::parse(id).ok()
    }

    /// The id's public face: the stable part of the LiveKit identities it joins under.
    pub fn pseudonym(&self, id: &BrowserId) -> BrowserId {
        let mac = self.mac("pseudonym", id.as_str());
        let pseudonym = crate::ids::base32_of(&mac, PSEUDONYM_LEN);
        BrowserId::parse(&pseudonym).expect("base32 characters make a valid browser id")
    }

    /// The `Set-Cookie` value for `cookie`: HttpOnly (scripts, including injected ones,
    /// never see it), SameSite=Strict, scoped to the join endpoint's path, Secure when
    /// the service is served over HTTPS.
    pub fn set_cookie(cookie: &str, secure: bool) -> String {
        format!(
            "{COOKIE_NAME}={cookie}; Path=/api/v1/meetings; Max-Age={COOKIE_MAX_AGE_SECS}; HttpOnly; SameSite=Strict{}",
            if secure { "; Secure" } else { "" }
        )
    }

    /// Our cookie's value in a `Cookie` header, if there is one.
    pub fn cookie_in(header: &str) -> Option<&str> {
        header
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE_NAME)
            .map(|(_, value)| value.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SecretToken;

    #[test]
    fn issued_cookies_verify_and_nothing_else_does() {
        let ids = BrowserIds::from_secret(&SecretToken::new("hs-secret"));
        let (id, cookie) = ids.issue();
        assert_eq!(ids.verify(&cookie), Some(id.clone()));
        // Another service's key, a forged signature, a bare id, garbage.
        let other = BrowserIds::from_secret(&SecretToken::new("another-secret"));
        assert_eq!(other.verify(&cookie), None);
        let (bare, _) = cookie.split_once('.').expect("dot");
        for forged in [
            bare.to_owned(),
            format!("{bare}.{}", "0".repeat(32)),
            format!("{bare}.zz"),
            String::new(),
            ".".into(),
            format!("{}.{}", "a".repeat(200), &cookie[cookie.len() - 32..]),
        ] {
            assert_eq!(ids.verify(&forged), None, "{forged}");
        }
        assert!(!format!("{ids:?}").contains("secret"));
    }

    #[test]
    fn pseudonyms_are_stable_distinct_and_do_not_reveal_the_id() {
        let ids = BrowserIds::from_secret(&SecretToken::new("hs-secret"));
        let (a, _) = ids.issue();
        let (b, _) = ids.issue();
        assert_eq!(ids.pseudonym(&a), ids.pseudonym(&a));
        assert_ne!(ids.pseudonym(&a), ids.pseudonym(&b));
        assert_ne!(ids.pseudonym(&a).as_str(), a.as_str());
        assert!(!ids.pseudonym(&a).as_str().contains(a.as_str()));
        // The same id under another key: another pseudonym.
        let other = BrowserIds::from_secret(&SecretToken::new("another-secret"));
        assert_ne!(other.pseudonym(&a), ids.pseudonym(&a));
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_safely() {
        assert_eq!(
            BrowserIds::cookie_in("a=1; tv_browser=abc.def ; b=2"),
            Some("abc.def")
        );
        assert_eq!(BrowserIds::cookie_in("a=1; tv_browserx=1"), None);
        let set = BrowserIds::set_cookie("abc.def", true);
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/api/v1/meetings",
        ] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!BrowserIds::set_cookie("abc.def", false).contains("Secure"));
    }
}
