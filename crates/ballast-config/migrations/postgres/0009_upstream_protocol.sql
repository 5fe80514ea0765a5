-- The same as migrations/sqlite/0009_upstream_protocol.sql.

ALTER TABLE pools ADD COLUMN protocol TEXT;
