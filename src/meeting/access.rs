//! Who may enter a meeting: its access level, what the room's Tchap rule adds, and the
//! decision for one person. Pure rules, no I/O: the join endpoint and the bridge feed
//! them what the homeserver said.

use crate::config::Language;

/// How open a meeting is (after Visio's levels).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AccessLevel {
    /// Anyone holding the link.
    Public,
    /// Identified members of the room go straight in; anyone else waits in the lobby.
    #[default]
    Trusted,
    /// Identified members of the room only; no lobby.
    Members,
}

impl AccessLevel {
    /// The name stored and shown in the API and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Trusted => "trusted",
            Self::Members => "members",
        }
    }

    /// The stored or configured name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Self::Public),
            "trusted" => Some(Self::Trusted),
            "members" => Some(Self::Members),
            _ => None,
        }
    }

    /// A level as typed after `!visio accès`, in either language.
    pub fn from_command(word: &str) -> Option<Self> {
        match word.trim().to_lowercase().as_str() {
            "public" | "publique" | "ouvert" | "open" => Some(Self::Public),
            "confiance" | "trusted" | "salle" => Some(Self::Trusted),
            "membres" | "members" | "membre" | "member" => Some(Self::Members),
            _ => None,
        }
    }

    /// The level's name as users read it.
    pub fn label(self, lang: Language) -> &'static str {
        match (self, lang) {
            (Self::Public, Language::Fr) => "publique",
            (Self::Public, Language::En) => "public",
            (Self::Trusted, Language::Fr) => "confiance",
            (Self::Trusted, Language::En) => "trusted",
            (Self::Members, Language::Fr) => "membres",
            (Self::Members, Language::En) => "members",
        }
    }

    /// One sentence saying who gets in.
    pub fn explain(self, lang: Language) -> &'static str {
        match (self, lang) {
            (Self::Public, Language::Fr) => "toute personne ayant le lien entre",
            (Self::Public, Language::En) => "anyone with the link enters",
            (Self::Trusted, Language::Fr) => {
                "les membres du salon entrent directement, les autres passent par la salle d’attente"
            }
            (Self::Trusted, Language::En) => {
                "room members enter directly, anyone else waits in the lobby"
            }
            (Self::Members, Language::Fr) => "seuls les membres du salon entrent",
            (Self::Members, Language::En) => "only members of the room enter",
        }
    }
}

/// The room's Tchap rule (`im.vector.room.access_rules`) as far as meetings care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoomRule {
    /// No rule, `unrestricted`, or anything we do not know.
    #[default]
    Open,
    /// `restricted`: users of the external servers never enter.
    Restricted,
}

impl RoomRule {
    /// From the state event's `rule`.
    pub fn from_rule(rule: Option<&str>) -> Self {
        match rule {
            Some("restricted") => Self::Restricted,
            _ => Self::Open,
        }
    }

    /// The level a meeting really has: `public` is never in force in a restricted room,
    /// where an anonymous guest cannot be told apart from an extern.
    pub fn effective(self, level: AccessLevel) -> AccessLevel {
        match (self, level) {
            (Self::Restricted, AccessLevel::Public) => AccessLevel::Trusted,
            _ => level,
        }
    }
}

/// Who asks to enter, as far as the homeserver could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Person {
    /// Not identified: a name typed on the page.
    Guest,
    /// A Matrix user, with their membership of the meeting's room (`join`, `leave`,
    /// `invite`, `ban`, or `None` when they never were in it), and whether their server
    /// is one of `external_servers`.
    Identified {
        membership: Option<String>,
        external: bool,
    },
}

impl Person {
    fn is_member(&self) -> bool {
        matches!(self, Self::Identified { membership: Some(m), .. } if m == "join")
    }
}

/// Why someone may not enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `members`: only identified members of the room.
    MembersOnly,
    /// A user of an external server, in a restricted room.
    External,
    /// Banned from the room.
    Banned,
    /// A moderator removed them from this meeting.
    Removed,
    /// Nobody who may let a guest in has been active lately: waiting would be in vain.
    NoModerator,
}

