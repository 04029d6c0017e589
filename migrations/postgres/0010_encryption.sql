-- End-to-end encryption. What the crypto store (a second database, owned by
-- matrix-sdk-crypto) cannot hold: which device is ours, where the to-device stream stands,
-- the encryption input not yet fed to it, events waiting for their room key, and what
-- the outbound worker needs to encrypt for a room (its members and settings).

-- One value per name: `device_id`, `sync_token`, `cross_signing` (exported keys,
-- encrypted with encryption.passphrase), `retired_device_id`.
CREATE TABLE crypto_state (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- Encryption input (to-device events, device-list changes, key counts) as it arrived with
-- a sync response or a transaction, fed to the crypto store in `seq` order and deleted
-- after; feeding one twice (a crash in between) is harmless.
CREATE TABLE crypto_inbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    input_json TEXT NOT NULL,
    received_at BIGINT NOT NULL
);

-- Encrypted events whose room key has not arrived: their inbox row is marked processed
-- and made pending again when the key arrives, or dropped (counted) after a while.
CREATE TABLE parked_events (
    inbox_seq BIGINT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    parked_at BIGINT NOT NULL
);
CREATE INDEX parked_events_session ON parked_events (session_id);

-- A room's members as its membership events say, once loaded from the homeserver.
CREATE TABLE room_members (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- `encryption_json`: the room's m.room.encryption content (rotation); `history_visibility`
-- decides whether invited members get the room key; `members_loaded`: room_members holds
-- the whole list (else the outbound worker asks the homeserver once).
ALTER TABLE rooms ADD COLUMN encryption_json TEXT;
ALTER TABLE rooms ADD COLUMN history_visibility TEXT;
ALTER TABLE rooms ADD COLUMN members_loaded BIGINT NOT NULL DEFAULT 0;
