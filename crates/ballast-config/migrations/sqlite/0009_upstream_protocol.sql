-- The protocol LBs speak to a pool's backends (`http1`, `h2c`); NULL keeps the default, HTTP/1.1.

ALTER TABLE pools ADD COLUMN protocol TEXT;
