-- The configuration: pools and their backends, one global revision, and the change log that
-- managed LB servers catch up from. Every write bumps the revision and appends one change in the
-- same transaction.

CREATE TABLE revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0);

CREATE TABLE pools (
    name              TEXT PRIMARY KEY,
    algorithm         TEXT NOT NULL,
    table_size        INTEGER,
    points_per_weight INTEGER,
    load_factor       REAL,
    peak_ewma_ms      INTEGER,
    hash_key          TEXT NOT NULL,
    dns_name          TEXT,
    revision          INTEGER NOT NULL
);

CREATE TABLE backends (
    pool        TEXT NOT NULL REFERENCES pools (name) ON DELETE CASCADE,
    address     TEXT NOT NULL,
    weight      INTEGER NOT NULL CHECK (weight >= 0),
    admin_state TEXT NOT NULL CHECK (admin_state IN ('active', 'draining', 'disabled')),
    health      TEXT NOT NULL CHECK (health IN ('unknown', 'healthy', 'unhealthy')),
    revision    INTEGER NOT NULL,
    PRIMARY KEY (pool, address)
);

CREATE TABLE changes (
    revision  INTEGER PRIMARY KEY,
    entity    TEXT NOT NULL,
    operation TEXT NOT NULL,
    value     TEXT NOT NULL,
    at_ms     INTEGER NOT NULL
);
