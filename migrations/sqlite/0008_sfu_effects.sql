-- Effects on the SFU the bridge decided (chat into a meeting, closing a meeting's room),
-- stored in the transaction that decided them and applied once it has committed, each
-- once: `done_at` is set after the SFU took it. The row id is the effect's identity.
CREATE TABLE sfu_effects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    effect_json TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    done_at INTEGER
);
CREATE INDEX sfu_effects_pending ON sfu_effects (id) WHERE done_at IS NULL;
