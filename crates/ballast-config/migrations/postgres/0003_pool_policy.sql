-- The same as migrations/sqlite/0003_pool_policy.sql, in PostgreSQL's types.

ALTER TABLE pools ADD COLUMN retries BIGINT;
ALTER TABLE pools ADD COLUMN connect_timeout_ms BIGINT;
ALTER TABLE pools ADD COLUMN response_timeout_ms BIGINT;
ALTER TABLE pools ADD COLUMN health_path TEXT;
ALTER TABLE pools ADD COLUMN health_interval_ms BIGINT;
ALTER TABLE pools ADD COLUMN health_timeout_ms BIGINT;
