-- The orchestrator's health checking: per-pool rise/fall counts and phi accrual parameters, and
-- per backend the phi value and the reason of the last verdict.

ALTER TABLE pools ADD COLUMN health_rise INTEGER;
ALTER TABLE pools ADD COLUMN health_fall INTEGER;
ALTER TABLE pools ADD COLUMN phi_threshold REAL;
ALTER TABLE pools ADD COLUMN phi_window INTEGER;
ALTER TABLE pools ADD COLUMN phi_min_std_dev_ms INTEGER;
ALTER TABLE pools ADD COLUMN phi_acceptable_pause_ms INTEGER;
ALTER TABLE backends ADD COLUMN phi REAL;
ALTER TABLE backends ADD COLUMN health_reason TEXT;
