//! Typed identifiers shared by the layers: a meeting's public id, its secret slug, and
//! a participant's identity. Parsing validates outside input; generation draws from
//! `rand`'s thread RNG (a CSPRNG seeded from the OS). Depends on nothing else in the crate.

use std::fmt;

use rand::Rng;

/// Lowercase RFC 4648 base32: case-insensitive to read aloud, URL-safe, no `0/o`, `1/l`.
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// `len` random characters of [`BASE32`].
pub fn random_base32(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(BASE32[rng.random_range(0..BASE32.len())]))
        .collect()
}

/// The first `len` characters (5 bits each) of `bytes` in [`BASE32`]; `bytes` must hold
/// at least `len * 5` bits.
pub fn base32_of(bytes: &[u8], len: usize) -> String {
    assert!(
        bytes.len() * 8 >= len * 5,
        "not enough bits for {len} characters"
    );
    (0..len)
        .map(|i| {
            let bit = i * 5;
            let pair = u16::from(bytes[bit / 8]) << 8
                | u16::from(bytes.get(bit / 8 + 1).copied().unwrap_or(0));
            let index = (pair >> (11 - bit % 8)) & 0x1f;
            char::from(BASE32[usize::from(index)])
        })
        .collect()
}

fn is_base32(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| BASE32.contains(&b))
}

/// Why an identifier from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not a meeting id: exactly 12 characters of `a-z2-7`.
    #[error("a meeting id is {MEETING_ID_LEN} characters of a-z and 2-7")]
    MeetingId,
    /// Not a slug: exactly 26 characters of `a-z2-7`.
    #[error("a meeting link slug is {MEETING_SLUG_LEN} characters of a-z and 2-7")]
    MeetingSlug,
    /// Not a participant identity: 1 to 256 bytes without control characters.
    #[error("a participant identity is 1 to {IDENTITY_MAX_BYTES} bytes without control characters")]
    ParticipantIdentity,
    /// Not a browser id: 1 to 64 characters of `A-Za-z0-9_-`.
    #[error("a browser id is 1 to {BROWSER_ID_MAX_LEN} characters of A-Z, a-z, 0-9, `-` and `_`")]
    BrowserId,
}

/// Length of a meeting id: 12 base32 characters, 60 bits (unique, not secret).
pub const MEETING_ID_LEN: usize = 12;
/// Length of a slug: 26 base32 characters, 130 random bits.
pub const MEETING_SLUG_LEN: usize = 26;
// 26 characters of a 32-letter alphabet carry 5 bits each: at least 128 bits.
const _: () = assert!(MEETING_SLUG_LEN * 5 >= 128);
/// Longest participant identity accepted (LiveKit sets no limit; ours are far shorter).
pub const IDENTITY_MAX_BYTES: usize = 256;
/// Longest stable per-browser part of an identity.
pub const BROWSER_ID_MAX_LEN: usize = 64;
/// Length of the random suffix that makes each join's identity unique.
const IDENTITY_SUFFIX_LEN: usize = 8;

/// A meeting's public, non-secret id: the LiveKit room name, and the key in API paths,
/// logs, metrics and webhooks. Knowing it does not let anyone join.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeetingId(String);

impl MeetingId {
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(random_base32(MEETING_ID_LEN))
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        if is_base32(s, MEETING_ID_LEN) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::MeetingId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MeetingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The secret part of a join link (`/m/{slug}`): whoever holds it may ask to join.
/// `Debug` hides it and there is no `Display`, so it does not end up in logs by accident;
/// [`MeetingSlug::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MeetingSlug(String);

impl MeetingSlug {
    /// A fresh slug of 130 random bits.
    pub fn generate() -> Self {
        Self(random_base32(MEETING_SLUG_LEN))
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        if is_base32(s, MEETING_SLUG_LEN) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::MeetingSlug)
        }
    }

    /// The secret itself, for the link, the database, and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MeetingSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MeetingSlug(***)")
    }
}

/// A participant's LiveKit identity (the token's `sub`). Ours are
/// `<stable part>-<random suffix>`: unique per join, since LiveKit drops an earlier
/// session that reuses an identity, while the stable per-browser part lets attendance
/// merge one person's rejoins. Identities minted by other tools are accepted as they come.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParticipantIdentity(String);

