-- The same as migrations/sqlite/0002_lb_servers.sql, in PostgreSQL's types.

CREATE TABLE lb_servers (
    name              TEXT PRIMARY KEY,
    addresses         TEXT NOT NULL,
    pools             TEXT NOT NULL,
    admin             TEXT,
    applied_revision  BIGINT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('serving', 'stopped')),
    last_heartbeat_ms BIGINT NOT NULL
);
