-- Live actors that have executions before their current one (continue-as-new leftovers).
SELECT DISTINCT x.instance_id
  FROM __DUROXIDE__.executions x
  JOIN __DUROXIDE__.instances i ON i.instance_id = x.instance_id
 WHERE i.orchestration_name = $1 AND x.execution_id < i.current_execution_id
 LIMIT 1000