impl ParticipantIdentity {
    /// Any identity: 1 to 256 bytes, no control characters.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() || s.len() > IDENTITY_MAX_BYTES || s.chars().any(char::is_control) {
            return Err(IdError::ParticipantIdentity);
        }
        Ok(Self(s.to_owned()))
    }

    /// A new identity for one join: the browser's stable id when it sent one, else a
    /// random one, then `-` and a random suffix.
    pub fn for_join(browser_id: Option<&BrowserId>) -> Self {
        let stable = match browser_id {
            Some(id) => id.0.clone(),
            None => random_base32(16),
        };
        Self(format!("{stable}-{}", random_base32(IDENTITY_SUFFIX_LEN)))
    }

    /// The part before the last `-`: the same across one browser's rejoins. The whole
    /// identity when it has no `-` (identities minted elsewhere).
    pub fn stable_part(&self) -> &str {
        self.0
            .rsplit_once('-')
            .map_or(self.0.as_str(), |(stable, _)| stable)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ParticipantIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stable id a browser keeps (local storage) and sends when joining.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrowserId(String);

impl BrowserId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= BROWSER_ID_MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::BrowserId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let ids: HashSet<_> = (0..1000).map(|_| MeetingId::generate()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(MeetingId::parse(id.as_str()).as_ref(), Ok(id));
            assert_eq!(id.to_string().len(), MEETING_ID_LEN);
        }
        let slugs: HashSet<_> = (0..1000).map(|_| MeetingSlug::generate()).collect();
        assert_eq!(slugs.len(), 1000);
        for slug in &slugs {
            assert_eq!(MeetingSlug::parse(slug.expose()).as_ref(), Ok(slug));
        }
    }

    #[test]
    fn slugs_use_the_whole_alphabet() {
        // Every letter of the alphabet shows up: the draw is not biased to a subset.
        let mut seen = HashSet::new();
        for _ in 0..200 {
            seen.extend(MeetingSlug::generate().expose().bytes());
        }
        assert_eq!(seen.len(), 32);
    }

    #[test]
    fn parsing_refuses_bad_input() {
        for bad in [
            "",
            "abc",
            "ABCDEFGHIJKL",
            "abcdefghijk1",
            "abcdefghijk/",
            "abcdefghijklm",
        ] {
            assert_eq!(MeetingId::parse(bad), Err(IdError::MeetingId), "{bad}");
        }
        assert!(MeetingId::parse("abcdefghij27").is_ok());
        let slug = "a".repeat(26);
        assert!(MeetingSlug::parse(&slug).is_ok());
        for bad in [
            "a".repeat(25),
            "a".repeat(27),
            format!("{}0", "a".repeat(25)),
        ] {
            assert_eq!(MeetingSlug::parse(&bad), Err(IdError::MeetingSlug));
        }
        for bad in ["", "a\nb", "\u{7}", &"x".repeat(257)] {
            assert_eq!(
                ParticipantIdentity::parse(bad),
                Err(IdError::ParticipantIdentity)
            );
        }
        assert!(ParticipantIdentity::parse("Alice from the CLI ✓").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert_eq!(BrowserId::parse(bad), Err(IdError::BrowserId), "{bad}");
        }
    }

    #[test]
    fn slug_is_never_printed_by_debug() {
        let slug = MeetingSlug::generate();
        let debug = format!("{slug:?} {:?}", Some(&slug));
        assert!(!debug.contains(slug.expose()), "{debug}");
    }

    #[test]
    fn join_identities_are_unique_and_keep_the_browser_part() {
        let browser = BrowserId::parse("3f2c-9a_b").expect("valid");
        let a = ParticipantIdentity::for_join(Some(&browser));
        let b = ParticipantIdentity::for_join(Some(&browser));
        assert_ne!(a, b);
        assert_eq!(a.stable_part(), "3f2c-9a_b");
        assert_eq!(b.stable_part(), "3f2c-9a_b");
        assert!(ParticipantIdentity::parse(a.as_str()).is_ok());

        let anonymous = ParticipantIdentity::for_join(None);
        let other = ParticipantIdentity::for_join(None);
        assert_ne!(anonymous.stable_part(), other.stable_part());
        let foreign = ParticipantIdentity::parse("bob").expect("valid");
        assert_eq!(foreign.stable_part(), "bob");
    }
}
