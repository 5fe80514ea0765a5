-- The same as migrations/sqlite/0011_slow_start.sql, in PostgreSQL's types.

ALTER TABLE pools ADD COLUMN slow_start_ms BIGINT;
