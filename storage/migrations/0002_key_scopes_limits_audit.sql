-- Scopes, limits and rotation of API keys, and the audit log.
-- scopes: "*" (every scope: keys made before scopes keep full access) or
-- scope names joined by commas. Rates are specs such as "600/m"; '' means
-- the server's default from config.toml. A rotated key's revoked_at lies in
-- the future until its grace period ends.
ALTER TABLE api_keys ADD COLUMN scopes           TEXT NOT NULL DEFAULT '*';
ALTER TABLE api_keys ADD COLUMN rate_limit       TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN start_rate_limit TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN max_uses         INTEGER;            -- NULL: unlimited
ALTER TABLE api_keys ADD COLUMN uses             INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN replaced_by      TEXT;               -- id of the key that rotated it

-- One row per authenticated call that changed something and per refused
-- call. Never the key text, code, commands or their output.
CREATE TABLE audit_events (
    id        INTEGER PRIMARY KEY,
    time      INTEGER NOT NULL,            -- unix milliseconds
    key_id    TEXT NOT NULL DEFAULT '',
    key_label TEXT NOT NULL DEFAULT '',
    key_namespace TEXT NOT NULL DEFAULT '',    -- the caller's claim: "*", a namespace, '' if unknown
    namespace TEXT NOT NULL DEFAULT '',        -- the namespace acted on
    method    TEXT NOT NULL DEFAULT '',
    sandbox   TEXT NOT NULL DEFAULT '',
    outcome   TEXT NOT NULL,               -- ok | error | unauthenticated | forbidden | rate_limited | dropped
    code      INTEGER NOT NULL DEFAULT 0,  -- JSON-RPC error code, 0 for ok
    detail    TEXT NOT NULL DEFAULT '',
    remote    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_time ON audit_events (time);
CREATE INDEX audit_events_key ON audit_events (key_id, time);
