-- Who may join: a meeting's access level, the codes that bind a page to a Matrix user,
-- the lobby, and every join grant we issued (so a removal or a departure from the room
-- reaches the participant's connections, and their old tokens).

-- `public`, `trusted` or `members`; meetings made before this migration stay as open as
-- they were. `lobby_notice_id`: the queued lobby notice (its outbound row), edited as
-- guests come and go.
ALTER TABLE meetings ADD COLUMN access TEXT NOT NULL DEFAULT 'public';
ALTER TABLE meetings ADD COLUMN lobby_notice_id BIGINT;

-- A page's request to be recognised as a Matrix user. `code` is what the person types
-- (`!visio entrer <code>`); `browser` the pseudonym of the browser that asked (only it
-- may use the result); `prompt_outbound_id` the private confirmation the bot sent.
-- state: pending → confirming → verified → used, or expired.
CREATE TABLE verifications (
    id TEXT PRIMARY KEY NOT NULL,
    meeting_id TEXT NOT NULL,
    code TEXT NOT NULL,
    browser TEXT NOT NULL,
    state TEXT NOT NULL,
    user_id TEXT,
    prompt_outbound_id BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX verifications_code ON verifications (code);
CREATE INDEX verifications_expiry ON verifications (expires_at);

-- Guests waiting for a moderator. `number` is stable within the meeting (what
-- `!visio admettre <n>` names); `identity` the LiveKit identity an admission grants.
-- state: waiting → admitted | refused | expired.
CREATE TABLE lobby_requests (
    id TEXT PRIMARY KEY NOT NULL,
    meeting_id TEXT NOT NULL,
    number BIGINT NOT NULL,
    name TEXT NOT NULL,
    user_id TEXT,
    browser TEXT NOT NULL,
    identity TEXT NOT NULL,
    state TEXT NOT NULL,
    decided_by TEXT,
    reason TEXT,
    created_at BIGINT NOT NULL,
    decided_at BIGINT
);
CREATE UNIQUE INDEX lobby_requests_number ON lobby_requests (meeting_id, number);

-- Every identity a token was issued for: whose it is (`user_id` for an identified member)
-- and how it got in (`member`, `admitted`, `public`). `revoked_at` refuses its tokens for
-- good (a removal, a departure from the room, a stricter level).
CREATE TABLE join_grants (
    meeting_id TEXT NOT NULL,
    identity TEXT NOT NULL,
    user_id TEXT,
    name TEXT NOT NULL,
    via TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoke_reason TEXT,
    PRIMARY KEY (meeting_id, identity)
);
CREATE INDEX join_grants_user ON join_grants (meeting_id, user_id);

-- The bot's one-to-one room with a user, where it asks for private confirmations.
CREATE TABLE direct_rooms (
    user_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
