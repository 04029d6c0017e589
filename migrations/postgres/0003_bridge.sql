-- The room–meeting bridge: the thread each meeting lives in, who attended when, what
-- was said, and the ghosts that speak for meeting guests in Matrix rooms.

-- Event id of the link notice (the thread root), once the homeserver accepted it.
ALTER TABLE meetings ADD COLUMN thread_root_event_id TEXT;
-- Most participants present at once.
ALTER TABLE meetings ADD COLUMN peak_participants BIGINT NOT NULL DEFAULT 0;
-- When the last participant left (NULL while someone is in): the grace period runs from it.
ALTER TABLE meetings ADD COLUMN empty_since BIGINT;
-- State key of the widget set in the room for this meeting, if any (removed at the end).
ALTER TABLE meetings ADD COLUMN widget_state_key TEXT;
CREATE INDEX meetings_active ON meetings (matrix_room_id) WHERE state != 'ended';

-- One row per connection of a participant (a rejoin is a new session).
CREATE TABLE participant_sessions (
    meeting_id TEXT NOT NULL REFERENCES meetings (id),
    sid TEXT NOT NULL,
    identity TEXT NOT NULL,
    -- The part of the identity that stays the same across rejoins from one browser.
    attendee_key TEXT NOT NULL,
    display_name TEXT NOT NULL,
    matrix_user_id TEXT,
    joined_at BIGINT NOT NULL,
    left_at BIGINT,
    last_seen_at BIGINT NOT NULL,
    PRIMARY KEY (meeting_id, sid)
);
CREATE INDEX participant_sessions_open ON participant_sessions (meeting_id) WHERE left_at IS NULL;

-- Chat of a meeting, from the meeting (`meeting`) or from the Matrix room (`matrix`).
CREATE TABLE chat_messages (
    meeting_id TEXT NOT NULL REFERENCES meetings (id),
    message_id TEXT NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('meeting', 'matrix')),
    sender_identity TEXT,
    sender_name TEXT NOT NULL,
    matrix_user_id TEXT,
    body TEXT NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (meeting_id, message_id)
);

-- Ghost users we registered, and the rooms they are in.
CREATE TABLE ghosts (
    user_id TEXT PRIMARY KEY NOT NULL,
    display_name TEXT NOT NULL,
    registered_at BIGINT NOT NULL
);
CREATE TABLE ghost_rooms (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- Power levels of rooms, from the state events the homeserver sends us.
ALTER TABLE rooms ADD COLUMN power_levels_json TEXT;
