-- Pulled OCI images (before, images/images.json). record is the JSON of
-- the image's record in a versioned format of storage's own.
CREATE TABLE images (
    name         TEXT PRIMARY KEY,   -- canonical reference
    record       TEXT NOT NULL,
    pulled_at    INTEGER NOT NULL,   -- unix milliseconds
    last_used_at INTEGER NOT NULL
);
