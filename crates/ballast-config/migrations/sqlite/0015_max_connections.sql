-- The connections an LB keeps open to each backend of a pool, busy or idle. NULL: no cap.

ALTER TABLE pools ADD COLUMN max_connections INTEGER;
