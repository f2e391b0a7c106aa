-- Actors still running the version-1 orchestration ($1 = actor orchestration name,
-- $2 = the v1 version). While this is above zero, v1 must stay registered so they replay.
SELECT count(*)
  FROM __DUROXIDE__.instances i
  JOIN __DUROXIDE__.executions e
    ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
 WHERE i.orchestration_name = $1 AND i.orchestration_version = $2 AND e.status IN ('Running', 'ContinuedAsNew')
