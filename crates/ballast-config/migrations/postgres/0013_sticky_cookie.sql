-- The same as migrations/sqlite/0013_sticky_cookie.sql, in PostgreSQL's types.

ALTER TABLE pools ADD COLUMN sticky_cookie TEXT;
