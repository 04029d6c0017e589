//! The meeting domain: what a meeting is and how its state may change. No I/O; the
//! store persists it, the bridge and the HTTP layer act on it. Depends on `ids` and `names` only.

pub mod access;

use crate::ids::{MeetingId, MeetingSlug};
pub use access::AccessLevel;

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
    /// The display name is empty, too long, or holds characters that hide or disguise
    /// it (see [`crate::names`]).
    #[error("a display name is 1 to {DISPLAY_NAME_MAX_CHARS} visible characters on one line: {0}")]
    BadDisplayName(crate::names::NameError),
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
    /// The queued link notice (its outbound row): the meeting's thread hangs from the
    /// event it becomes.
    pub link_notice_id: Option<i64>,
    /// Event id of the link notice, the root of the meeting's thread, once sent.
    pub thread_root_event_id: Option<String>,
    /// Most participants present at once.
    pub peak_participants: i64,
    /// When the last participant left; `None` while someone is in (or nobody came yet).
    pub empty_since: Option<i64>,
    /// State key of the room widget set for this meeting, removed when it ends.
    pub widget_state_key: Option<String>,
    /// Who may enter, as set (a restricted room never makes it public; see
    /// [`access::RoomRule::effective`]).
    pub access: AccessLevel,
    /// The lobby notice (its outbound row), edited as guests come and go.
    pub lobby_notice_id: Option<i64>,
    /// For an Element Call call this record follows (attendance, notice, summary): its
    /// LiveKit room, named by the call's slot. `None` for a meeting, whose LiveKit room
    /// is its id.
    pub sfu_room: Option<String>,
    /// For a call: its Matrix room (`matrix_room_id`, where notices go, is set only when
    /// the bot is in it).
    pub call_room_id: Option<String>,
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
            link_notice_id: None,
            thread_root_event_id: None,
            peak_participants: 0,
            empty_since: None,
            widget_state_key: None,
            access: AccessLevel::Public,
            lobby_notice_id: None,
            sfu_room: None,
            call_room_id: None,
        })
    }

    /// The LiveKit room its participants are in.
    pub fn sfu_room_name(&self) -> &str {
        self.sfu_room.as_deref().unwrap_or(self.id.as_str())
    }

    /// Whether it follows an Element Call call rather than being a meeting of ours.
    pub fn is_call(&self) -> bool {
        self.sfu_room.is_some()
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

/// One connection of a participant to a meeting (a rejoin is a new session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub meeting_id: MeetingId,
    /// The SFU's participant sid (`PA_…`).
    pub sid: String,
    /// The identity inside the join token.
    pub identity: String,
    /// What stays the same when the same person rejoins (the browser's stable part of
    /// the identity): attendance is merged per attendee key.
    pub attendee_key: String,
    pub display_name: String,
    /// Set for participants verified as Matrix users.
    pub matrix_user_id: Option<String>,
    pub joined_at: i64,
    pub left_at: Option<i64>,
    pub last_seen_at: i64,
}

/// Where a chat message was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatOrigin {
    /// In the meeting page (or an SDK client).
    Meeting,
    /// In the Matrix room, mirrored into the meeting.
    Matrix,
}

impl ChatOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Meeting => "meeting",
            Self::Matrix => "matrix",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "meeting" => Some(Self::Meeting),
            "matrix" => Some(Self::Matrix),
            _ => None,
        }
    }
}

/// A chat message of a meeting, whichever side it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub meeting_id: MeetingId,
    /// The SFU's message id, or the Matrix event id for messages from the room.
    pub message_id: String,
    pub origin: ChatOrigin,
    pub sender_identity: Option<String>,
    pub sender_name: String,
    pub matrix_user_id: Option<String>,
    pub body: String,
    pub sent_at: i64,
}

/// One person's presence in a meeting, all their sessions merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attendee {
    pub attendee_key: String,
    /// The name of their latest session.
    pub display_name: String,
    pub matrix_user_id: Option<String>,
    /// Time present, overlapping sessions counted once.
    pub present_ms: i64,
    /// Merged `[start, end)` intervals, in order.
    pub intervals: Vec<(i64, i64)>,
    pub first_joined_at: i64,
}

