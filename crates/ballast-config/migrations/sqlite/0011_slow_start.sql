-- How long a backend that joins or comes back ramps up to its full share; NULL: at once.

ALTER TABLE pools ADD COLUMN slow_start_ms INTEGER;
