-- The same as migrations/sqlite/0014_backend_tls.sql, in PostgreSQL's types.

ALTER TABLE pools ADD COLUMN tls BIGINT;
ALTER TABLE pools ADD COLUMN ca_file TEXT;
ALTER TABLE pools ADD COLUMN server_name TEXT;
ALTER TABLE pools ADD COLUMN client_cert TEXT;
ALTER TABLE pools ADD COLUMN client_key TEXT;
ALTER TABLE pools ADD COLUMN insecure_skip_verify BIGINT;
