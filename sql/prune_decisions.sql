-- Decisions older than the retention, in bounded batches.
WITH doomed AS (
    SELECT id FROM toygres_actors.decisions
     WHERE decided_at < now() - make_interval(secs => $1)
     LIMIT 10000
)
DELETE FROM toygres_actors.decisions d USING doomed WHERE d.id = doomed.id
