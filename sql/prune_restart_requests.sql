-- Restart requests handled longer ago than the retention ($1 seconds), in one batch of at
-- most 10,000; pending ones are never touched. Fenced by the leader's term ($2 name,
-- $3 epoch, $4 term) as prune_decisions.sql is.
WITH doomed AS (
    SELECT id FROM toygres_cms.actor_restart_requests
     WHERE handled_at < now() - make_interval(secs => $1)
       AND ($2::text IS NULL OR (SELECT true FROM toygres_actors.assert_term($2, $3, $4)))
     LIMIT 10000
)
DELETE FROM toygres_cms.actor_restart_requests r USING doomed WHERE r.id = doomed.id
