-- Leader election without Redis: a lease row per name (its holder, its fencing token and when it
-- expires, by the database's clock), and the newest fencing token each name's writes carried.

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    token      INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);

CREATE TABLE fences (
    name  TEXT PRIMARY KEY,
    token INTEGER NOT NULL
);
