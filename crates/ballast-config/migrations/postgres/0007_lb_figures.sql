-- The same as migrations/sqlite/0007_lb_figures.sql, in PostgreSQL's types.

ALTER TABLE lb_servers ADD COLUMN cpu_cores DOUBLE PRECISION;
ALTER TABLE lb_servers ADD COLUMN resident_bytes BIGINT;
ALTER TABLE lb_servers ADD COLUMN connections BIGINT;
ALTER TABLE lb_servers ADD COLUMN requests_per_second DOUBLE PRECISION;
ALTER TABLE lb_servers ADD COLUMN scraped_ms BIGINT;
ALTER TABLE lb_servers ADD COLUMN liveness TEXT NOT NULL DEFAULT 'unknown'
    CHECK (liveness IN ('unknown', 'up', 'down'));
ALTER TABLE lb_servers ADD COLUMN liveness_reason TEXT;
