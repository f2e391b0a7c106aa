-- Rows of replicas gone for longer than the grace window ($1 seconds since their heartbeat
-- expired, or since they drained) that hold no probe lease by their name (leases belong to
-- a name: a row whose name still holds one is kept until a live replica claims it). In one
-- batch of at most 10,000; fenced by the leader's term ($2 name, $3 epoch, $4 term) as
-- prune_decisions.sql is. A replica that registers its name again meanwhile has a future
-- expiry, which the DELETE re-checks on the row it waited for.
WITH doomed AS (
    SELECT r.name FROM toygres_actors.replicas r
     WHERE r.expires_at < now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM toygres_actors.probe_leases l WHERE l.holder = r.name)
       AND ($2::text IS NULL OR (SELECT true FROM toygres_actors.assert_term($2, $3, $4)))
     LIMIT 10000
)
DELETE FROM toygres_actors.replicas r USING doomed
 WHERE r.name = doomed.name
   AND r.expires_at < now() - make_interval(secs => $1)
