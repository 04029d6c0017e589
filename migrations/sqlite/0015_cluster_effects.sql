-- The columns a cluster fills (migrations/postgres/0015); a single node leaves them
-- NULL: its one worker applies every effect and keeps every session.
ALTER TABLE sfu_effects ADD COLUMN node_id TEXT;
ALTER TABLE participant_sessions ADD COLUMN node_id TEXT;
