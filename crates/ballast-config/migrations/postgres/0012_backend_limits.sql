-- The same as migrations/sqlite/0012_backend_limits.sql, in PostgreSQL's types.

ALTER TABLE pools ADD COLUMN max_requests BIGINT;
ALTER TABLE pools ADD COLUMN queue_size BIGINT;
ALTER TABLE pools ADD COLUMN queue_timeout_ms BIGINT;
ALTER TABLE pools ADD COLUMN retry_budget_percent DOUBLE PRECISION;
ALTER TABLE pools ADD COLUMN retry_budget_min BIGINT;
