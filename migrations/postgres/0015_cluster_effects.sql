-- Effects and attendance across nodes (docs/admin.md, "Clustering").

-- The node whose SFU an effect is for: the meeting's placement when the effect was
-- stored (NULL: the room was placed nowhere, or a single node). Each node applies its
-- own rows; the leader applies the NULL ones.
ALTER TABLE sfu_effects ADD COLUMN node_id TEXT;
CREATE INDEX sfu_effects_pending_node ON sfu_effects (node_id, id) WHERE done_at IS NULL;

-- The node whose SFU reported a session: it keeps its own sessions alive, and when it
-- dies the leader closes them (the gap shows in the attendance).
ALTER TABLE participant_sessions ADD COLUMN node_id TEXT;
CREATE INDEX participant_sessions_open_node ON participant_sessions (node_id)
    WHERE left_at IS NULL;

-- Wakes the node an effect is for, at commit (a notification of a transaction that
-- rolls back is never sent). The payload is the node, '' for the leader.
CREATE FUNCTION sfu_effects_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tchap_visio_effects', COALESCE(NEW.node_id, ''));
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER sfu_effects_wake AFTER INSERT ON sfu_effects
    FOR EACH ROW EXECUTE FUNCTION sfu_effects_notify();

-- Wakes every node's long polls (a guest in the lobby, a page waiting for an identity
-- code) when a decision was taken, or the meeting ended, on any node.
CREATE FUNCTION access_changed_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tchap_visio_access', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER lobby_requests_wake AFTER INSERT OR UPDATE ON lobby_requests
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed_notify();
CREATE TRIGGER verifications_wake AFTER INSERT OR UPDATE ON verifications
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed_notify();
CREATE TRIGGER meetings_state_wake AFTER UPDATE OF state ON meetings
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed_notify();
