-- Every live actor incarnation of many CMS instances at once (the set-based form of
-- sql/live_actors_of_instance.sql, for a storm of deletes): $1 = the id prefixes
-- ('actor-<uuid>-'), $2 = the first string after each prefix (parallel arrays). Each prefix
-- is a range walk of the "C"-collation indexes of sql/duroxide_instance_id_index.sql and
-- sql/duroxide_queue_instance_index.sql.
SELECT i.instance_id
  FROM unnest($1::text[], $2::text[]) AS p(lo, hi)
  JOIN __DUROXIDE__.instances i
    ON i.instance_id COLLATE "C" >= p.lo AND i.instance_id COLLATE "C" < p.hi
  JOIN __DUROXIDE__.executions e
    ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
 WHERE e.status = 'Running'
UNION
SELECT oq.instance_id
  FROM unnest($1::text[], $2::text[]) AS p(lo, hi)
  JOIN __DUROXIDE__.orchestrator_queue oq
    ON oq.instance_id COLLATE "C" >= p.lo AND oq.instance_id COLLATE "C" < p.hi
 WHERE NOT EXISTS (SELECT 1 FROM __DUROXIDE__.instances i WHERE i.instance_id = oq.instance_id)
