//! Bot API tokens: made by `tchap-visio api-token create`, shown once, stored as their
//! SHA-256 only. A presented token is hashed and compared with every active token's
//! hash in constant time, so neither the comparison nor its timing tells how close a
//! guess was. Each token has a scope (the rooms it reaches) and may be read-only; the
//! scope is decided here, and the bot API asks it on every call. Depends on the store's
//! token records only.

use rand::Rng;
use ruma::{OwnedRoomId, OwnedServerName, RoomId, ServerName};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::api_tokens::ActiveToken;

/// Marks our tokens, so a leaked one is recognisable in a secret scanner.
pub const TOKEN_PREFIX: &str = "tvb_";
/// Random bytes in a token: 256 bits.
const TOKEN_BYTES: usize = 32;
/// Random bytes in a token's public id (not a secret: it names the token in logs).
const ID_BYTES: usize = 8;
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

/// A fresh public id for a token: 64 random bits in hex. Logs and ghost ids use it, so
/// that a token renamed or replaced under the same name never inherits another's ghosts.
pub fn generate_id() -> String {
    let bytes: [u8; ID_BYTES] = rand::rng().random();
    hex::encode(bytes)
}

/// What the database keeps of a token.
pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The active token `presented` is, if any. Every stored hash is compared, each in
/// constant time, whatever matched before.
pub fn find<'a>(presented: &str, tokens: &'a [ActiveToken]) -> Option<&'a ActiveToken> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for token in tokens {
        // A hash that does not decode (a hand-edited row) matches nothing.
        let stored = hex::decode(&token.sha256_hex).unwrap_or_default();
        let equal: bool = stored.len() == 32 && bool::from(digest.ct_eq(stored.as_slice()));
        if equal {
            found = Some(token);
        }
    }
    found
}

/// Which rooms a token reaches, stored as JSON in `api_tokens.scope`. A meeting is in
/// scope when its Matrix room is: listed in `rooms`, on one of `servers` (the server
/// part of the room id), or anything with `all_rooms`. A meeting without a room is
/// reached by `all_rooms` tokens only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenScope {
    #[serde(default, skip_serializing_if = "is_false")]
    pub all_rooms: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<OwnedRoomId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<OwnedServerName>,
    /// Made before tokens had scopes: it reaches every room (so that upgrading breaks
    /// no bot) and the service warns about it at every start until it is replaced.
    #[serde(default, skip_serializing_if = "is_false")]
    pub legacy: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why a scope given at token creation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Nothing said which rooms the token may reach.
    #[error(
        "a token needs a scope: --room <room id> (repeatable), --server <server name> (the rooms whose id ends with it, repeatable) or --all-rooms"
    )]
    Missing,
    /// `--all-rooms` with a narrower scope beside it.
    #[error("--all-rooms already reaches every room: give it alone, or --room/--server without it")]
    AllAndSome,
    /// A `--room` value that is no room id.
    #[error("--room `{0}` is not a room id like !abc:example.org")]
    BadRoom(String),
    /// A `--server` value that is no server name.
    #[error("--server `{0}` is not a server name like example.org")]
    BadServer(String),
}

impl TokenScope {
    /// The scope of a new token, from `--room`, `--server` and `--all-rooms`.
    pub fn new(rooms: &[String], servers: &[String], all_rooms: bool) -> Result<Self, ScopeError> {
        if all_rooms && (!rooms.is_empty() || !servers.is_empty()) {
            return Err(ScopeError::AllAndSome);
        }
        if !all_rooms && rooms.is_empty() && servers.is_empty() {
            return Err(ScopeError::Missing);
        }
        let mut scope = Self {
            all_rooms,
            ..Self::default()
        };
        for room in rooms {
            let id = RoomId::parse(room.trim()).map_err(|_| ScopeError::BadRoom(room.clone()))?;
            if !scope.rooms.contains(&id) {
                scope.rooms.push(id);
            }
        }
        for server in servers {
            let name = ServerName::parse(server.trim().to_ascii_lowercase())
                .map_err(|_| ScopeError::BadServer(server.clone()))?;
            if !scope.servers.contains(&name) {
                scope.servers.push(name);
            }
        }
        Ok(scope)
    }

    /// Reads a stored scope; one that does not parse (a hand-edited row) reaches nothing.
    pub fn from_stored(json: &str) -> Option<Self> {
        serde_json::from_str(json).ok()
    }

