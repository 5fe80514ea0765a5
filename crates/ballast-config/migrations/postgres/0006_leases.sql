-- The same as migrations/sqlite/0006_leases.sql, in PostgreSQL's types.

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    token      BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);

CREATE TABLE fences (
    name  TEXT PRIMARY KEY,
    token BIGINT NOT NULL
);
