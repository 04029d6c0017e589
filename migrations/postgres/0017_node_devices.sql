-- A bot device per cluster node (docs/admin.md, "Clustering"): each node has its own
-- crypto store, hence its own device, to-device stream and encryption input. A node's
-- rows in `crypto_state` are named `device_id:<node_id>` and `sync_token:<node_id>`; the
-- unsuffixed names stay a single node's. `cross_signing` is shared: every node signs its
-- device with the same identity.

-- Whose device the input is for: '' for a single node.
ALTER TABLE crypto_inbox ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
CREATE INDEX crypto_inbox_node ON crypto_inbox (node_id, seq);
