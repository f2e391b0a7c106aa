-- Every actor incarnation of one CMS instance (ids `actor-<uuid>-…`) that Duroxide still
-- runs or is about to start. $1 = the id prefix, e.g. 'actor-<uuid>-'.
SELECT i.instance_id
  FROM __DUROXIDE__.instances i
  JOIN __DUROXIDE__.executions e
    ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
 WHERE i.instance_id LIKE $1 || '%' AND e.status = 'Running'
UNION
SELECT DISTINCT oq.instance_id
  FROM __DUROXIDE__.orchestrator_queue oq
 WHERE oq.instance_id LIKE $1 || '%'
   AND NOT EXISTS (SELECT 1 FROM __DUROXIDE__.instances i WHERE i.instance_id = oq.instance_id)
