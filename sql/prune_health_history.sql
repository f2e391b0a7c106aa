-- Health history older than the retention, in bounded batches (no long lock, no bloat spike).
WITH doomed AS (
    SELECT id FROM toygres_cms.instance_health_checks
     WHERE checked_at < now() - make_interval(secs => $1)
     LIMIT 10000
)
DELETE FROM toygres_cms.instance_health_checks h USING doomed WHERE h.id = doomed.id
