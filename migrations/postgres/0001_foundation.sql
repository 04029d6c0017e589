-- Appservice transactions already accepted: a replayed txnId is a no-op.
CREATE TABLE appservice_transactions (
    txn_id TEXT PRIMARY KEY NOT NULL,
    received_at BIGINT NOT NULL
);

-- Events received from the homeserver, processed in `seq` order, each exactly once.
CREATE TABLE inbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    txn_id TEXT NOT NULL,
    room_id TEXT,
    event_json TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    processed_at BIGINT
);
CREATE INDEX inbox_pending ON inbox (seq) WHERE processed_at IS NULL;

-- Requests to the homeserver, retried until they succeed or fail for good.
-- `txn_id` is reused on every retry so the homeserver de-duplicates sends.
CREATE TABLE outbound (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id TEXT,
    txn_id TEXT NOT NULL UNIQUE,
    request_json TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    result_json TEXT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX outbound_pending ON outbound (id) WHERE state = 'pending';

-- What the bot knows of the rooms it is in.
CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    encrypted BIGINT NOT NULL,
    encryption_notice_sent BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
