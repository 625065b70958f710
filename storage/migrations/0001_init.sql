-- API keys. The key text is never stored: only its SHA-256 and its first
-- 12 characters (for display). signing_key_id is a fingerprint of the
-- signing key that signed it, so keys made before --reset-key show as invalid.
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    label          TEXT NOT NULL DEFAULT '',
    namespace      TEXT NOT NULL,
    key_prefix     TEXT NOT NULL,
    key_hash       TEXT NOT NULL,
    signing_key_id TEXT NOT NULL,
    created_at     INTEGER NOT NULL,  -- unix milliseconds
    expires_at     INTEGER,           -- NULL: never expires
    last_used_at   INTEGER,
    revoked_at     INTEGER
);

-- Sandboxes the server knows, running or stopped.
CREATE TABLE sandboxes (
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    config     TEXT NOT NULL,  -- JSON of the last accepted config
    state      TEXT NOT NULL,  -- running | stopped
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    stopped_at INTEGER,
    PRIMARY KEY (namespace, name)
);
