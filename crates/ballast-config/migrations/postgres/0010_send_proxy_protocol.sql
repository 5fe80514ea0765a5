-- The same as migrations/sqlite/0010_send_proxy_protocol.sql.

ALTER TABLE pools ADD COLUMN send_proxy_protocol TEXT;
