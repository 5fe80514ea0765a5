-- The LB fleet: each managed LB server upserts its row as a heartbeat. Not configuration: a
-- heartbeat does not bump the revision or touch the change log.

CREATE TABLE lb_servers (
    name              TEXT PRIMARY KEY,
    addresses         TEXT NOT NULL,
    pools             TEXT NOT NULL,
    admin             TEXT,
    applied_revision  INTEGER NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('serving', 'stopped')),
    last_heartbeat_ms INTEGER NOT NULL
);
