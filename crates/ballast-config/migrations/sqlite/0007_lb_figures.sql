-- What the orchestrator observes of each LB server: the latest figures scraped from its /metrics,
-- and its verdict on whether the server is alive. Not configuration: no revision, no change log.

ALTER TABLE lb_servers ADD COLUMN cpu_cores REAL;
ALTER TABLE lb_servers ADD COLUMN resident_bytes INTEGER;
ALTER TABLE lb_servers ADD COLUMN connections INTEGER;
ALTER TABLE lb_servers ADD COLUMN requests_per_second REAL;
ALTER TABLE lb_servers ADD COLUMN scraped_ms INTEGER;
ALTER TABLE lb_servers ADD COLUMN liveness TEXT NOT NULL DEFAULT 'unknown'
    CHECK (liveness IN ('unknown', 'up', 'down'));
ALTER TABLE lb_servers ADD COLUMN liveness_reason TEXT;
