-- Every CMS instance with Duroxide's view of its current actor, in one query (the resync,
-- the fleet gauges, `status`). Connection strings are not selected, only whether one exists.
-- Progress is the store's `instances.updated_at` (bumped by every turn's ack); queued work is
-- one set of the instance ids in either queue, joined once (not a subquery per row).
WITH queued AS (
    SELECT instance_id FROM __DUROXIDE__.orchestrator_queue
    UNION
    SELECT instance_id FROM __DUROXIDE__.worker_queue WHERE instance_id IS NOT NULL
)
SELECT c.id,
       c.k8s_name,
       c.dns_name,
       c.state::text AS state,
       c.health_status::text AS health_status,
       c.instance_actor_orchestration_id AS actor_id,
       c.last_health_check,
       c.created_at,
       c.updated_at,
       (COALESCE(c.dns_connection_string, c.ip_connection_string) IS NOT NULL) AS has_target,
       e.status AS actor_status,
       i.created_at AS actor_created_at,
       (i.instance_id IS NULL AND q.instance_id IS NOT NULL) AS actor_pending,
       COALESCE(i.updated_at, e.started_at) AS actor_last_progress,
       (q.instance_id IS NOT NULL) AS actor_has_work,
       i.current_execution_id AS actor_execution_id
  FROM toygres_cms.instances c
  LEFT JOIN __DUROXIDE__.instances i ON i.instance_id = c.instance_actor_orchestration_id
  LEFT JOIN __DUROXIDE__.executions e
         ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
  LEFT JOIN queued q ON q.instance_id = c.instance_actor_orchestration_id
 ORDER BY c.k8s_name
