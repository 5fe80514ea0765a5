-- An LB server reports `draining` between SIGTERM and its exit, so that DNS and the dashboard
-- stop sending it clients before it is gone. SQLite cannot change a CHECK in place: the table is
-- rebuilt with its rows.

CREATE TABLE lb_servers_next (
    name              TEXT PRIMARY KEY,
    addresses         TEXT NOT NULL,
    pools             TEXT NOT NULL,
    admin             TEXT,
    applied_revision  INTEGER NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('serving', 'draining', 'stopped')),
    last_heartbeat_ms INTEGER NOT NULL
);
INSERT INTO lb_servers_next SELECT * FROM lb_servers;
DROP TABLE lb_servers;
ALTER TABLE lb_servers_next RENAME TO lb_servers;
