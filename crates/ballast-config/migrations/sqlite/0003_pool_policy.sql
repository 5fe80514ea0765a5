-- Per-pool policy: retries and timeouts that override the LB's defaults, and the health check the
-- orchestrator runs against the pool's backends.

ALTER TABLE pools ADD COLUMN retries INTEGER;
ALTER TABLE pools ADD COLUMN connect_timeout_ms INTEGER;
ALTER TABLE pools ADD COLUMN response_timeout_ms INTEGER;
ALTER TABLE pools ADD COLUMN health_path TEXT;
ALTER TABLE pools ADD COLUMN health_interval_ms INTEGER;
ALTER TABLE pools ADD COLUMN health_timeout_ms INTEGER;
