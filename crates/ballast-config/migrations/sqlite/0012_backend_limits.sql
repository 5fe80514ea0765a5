-- What protects a pool's backends: requests in flight per backend, the queue in front of them,
-- and the retry budget. NULL keeps each default (no limit, no queue, 20% with a floor of 3).

ALTER TABLE pools ADD COLUMN max_requests INTEGER;
ALTER TABLE pools ADD COLUMN queue_size INTEGER;
ALTER TABLE pools ADD COLUMN queue_timeout_ms INTEGER;
ALTER TABLE pools ADD COLUMN retry_budget_percent REAL;
ALTER TABLE pools ADD COLUMN retry_budget_min INTEGER;
