-- Health history older than the retention ($1 seconds), in batches of $2 rows (no long
-- lock, no bloat spike; the caller paces them: see config::PRUNE_DUTY).
WITH doomed AS (
    SELECT id FROM toygres_cms.instance_health_checks
     WHERE checked_at < now() - make_interval(secs => $1)
     LIMIT $2
)
DELETE FROM toygres_cms.instance_health_checks h USING doomed WHERE h.id = doomed.id
