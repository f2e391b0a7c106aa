-- Decisions older than the retention ($1 seconds), in bounded batches; fenced by the
-- leader's term ($2 name, $3 epoch, $4 term) as prune_health_history.sql is.
WITH doomed AS (
    SELECT id FROM toygres_actors.decisions
     WHERE decided_at < now() - make_interval(secs => $1)
       AND ($2::text IS NULL OR (SELECT true FROM toygres_actors.assert_term($2, $3, $4)))
     LIMIT 10000
)
DELETE FROM toygres_actors.decisions d USING doomed WHERE d.id = doomed.id
