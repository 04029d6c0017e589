-- Synapse on SQLite numbers appservice transactions again from 1 after a restart, so a
-- known txn id is a replay only if it carries the same events: `events_digest` is the
-- SHA-256 (hex) of the transaction's sorted event ids. NULL for rows stored before this
-- migration: such an id, sent again, is taken as a new transaction (events already in the
-- inbox are still skipped one by one).
ALTER TABLE appservice_transactions ADD COLUMN events_digest TEXT;
