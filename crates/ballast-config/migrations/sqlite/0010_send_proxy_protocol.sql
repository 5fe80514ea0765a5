-- The PROXY protocol header (`v1`, `v2`) LBs open each backend connection of a pool with; NULL
-- sends none.

ALTER TABLE pools ADD COLUMN send_proxy_protocol TEXT;
