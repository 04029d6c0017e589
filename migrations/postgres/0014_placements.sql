-- Where each meeting's SFU room lives in a cluster (docs/admin.md, "Clustering"). The
-- first join places it; the primary key makes that placement the only one, so two
-- nodes racing on the same first join read the same row back.
CREATE TABLE room_placements (
    meeting_id TEXT PRIMARY KEY NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    placed_at BIGINT NOT NULL
);
CREATE INDEX room_placements_node ON room_placements (node_id);

-- A placement ends with its meeting, in the same transaction as the meeting's end,
-- whichever code path ends it.
CREATE FUNCTION room_placements_end() RETURNS trigger AS $$
BEGIN
    DELETE FROM room_placements WHERE meeting_id = NEW.id;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER meetings_end_placement AFTER UPDATE OF state ON meetings
    FOR EACH ROW WHEN (NEW.state = 'ended') EXECUTE FUNCTION room_placements_end();
