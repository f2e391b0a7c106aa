-- Every actor incarnation of one CMS instance (ids `actor-<uuid>-…`) that Duroxide still
-- runs or is about to start. $1 = the id prefix, e.g. 'actor-<uuid>-'; $2 = the first string
-- after every id with that prefix (the prefix with its last byte incremented). A range in
-- the "C" collation walks the indexes of sql/duroxide_instance_id_index.sql, whatever the
-- store's collation (a LIKE on a parameter cannot: a delete storm would scan the store once
-- per instance).
SELECT i.instance_id
  FROM __DUROXIDE__.instances i
  JOIN __DUROXIDE__.executions e
    ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
 WHERE i.instance_id COLLATE "C" >= $1 AND i.instance_id COLLATE "C" < $2
   AND e.status = 'Running'
UNION
SELECT DISTINCT oq.instance_id
  FROM __DUROXIDE__.orchestrator_queue oq
 WHERE oq.instance_id COLLATE "C" >= $1 AND oq.instance_id COLLATE "C" < $2
   AND NOT EXISTS (SELECT 1 FROM __DUROXIDE__.instances i WHERE i.instance_id = oq.instance_id)
