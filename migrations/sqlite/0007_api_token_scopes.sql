-- Bot API tokens get a public id (named in audit logs and in the ids of the ghosts a
-- token posts through, so two tokens never share a ghost), a scope (JSON: the rooms,
-- the servers whose rooms, or all rooms it may reach) and a read-only flag.
-- Tokens made before scopes existed keep working on every room, marked `legacy` so
-- that the service warns about them at every start until they are replaced.
ALTER TABLE api_tokens ADD COLUMN id TEXT;
UPDATE api_tokens SET id = lower(hex(randomblob(8)));
CREATE UNIQUE INDEX api_tokens_by_id ON api_tokens (id);
ALTER TABLE api_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT '{"all_rooms":true,"legacy":true}';
ALTER TABLE api_tokens ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;
