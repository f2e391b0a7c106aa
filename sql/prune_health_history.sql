-- Health history older than the retention ($1 seconds), in batches of $2 rows (no long
-- lock, no bloat spike; the caller paces them: see config::PRUNE_DUTY). Fenced by the
-- leader's term when $3 (name), $4 (epoch), $5 (term) are given: a leader that lost its
-- term mid-pass (frozen, partitioned) deletes nothing more (toygres_actors.assert_term
-- raises TA001 before the scan; NULLs: unfenced, for tools and benchmarks).
WITH doomed AS (
    SELECT id FROM toygres_cms.instance_health_checks
     WHERE checked_at < now() - make_interval(secs => $1)
       AND ($3::text IS NULL OR (SELECT true FROM toygres_actors.assert_term($3, $4, $5)))
     LIMIT $2
)
DELETE FROM toygres_cms.instance_health_checks h USING doomed WHERE h.id = doomed.id
