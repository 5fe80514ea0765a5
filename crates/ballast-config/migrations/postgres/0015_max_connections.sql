-- The same as migrations/sqlite/0015_max_connections.sql, in PostgreSQL's types.

ALTER TABLE pools ADD COLUMN max_connections BIGINT;
