-- Several nodes on one database (docs/admin.md, "Clustering"). SQLite stays single-node
-- and has no such tables.

-- Every node that ever ran, with its last heartbeat: a node whose heartbeat is older
-- than three intervals is dead. The load figures guide where new meetings go.
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY NOT NULL,
    node_url TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    -- The interval the node promised, so that others judge it by its own figure.
    heartbeat_ms BIGINT NOT NULL,
    participants BIGINT NOT NULL DEFAULT 0,
    rooms BIGINT NOT NULL DEFAULT 0,
    -- Share of one core used since the previous heartbeat, in per mille; NULL: unknown.
    cpu_permille BIGINT
);

-- The one row of the leadership: each new leader, holding the advisory lock, increments
-- `epoch` in a transaction; every claim and send checks it, so a leader that stalled and
-- lost the lock acts no more once another took over.
CREATE TABLE leadership (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL,
    node_id TEXT,
    since BIGINT
);
INSERT INTO leadership (id, epoch, node_id, since) VALUES (1, 0, NULL, NULL);
