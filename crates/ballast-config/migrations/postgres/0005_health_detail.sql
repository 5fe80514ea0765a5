-- The same as migrations/sqlite/0005_health_detail.sql, in PostgreSQL's types.

ALTER TABLE pools ADD COLUMN health_rise BIGINT;
ALTER TABLE pools ADD COLUMN health_fall BIGINT;
ALTER TABLE pools ADD COLUMN phi_threshold DOUBLE PRECISION;
ALTER TABLE pools ADD COLUMN phi_window BIGINT;
ALTER TABLE pools ADD COLUMN phi_min_std_dev_ms BIGINT;
ALTER TABLE pools ADD COLUMN phi_acceptable_pause_ms BIGINT;
ALTER TABLE backends ADD COLUMN phi DOUBLE PRECISION;
ALTER TABLE backends ADD COLUMN health_reason TEXT;