    /// What the database keeps.
    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).expect("a scope of ids and flags serialises")
    }

    /// Whether a meeting in `room` (none: a meeting made from the command line without
    /// a room) is within reach.
    pub fn allows(&self, room: Option<&str>) -> bool {
        if self.all_rooms {
            return true;
        }
        let Some(room) = room.and_then(|r| RoomId::parse(r).ok()) else {
            return false;
        };
        self.rooms.contains(&room)
            || room.server_name().is_some_and(|server| {
                self.servers
                    .iter()
                    .any(|s| s.as_str().eq_ignore_ascii_case(server.as_str()))
            })
    }

    /// One line for `api-token list`.
    pub fn describe(&self) -> String {
        if self.legacy {
            return "all rooms (made before scopes: replace it)".into();
        }
        if self.all_rooms {
            return "all rooms".into();
        }
        let mut parts = Vec::new();
        if !self.rooms.is_empty() {
            let rooms: Vec<&str> = self.rooms.iter().map(|r| r.as_str()).collect();
            parts.push(format!("rooms {}", rooms.join(" ")));
        }
        if !self.servers.is_empty() {
            let servers: Vec<&str> = self.servers.iter().map(|s| s.as_str()).collect();
            parts.push(format!("servers {}", servers.join(" ")));
        }
        parts.join("; ")
    }
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
        let active = |name: &str, sha256_hex: String| ActiveToken {
            name: name.into(),
            id: generate_id(),
            sha256_hex,
            scope: "{}".into(),
            read_only: false,
        };
        let tokens = vec![
            active("a", sha256_hex(&a)),
            active("b", sha256_hex(&b)),
            active("broken", "zz".into()),
        ];
        let name = |found: Option<&ActiveToken>| found.map(|t| t.name.clone());
        assert_eq!(name(find(&a, &tokens)), Some("a".into()));
        assert_eq!(name(find(&b, &tokens)), Some("b".into()));
        assert_eq!(name(find(&a[..a.len() - 1], &tokens)), None);
        assert_eq!(name(find("", &tokens)), None);
        assert_eq!(
            name(find(&sha256_hex(&a), &tokens)),
            None,
            "the hash is not the token"
        );
        assert_eq!(name(find(&a, &[])), None);
        assert_ne!(generate_id(), generate_id());
        assert_eq!(generate_id().len(), 16);
    }

    #[test]
    fn scopes_are_required_and_checked_against_the_room() {
        let none: [String; 0] = [];
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            TokenScope::new(&none, &none, false),
            Err(ScopeError::Missing)
        );
        assert_eq!(
            TokenScope::new(&s(&["!a:x.org"]), &none, true),
            Err(ScopeError::AllAndSome)
        );
        assert_eq!(
            TokenScope::new(&none, &s(&["x.org"]), true),
            Err(ScopeError::AllAndSome)
        );
        assert!(matches!(
            TokenScope::new(&s(&["a:x.org"]), &none, false),
            Err(ScopeError::BadRoom(_))
        ));
        assert!(matches!(
            TokenScope::new(&none, &s(&["bad server/"]), false),
            Err(ScopeError::BadServer(_))
        ));
        assert!(
            ScopeError::Missing.to_string().contains("--all-rooms"),
            "the refusal says what to give"
        );

        let rooms = TokenScope::new(&s(&["!a:x.org", "!b:y.org", "!a:x.org"]), &none, false)
            .expect("rooms");
        assert_eq!(rooms.rooms.len(), 2, "duplicates dropped");
        assert!(rooms.allows(Some("!a:x.org")) && rooms.allows(Some("!b:y.org")));
        assert!(!rooms.allows(Some("!c:x.org")));
        assert!(
            !rooms.allows(Some("!A:x.org")),
            "room ids are case-sensitive"
        );
        assert!(
            !rooms.allows(None),
            "a meeting without a room needs --all-rooms"
        );
        assert!(!rooms.allows(Some("not a room")));

        let server = TokenScope::new(&none, &s(&["X.org"]), false).expect("server");
        assert!(server.allows(Some("!any:x.org")) && server.allows(Some("!other:X.ORG")));
        assert!(!server.allows(Some("!any:x.org.evil")));
        assert!(!server.allows(Some("!any:evil-x.org")));
        // Room ids of room version 12 have no server part: only --room reaches them.
        assert!(!server.allows(Some("!hashOfTheCreateEvent0123456789")));

        let all = TokenScope::new(&none, &none, true).expect("all");
        assert!(all.allows(None) && all.allows(Some("!z:anywhere")));

        // Stored and read back; a legacy row reaches everything and says so.
        for scope in [&rooms, &server, &all] {
            assert_eq!(
                TokenScope::from_stored(&scope.to_stored()).as_ref(),
                Some(scope)
            );
        }
        let legacy =
            TokenScope::from_stored(r#"{"all_rooms":true,"legacy":true}"#).expect("legacy");
        assert!(legacy.legacy && legacy.allows(Some("!z:anywhere")));
        assert!(legacy.describe().contains("replace"));
        assert_eq!(TokenScope::from_stored("not json"), None);
        let empty = TokenScope::from_stored("{}").expect("empty");
        assert!(!empty.allows(Some("!a:x.org")) && !empty.allows(None));
        assert_eq!(server.describe(), "servers x.org");
        assert_eq!(rooms.describe(), "rooms !a:x.org !b:y.org");
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
