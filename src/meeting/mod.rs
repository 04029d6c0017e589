//! The meeting domain: what a meeting is and how its state may change. No I/O; the
//! store persists it, the bridge and the HTTP layer act on it. Depends on `ids` only.

use crate::ids::{MeetingId, MeetingSlug};

/// Longest title, in characters (it appears in notices and in the page header).
pub const TITLE_MAX_CHARS: usize = 200;
/// Longest participant display name, in characters.
pub const DISPLAY_NAME_MAX_CHARS: usize = 64;

/// Why a meeting could not be made as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeetingError {
    /// The title is empty, too long or holds control characters (line breaks included).
    #[error("a meeting title is 1 to {TITLE_MAX_CHARS} characters on one line")]
    BadTitle,
    /// The display name is empty, too long or holds control characters.
    #[error("a display name is 1 to {DISPLAY_NAME_MAX_CHARS} characters on one line")]
    BadDisplayName,
}

/// Where a meeting is in its life. It only moves forward:
/// `Scheduled → Running → Ended`, or `Scheduled → Ended` when nobody came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeetingState {
    /// Created, nobody has joined yet.
    Scheduled,
    /// Someone has joined at least once and the meeting has not ended.
    Running,
    /// Over: the link no longer lets anyone in.
    Ended,
}

impl MeetingState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scheduled" => Some(Self::Scheduled),
            "running" => Some(Self::Running),
            "ended" => Some(Self::Ended),
            _ => None,
        }
    }

    /// The states from which a meeting may move to `self`.
    pub fn predecessors(self) -> &'static [MeetingState] {
        match self {
            Self::Scheduled => &[],
            Self::Running => &[Self::Scheduled],
            Self::Ended => &[Self::Scheduled, Self::Running],
        }
    }

    pub fn can_move_to(self, next: MeetingState) -> bool {
        next.predecessors().contains(&self)
    }
}

/// A meeting: its public id, its secret slug, what it is about, and its times
/// (milliseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meeting {
    pub id: MeetingId,
    pub slug: MeetingSlug,
    pub title: String,
    /// The Matrix room it was started from; `None` for meetings made by an admin.
    pub matrix_room_id: Option<String>,
    /// Matrix user id of whoever asked for it; `None` for meetings made by an admin.
    pub creator: Option<String>,
    pub state: MeetingState,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
}

impl Meeting {
    /// A new scheduled meeting with a fresh id and slug. The title is checked.
    pub fn new(
        title: &str,
        matrix_room_id: Option<String>,
        creator: Option<String>,
        now_ms: i64,
    ) -> Result<Self, MeetingError> {
        Ok(Self {
            id: MeetingId::generate(),
            slug: MeetingSlug::generate(),
            title: validate_title(title)?,
            matrix_room_id,
            creator,
            state: MeetingState::Scheduled,
            created_at: now_ms,
            started_at: None,
            ended_at: None,
        })
    }

    /// Whether the join link still lets people in.
    pub fn is_joinable(&self) -> bool {
        self.state != MeetingState::Ended
    }

    /// The join link: `<public_address>/m/<slug>`.
    pub fn link(&self, public_address: &str) -> String {
        format!(
            "{}/m/{}",
            public_address.trim_end_matches('/'),
            self.slug.expose()
        )
    }
}

/// The title trimmed, if it is 1 to 200 characters without control characters.
pub fn validate_title(title: &str) -> Result<String, MeetingError> {
    let title = title.trim();
    let chars = title.chars().count();
    if chars == 0 || chars > TITLE_MAX_CHARS || title.chars().any(char::is_control) {
        return Err(MeetingError::BadTitle);
    }
    Ok(title.to_owned())
}

/// A participant's display name trimmed, if it is 1 to 64 characters without control
/// characters.
pub fn validate_display_name(name: &str) -> Result<String, MeetingError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > DISPLAY_NAME_MAX_CHARS || name.chars().any(char::is_control) {
        return Err(MeetingError::BadDisplayName);
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_only_move_forward() {
        use MeetingState::*;
        for state in [Scheduled, Running, Ended] {
            assert_eq!(MeetingState::parse(state.as_str()), Some(state));
        }
        assert_eq!(MeetingState::parse("Running"), None);
        assert!(Scheduled.can_move_to(Running));
        assert!(Scheduled.can_move_to(Ended));
        assert!(Running.can_move_to(Ended));
        for (from, to) in [
            (Running, Scheduled),
            (Ended, Running),
            (Ended, Scheduled),
            (Ended, Ended),
            (Running, Running),
        ] {
            assert!(!from.can_move_to(to), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn new_meetings_are_scheduled_with_a_checked_title() {
        let meeting =
            Meeting::new("  Point hebdo  ", Some("!r:localhost".into()), None, 42).expect("valid");
        assert_eq!(meeting.title, "Point hebdo");
        assert_eq!(meeting.state, MeetingState::Scheduled);
        assert_eq!(meeting.created_at, 42);
        assert!(meeting.is_joinable());
        assert_ne!(meeting.id.as_str(), meeting.slug.expose());
        assert_eq!(
            meeting.link("https://visio.example/"),
            format!("https://visio.example/m/{}", meeting.slug.expose())
        );
        for bad in ["", "   ", "a\nb", &"é".repeat(201)] {
            assert_eq!(validate_title(bad), Err(MeetingError::BadTitle), "{bad:?}");
        }
        assert!(validate_title(&"é".repeat(200)).is_ok());
    }

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(validate_display_name("  Zoé  ").as_deref(), Ok("Zoé"));
        assert!(validate_display_name(&"é".repeat(64)).is_ok());
        for bad in ["", "  ", "a\tb", "a\u{0}", &"é".repeat(65)] {
            assert_eq!(
                validate_display_name(bad),
                Err(MeetingError::BadDisplayName),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_does_not_print_the_slug() {
        let meeting = Meeting::new("t", None, None, 0).expect("valid");
        assert!(!format!("{meeting:?}").contains(meeting.slug.expose()));
    }
}
