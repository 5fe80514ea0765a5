-- The same as migrations/sqlite/0004_lb_draining.sql: an LB server may report `draining`.

ALTER TABLE lb_servers DROP CONSTRAINT lb_servers_state_check;
ALTER TABLE lb_servers ADD CONSTRAINT lb_servers_state_check
    CHECK (state IN ('serving', 'draining', 'stopped'));
