-- Which leased writer made each change, when one did: the fence's name and the token it
-- presented. Fencing refuses an older token than the newest seen, so for each name the tokens
-- never go down in revision order; a history check reads this to show it.

ALTER TABLE changes ADD COLUMN fence_name TEXT;
ALTER TABLE changes ADD COLUMN fence_token INTEGER;
