-- The key a key was made from (keys.create by a key, or the rotation of
-- such a key): its calls count against that key's rate and uses too, so a
-- family of keys never exceeds the budget of the key it descends from.
-- NULL: made by the operator.
ALTER TABLE api_keys ADD COLUMN parent TEXT;
