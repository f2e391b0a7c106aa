-- sql/fleet.sql for a set of instances ($1 = uuid[]): the set-based reconcile of a storm
-- reads every row of a batch, with Duroxide's view of its current actor, in one query.
WITH c AS (
    SELECT * FROM toygres_cms.instances WHERE id = ANY($1)
), queued AS (
    SELECT oq.instance_id FROM __DUROXIDE__.orchestrator_queue oq
      JOIN c ON oq.instance_id = c.instance_actor_orchestration_id
    UNION
    SELECT wq.instance_id FROM __DUROXIDE__.worker_queue wq
      JOIN c ON wq.instance_id = c.instance_actor_orchestration_id
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
  FROM c
  LEFT JOIN __DUROXIDE__.instances i ON i.instance_id = c.instance_actor_orchestration_id
  LEFT JOIN __DUROXIDE__.executions e
         ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
  LEFT JOIN queued q ON q.instance_id = c.instance_actor_orchestration_id
