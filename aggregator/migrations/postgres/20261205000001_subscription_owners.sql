-- Who created a durable subscription: 'cert:<identity>', 'token:<name>' or
-- 'local' (the operator of an unauthenticated loopback REST port). Readers see
-- and change only their own; '' (subscriptions made before roles existed) only
-- an admin may manage.
ALTER TABLE event_cursors ADD COLUMN owner TEXT NOT NULL DEFAULT '';
