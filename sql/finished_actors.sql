-- Actor orchestrations that finished (exited, cancelled, failed) more than $2 seconds ago;
-- deleted in batches so Duroxide's tables hold live actors and recent history only.
SELECT i.instance_id
  FROM __DUROXIDE__.instances i
  JOIN __DUROXIDE__.executions e
    ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
 WHERE i.orchestration_name = $1
   AND e.status IN ('Completed', 'Failed')
   AND e.completed_at < now() - make_interval(secs => $2)
 LIMIT 1000
