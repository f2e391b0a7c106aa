-- 0015_check_write_lock_bound.sql — a check's write and an actor's lease renewal wait at most
-- 2 s for their instance's row.
--
-- A check is one statement that updates the instance row (health_status, last_health_check);
-- a lease renewal (an actor's activity, and the eager lease of a start) reads it FOR SHARE
-- so that no swap of the actor id passes it. A CMS session holding the row (an open psql, a
-- slow CMS transaction) made either wait for as long as the hold lasted, with a connection of
-- the service's pool (or one of Duroxide's two activity slots) in hand: a handful of held rows
-- could take every connection of the pool, and with it every other instance's checks. Now
-- they give up after 2 s (55P03): the check is retried at the next interval, the renewal at
-- the next period (the lease outlives a missed renewal), and a held row costs its own
-- instance only. The setting holds while the function runs and is restored after it.
-- Additive: same signatures and results as before.

ALTER FUNCTION toygres_actors.record_check_seen(
    uuid, text, text, bigint, text, text, text, boolean, text, integer, text)
    SET lock_timeout = '2s';

ALTER FUNCTION toygres_actors.record_health(
    uuid, text, text, text, boolean, text, integer, text)
    SET lock_timeout = '2s';

ALTER FUNCTION toygres_actors.lease_for_actor(
    uuid, text, text, bigint, double precision, boolean)
    SET lock_timeout = '2s';
