-- The same schema as migrations/sqlite/0001_config.sql, in PostgreSQL's types.

CREATE TABLE revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0);

CREATE TABLE pools (
    name              TEXT PRIMARY KEY,
    algorithm         TEXT NOT NULL,
    table_size        BIGINT,
    points_per_weight BIGINT,
    load_factor       DOUBLE PRECISION,
    peak_ewma_ms      BIGINT,
    hash_key          TEXT NOT NULL,
    dns_name          TEXT,
    revision          BIGINT NOT NULL
);

CREATE TABLE backends (
    pool        TEXT NOT NULL REFERENCES pools (name) ON DELETE CASCADE,
    address     TEXT NOT NULL,
    weight      BIGINT NOT NULL CHECK (weight >= 0),
    admin_state TEXT NOT NULL CHECK (admin_state IN ('active', 'draining', 'disabled')),
    health      TEXT NOT NULL CHECK (health IN ('unknown', 'healthy', 'unhealthy')),
    revision    BIGINT NOT NULL,
    PRIMARY KEY (pool, address)
);

CREATE TABLE changes (
    revision  BIGINT PRIMARY KEY,
    entity    TEXT NOT NULL,
    operation TEXT NOT NULL,
    value     TEXT NOT NULL,
    at_ms     BIGINT NOT NULL
);
