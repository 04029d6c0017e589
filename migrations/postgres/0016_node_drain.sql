-- Draining a node (docs/admin.md, "Rolling upgrades"): `tchap-visio node drain` or
-- SIGTERM sets it; placement then skips the node for new rooms, while rooms already
-- placed there stay until they end, and the node gives up the leadership. A node's
-- start clears it: a restarted node is the upgraded one, back in service.
ALTER TABLE nodes ADD COLUMN draining BOOLEAN NOT NULL DEFAULT FALSE;
