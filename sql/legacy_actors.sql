-- Instance actors alive in the legacy store (__LEGACY__: where toygres' own server runs
-- Duroxide), each with the CMS instance it serves. $1 = the instance actor orchestrations
-- (toygres' own, and ours from a deployment whose store lived there). The instance is the
-- row that names the actor, else the row whose k8s_name the id carries (`actor-<k8s_name>`,
-- toygres' create flow and restart API), else the row whose id it carries (ours,
-- `actor-<uuid>-<suffix>`). An actor between two executions (continue-as-new) is alive, and
-- so is one whose first turn is under way (its instance row exists, its execution not yet).
SELECT i.instance_id AS actor_id, i.orchestration_name, c.id AS instance_id
  FROM __LEGACY__.instances i
  LEFT JOIN __LEGACY__.executions e
    ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
  LEFT JOIN LATERAL (
        SELECT n.id FROM toygres_cms.instances n
         WHERE n.instance_actor_orchestration_id = i.instance_id
        UNION ALL
        SELECT k.id FROM toygres_cms.instances k
         WHERE k.k8s_name = substr(i.instance_id, 7)
        UNION ALL
        SELECT u.id FROM toygres_cms.instances u
         WHERE u.id = CASE WHEN substr(i.instance_id, 7, 36)
                                ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                           THEN substr(i.instance_id, 7, 36)::uuid END
        LIMIT 1
       ) c ON true
 WHERE i.orchestration_name = ANY($1)
   AND i.instance_id LIKE 'actor-%'
   AND (e.status IS NULL OR e.status IN ('Running', 'ContinuedAsNew'))
