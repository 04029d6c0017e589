-- Appservice transactions already accepted: a replayed txnId is a no-op.
CREATE TABLE appservice_transactions (
    txn_id TEXT PRIMARY KEY NOT NULL,
    received_at INTEGER NOT NULL
);

-- Events received from the homeserver, processed in `seq` order, each exactly once.
CREATE TABLE inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    txn_id TEXT NOT NULL,
    room_id TEXT,
    event_json TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    processed_at INTEGER
);
CREATE INDEX inbox_pending ON inbox (seq) WHERE processed_at IS NULL;

-- Requests to the homeserver, retried until they succeed or fail for good.
-- `txn_id` is reused on every retry so the homeserver de-duplicates sends.
CREATE TABLE outbound (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT,
    txn_id TEXT NOT NULL UNIQUE,
    request_json TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT,
    result_json TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX outbound_pending ON outbound (id) WHERE state = 'pending';

-- What the bot knows of the rooms it is in.
CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    encrypted INTEGER NOT NULL,
    encryption_notice_sent INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