impl Refusal {
    /// A stable name for the API (`reason`) and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MembersOnly => "members_only",
            Self::External => "external",
            Self::Banned => "banned",
            Self::Removed => "removed",
            Self::NoModerator => "no_moderator",
        }
    }

    /// What the page shows.
    pub fn message(self, lang: Language) -> &'static str {
        match (self, lang) {
            (Self::MembersOnly, Language::Fr) => {
                "Cette réunion est réservée aux membres du salon. Identifiez-vous comme membre avec « Je suis membre du salon »."
            }
            (Self::MembersOnly, Language::En) => {
                "This meeting is for members of the room only. Identify yourself as a member with “I am a member of the room”."
            }
            (Self::External, Language::Fr) => {
                "Les comptes externes ne peuvent pas rejoindre les réunions de ce salon."
            }
            (Self::External, Language::En) => {
                "External accounts cannot join meetings of this room."
            }
            (Self::Banned, Language::Fr) => "Vous avez été banni·e du salon de cette réunion.",
            (Self::Banned, Language::En) => "You are banned from this meeting's room.",
            (Self::Removed, Language::Fr) => {
                "Un·e modérateur·rice vous a retiré·e de cette réunion."
            }
            (Self::Removed, Language::En) => "A moderator removed you from this meeting.",
            (Self::NoModerator, Language::Fr) => {
                "Personne ne peut vous faire entrer pour l’instant : aucun·e modérateur·rice n’a été actif·ve dans le salon ces 30 dernières minutes. Réessayez plus tard, ou prévenez un membre du salon."
            }
            (Self::NoModerator, Language::En) => {
                "Nobody can let you in right now: no moderator has been active in the room in the last 30 minutes. Try again later, or tell a member of the room."
            }
        }
    }
}

/// What happens to someone asking to enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// In at once.
    Enter,
    /// Waits for a moderator in the lobby.
    Lobby,
    /// Not let in.
    Refuse(Refusal),
}

/// The one rule: `level` as set on the meeting, `rule` the room's.
pub fn decide(level: AccessLevel, rule: RoomRule, person: &Person) -> Admission {
    if let Person::Identified {
        membership,
        external,
    } = person
    {
        if *external && rule == RoomRule::Restricted {
            return Admission::Refuse(Refusal::External);
        }
        if membership.as_deref() == Some("ban") {
            return Admission::Refuse(Refusal::Banned);
        }
    }
    match rule.effective(level) {
        AccessLevel::Public => Admission::Enter,
        _ if person.is_member() => Admission::Enter,
        AccessLevel::Trusted => Admission::Lobby,
        AccessLevel::Members => Admission::Refuse(Refusal::MembersOnly),
    }
}

/// How someone got in: what a change of level re-examines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An identified member of the room.
    Member,
    /// A guest a moderator admitted from the lobby.
    Admitted,
    /// Anyone, through a public meeting's link.
    Public,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admitted => "admitted",
            Self::Public => "public",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(Self::Member),
            "admitted" => Some(Self::Admitted),
            "public" => Some(Self::Public),
            _ => None,
        }
    }

    /// Whether someone who came in this way still may stay at `level`.
    pub fn still_allowed(self, level: AccessLevel) -> bool {
        match (self, level) {
            (Self::Member, _) | (_, AccessLevel::Public) => true,
            (Self::Admitted, AccessLevel::Trusted) => true,
            (Self::Admitted, AccessLevel::Members) | (Self::Public, _) => false,
        }
    }
}

/// Symbols of identity codes: digits and capitals without I, L, O and U (Crockford's
/// base 32), so that a code read aloud or copied by hand cannot be mistyped into
/// another.
pub const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters of a code: 40 bits, enough for codes that live 5 minutes and allow 10
/// wrong tries per user.
pub const CODE_LEN: usize = 8;

/// A fresh code.
pub fn new_code() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

/// A code as typed, in canonical form: case, spaces and dashes ignored, and the
/// look-alikes read as what they resemble (O as 0, I and L as 1). `None` when it cannot
/// be a code.
pub fn normalise_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        })
        .collect();
    (code.len() == CODE_LEN && code.bytes().all(|b| CODE_ALPHABET.contains(&b))).then_some(code)
}

