-- Sandboxes get a stable UUID (the v1 API's id) and the reason their last
-- start failed. Rows made before get a random UUID now.
ALTER TABLE sandboxes ADD COLUMN uuid TEXT;
ALTER TABLE sandboxes ADD COLUMN failure TEXT NOT NULL DEFAULT '';
UPDATE sandboxes SET uuid = lower(
    hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' ||
    substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))
WHERE uuid IS NULL;
CREATE UNIQUE INDEX sandboxes_uuid ON sandboxes (uuid);
