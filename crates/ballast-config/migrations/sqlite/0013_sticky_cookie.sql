-- The cookie that keeps a client on its backend, if the pool keeps clients (NULL: it does not).

ALTER TABLE pools ADD COLUMN sticky_cookie TEXT;
