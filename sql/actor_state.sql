-- Duroxide's view of one actor (orchestration instance $1), read straight from the store in
-- one round trip: the status of its current execution, when it last made progress, and whether any work is queued or in flight for it (a queued
-- start, a pending timer, a running activity). No row = the id is unknown to Duroxide.
-- Progress = `instances.updated_at`, which the store bumps on every turn's ack.
SELECT COALESCE(e.status, 'Pending') AS status,
       COALESCE(i.updated_at, e.started_at, i.created_at) AS last_progress,
       (EXISTS (SELECT 1 FROM __DUROXIDE__.orchestrator_queue oq WHERE oq.instance_id = q.id)
        OR EXISTS (SELECT 1 FROM __DUROXIDE__.worker_queue wq WHERE wq.instance_id = q.id)) AS has_work,
       i.current_execution_id AS execution_id
  FROM (SELECT $1::text AS id) q
  LEFT JOIN __DUROXIDE__.instances i ON i.instance_id = q.id
  LEFT JOIN __DUROXIDE__.executions e
         ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
 WHERE i.instance_id IS NOT NULL
    OR EXISTS (SELECT 1 FROM __DUROXIDE__.orchestrator_queue oq WHERE oq.instance_id = q.id)