/// Whether `user_id` belongs to one of `servers` (exact server name after the first `:`).
pub fn is_external(user_id: &str, servers: &[String]) -> bool {
    user_id
        .split_once(':')
        .is_some_and(|(_, server)| servers.iter().any(|s| s == server))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Person {
        Person::Identified {
            membership: Some("join".into()),
            external: false,
        }
    }

    #[test]
    fn each_level_decides_as_documented() {
        let left = Person::Identified {
            membership: Some("leave".into()),
            external: false,
        };
        use Admission::*;
        for (level, guest, member_, former) in [
            (AccessLevel::Public, Enter, Enter, Enter),
            (AccessLevel::Trusted, Lobby, Enter, Lobby),
            (
                AccessLevel::Members,
                Refuse(Refusal::MembersOnly),
                Enter,
                Refuse(Refusal::MembersOnly),
            ),
        ] {
            assert_eq!(
                decide(level, RoomRule::Open, &Person::Guest),
                guest,
                "{level:?}"
            );
            assert_eq!(
                decide(level, RoomRule::Open, &member()),
                member_,
                "{level:?}"
            );
            assert_eq!(decide(level, RoomRule::Open, &left), former, "{level:?}");
        }
    }

    #[test]
    fn restricted_rooms_keep_externs_out_and_are_never_public() {
        let extern_member = Person::Identified {
            membership: Some("join".into()),
            external: true,
        };
        for level in [
            AccessLevel::Public,
            AccessLevel::Trusted,
            AccessLevel::Members,
        ] {
            assert_eq!(
                decide(level, RoomRule::Restricted, &extern_member),
                Admission::Refuse(Refusal::External)
            );
        }
        assert_eq!(
            decide(AccessLevel::Public, RoomRule::Restricted, &Person::Guest),
            Admission::Lobby
        );
        assert_eq!(
            decide(AccessLevel::Public, RoomRule::Open, &extern_member),
            Admission::Enter
        );
        let banned = Person::Identified {
            membership: Some("ban".into()),
            external: false,
        };
        assert_eq!(
            decide(AccessLevel::Public, RoomRule::Open, &banned),
            Admission::Refuse(Refusal::Banned)
        );
    }

    #[test]
    fn a_stricter_level_re_examines_how_people_came_in() {
        assert!(Via::Member.still_allowed(AccessLevel::Members));
        assert!(Via::Admitted.still_allowed(AccessLevel::Trusted));
        assert!(!Via::Admitted.still_allowed(AccessLevel::Members));
        assert!(!Via::Public.still_allowed(AccessLevel::Trusted));
        assert!(Via::Public.still_allowed(AccessLevel::Public));
    }

    #[test]
    fn codes_are_typed_forgivingly_but_never_ambiguously() {
        let code = new_code();
        assert_eq!(code.len(), CODE_LEN);
        assert_eq!(
            normalise_code(&code.to_lowercase()).as_deref(),
            Some(code.as_str())
        );
        assert_eq!(normalise_code("abcd-efgh").as_deref(), Some("ABCDEFGH"));
        assert_eq!(normalise_code("o1il 2345").as_deref(), Some("01112345"));
        assert_eq!(normalise_code("ABCDEFG"), None);
        assert_eq!(normalise_code("ABCDEFGU"), None);
        assert_eq!(normalise_code("ABCDEFGHJ"), None);
        assert!(!CODE_ALPHABET.iter().any(|c| b"ILOU".contains(c)));
    }

    #[test]
    fn externs_are_known_by_their_server() {
        let servers = vec!["agent.externe.tchap.gouv.fr".to_owned()];
        assert!(is_external("@zoe:agent.externe.tchap.gouv.fr", &servers));
        assert!(!is_external("@zoe:agent.tchap.gouv.fr", &servers));
        assert!(!is_external("@zoe:externe.tchap.gouv.fr.evil", &servers));
    }
}
