-- Meetings: `id` is public (LiveKit room name, API paths, logs); `slug` is the secret
-- of the join link. `state` is scheduled, running or ended; times are ms since the epoch.
CREATE TABLE meetings (
    id TEXT PRIMARY KEY NOT NULL,
    slug TEXT NOT NULL,
    title TEXT NOT NULL,
    matrix_room_id TEXT,
    creator TEXT,
    state TEXT NOT NULL CHECK (state IN ('scheduled', 'running', 'ended')),
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    ended_at INTEGER
);
CREATE UNIQUE INDEX meetings_slug ON meetings (slug);
CREATE INDEX meetings_room ON meetings (matrix_room_id, created_at)
    WHERE matrix_room_id IS NOT NULL;
