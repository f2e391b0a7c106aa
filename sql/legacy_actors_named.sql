-- Which of the ids $2 are instance actors alive in the legacy store (__LEGACY__), with their
-- orchestration name ($1 = the instance actor orchestrations). One instance's lookup: the id
-- its row names and `actor-<k8s_name>`; key lookups only. A start still queued counts: toygres'
-- create flow writes the id on the row in the same turn that enqueues the actor's start, so
-- the row can name an actor that its runtime has not created yet (a cancel queued behind the
-- start ends it at its first turn).
SELECT i.instance_id AS actor_id, i.orchestration_name
  FROM __LEGACY__.instances i
  LEFT JOIN __LEGACY__.executions e
    ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
 WHERE i.instance_id = ANY($2)
   AND i.orchestration_name = ANY($1)
   AND (e.status IS NULL OR e.status IN ('Running', 'ContinuedAsNew'))
UNION
SELECT q.instance_id, q.work_item::jsonb -> 'StartOrchestration' ->> 'orchestration'
  FROM __LEGACY__.orchestrator_queue q
 WHERE q.instance_id = ANY($2)
   AND q.work_item LIKE '{"StartOrchestration"%'
   AND q.work_item::jsonb -> 'StartOrchestration' ->> 'orchestration' = ANY($1)
   AND NOT EXISTS (SELECT 1 FROM __LEGACY__.instances x WHERE x.instance_id = q.instance_id)
