-- Bot API tokens: only the SHA-256 of each token is kept (hex); the token itself is
-- printed once by `api-token create`. A revoked token stays listed, refused.
CREATE TABLE api_tokens (
    name TEXT PRIMARY KEY NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at INTEGER
);

-- Webhook deliveries: one row per event and receiver, `id` is the delivery id sent in
-- X-Tchap-Visio-Delivery (kept across retries), `body` the exact JSON sent every time.
-- `state` is pending, delivered or failed (gave up); the receiver's secret is never stored.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
-- Each receiver's queue is read on its own, so one receiver's backlog never hides another's.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (url, next_attempt_at)
    WHERE state = 'pending';