/// Attendance from sessions: per attendee, the union of their sessions' intervals (a
/// session still open counts up to `now_ms`). Ordered by first arrival.
pub fn attendance(sessions: &[Session], now_ms: i64) -> Vec<Attendee> {
    let mut by_key: Vec<(String, Vec<&Session>)> = Vec::new();
    for session in sessions {
        match by_key.iter_mut().find(|(k, _)| *k == session.attendee_key) {
            Some((_, list)) => list.push(session),
            None => by_key.push((session.attendee_key.clone(), vec![session])),
        }
    }
    let mut attendees: Vec<Attendee> = by_key
        .into_iter()
        .map(|(attendee_key, mut list)| {
            list.sort_by_key(|s| s.joined_at);
            let mut intervals: Vec<(i64, i64)> = Vec::new();
            for s in &list {
                let end = s.left_at.unwrap_or(now_ms).max(s.joined_at);
                match intervals.last_mut() {
                    Some(last) if s.joined_at <= last.1 => last.1 = last.1.max(end),
                    _ => intervals.push((s.joined_at, end)),
                }
            }
            let latest = list
                .iter()
                .max_by_key(|s| s.joined_at)
                .expect("every key has a session");
            Attendee {
                attendee_key,
                display_name: latest.display_name.clone(),
                matrix_user_id: list.iter().find_map(|s| s.matrix_user_id.clone()),
                present_ms: intervals.iter().map(|(a, b)| b - a).sum(),
                first_joined_at: intervals.first().map_or(0, |i| i.0),
                intervals,
            }
        })
        .collect();
    attendees.sort_by_key(|a| a.first_joined_at);
    attendees
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

/// A participant's display name normalised ([`crate::names::normalise_display_name`]),
/// if it is 1 to 64 visible characters.
pub fn validate_display_name(name: &str) -> Result<String, MeetingError> {
    crate::names::normalise_display_name(name, DISPLAY_NAME_MAX_CHARS)
        .map_err(MeetingError::BadDisplayName)
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
            assert!(validate_display_name(bad).is_err(), "{bad:?}");
        }
    }

    fn session(key: &str, name: &str, joined: i64, left: Option<i64>) -> Session {
        Session {
            meeting_id: MeetingId::generate(),
            sid: format!("PA_{joined}"),
            identity: format!("{key}-{joined}"),
            attendee_key: key.into(),
            display_name: name.into(),
            matrix_user_id: None,
            joined_at: joined,
            left_at: left,
            last_seen_at: joined,
        }
    }

    #[test]
    fn attendance_merges_each_attendees_sessions() {
        let sessions = [
            session("b", "Bob", 50, Some(80)),
            session("a", "Alice", 0, Some(100)),
            // Alice's second tab overlaps her first: counted once.
            session("a", "Alice", 60, Some(150)),
            // Then she comes back later under a new name.
            session("a", "Alice D.", 200, Some(250)),
            // Bob is still in.
            session("b", "Bob", 300, None),
        ];
        let attendance = attendance(&sessions, 400);
        assert_eq!(attendance.len(), 2);
        let alice = &attendance[0];
        assert_eq!(alice.display_name, "Alice D.");
        assert_eq!(alice.intervals, vec![(0, 150), (200, 250)]);
        assert_eq!(alice.present_ms, 200);
        let bob = &attendance[1];
        assert_eq!(bob.intervals, vec![(50, 80), (300, 400)]);
        assert_eq!(bob.present_ms, 130);
        assert!(super::attendance(&[], 0).is_empty());
        // A clock step backwards never makes a negative duration.
        assert_eq!(
            super::attendance(&[session("c", "C", 10, Some(5))], 0)[0].present_ms,
            0
        );
    }

    #[test]
    fn debug_does_not_print_the_slug() {
        let meeting = Meeting::new("t", None, None, 0).expect("valid");
        assert!(!format!("{meeting:?}").contains(meeting.slug.expose()));
    }
}
