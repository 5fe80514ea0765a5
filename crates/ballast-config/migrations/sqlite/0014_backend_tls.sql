-- TLS to a pool's backends: whether, the CA file their certificates are checked against, the name
-- sent and checked, the client certificate for mutual TLS, and the explicit opt-out of
-- verification. Flags are 0 or 1; NULL keeps each default (no TLS).

ALTER TABLE pools ADD COLUMN tls INTEGER;
ALTER TABLE pools ADD COLUMN ca_file TEXT;
ALTER TABLE pools ADD COLUMN server_name TEXT;
ALTER TABLE pools ADD COLUMN client_cert TEXT;
ALTER TABLE pools ADD COLUMN client_key TEXT;
ALTER TABLE pools ADD COLUMN insecure_skip_verify INTEGER;
