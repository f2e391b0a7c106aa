-- Every actor orchestration Duroxide runs right now ($1 = the actor orchestration name); one
-- between two executions (continue-as-new: the current one closed, the next one queued) runs.
SELECT i.instance_id
  FROM __DUROXIDE__.instances i
  JOIN __DUROXIDE__.executions e
    ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
 WHERE i.orchestration_name = $1 AND e.status IN ('Running', 'ContinuedAsNew')
