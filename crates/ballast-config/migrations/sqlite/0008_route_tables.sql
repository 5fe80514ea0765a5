-- Route tables: each an ordered list of routes, kept whole as JSON (the model's `Route`), so
-- that inserting or moving a route rewrites one row instead of renumbering many, and the SQL
-- store edits a table with the same function as a follower's in-memory copy. A table exists
-- while it has routes.

CREATE TABLE route_tables (
    name     TEXT PRIMARY KEY,
    routes   TEXT NOT NULL,
    revision INTEGER NOT NULL
);
