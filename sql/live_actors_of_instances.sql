-- Every actor incarnation that Duroxide still runs (between two executions included: the
-- current one closed as ContinuedAsNew, the next one queued) or is about to start, of one or many CMS
-- instances (ids `actor-<uuid>-…`): $1 = the id prefixes ('actor-<uuid>-'), $2 = the first
-- string after each prefix (the prefix with its last byte incremented; parallel arrays).
-- Each prefix is a range walk of the "C"-collation indexes of
-- sql/duroxide_instance_id_index.sql and sql/duroxide_queue_instance_index.sql, whatever the
-- store's collation (a LIKE on a parameter cannot: a delete storm would scan the store once
-- per instance). The walks are fenced (LATERAL … OFFSET 0) and the execution is looked up by
-- its key per incarnation, so the plan stays a walk per prefix whatever the statistics say:
-- planned as a join, with statistics from before a burst of 10,000 starts (89 running
-- executions), it hashed every execution and compared all of them with every prefix, 4.9 s
-- a batch of 500 in the delete that followed.
SELECT i.instance_id
  FROM unnest($1::text[], $2::text[]) AS p(lo, hi)
 CROSS JOIN LATERAL (
        SELECT i.instance_id, i.current_execution_id
          FROM __DUROXIDE__.instances i
         WHERE i.instance_id COLLATE "C" >= p.lo AND i.instance_id COLLATE "C" < p.hi
        OFFSET 0) i
 WHERE (SELECT e.status FROM __DUROXIDE__.executions e
         WHERE e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id)
       IN ('Running', 'ContinuedAsNew')
UNION
SELECT oq.instance_id
  FROM unnest($1::text[], $2::text[]) AS p(lo, hi)
 CROSS JOIN LATERAL (
        SELECT oq.instance_id
          FROM __DUROXIDE__.orchestrator_queue oq
         WHERE oq.instance_id COLLATE "C" >= p.lo AND oq.instance_id COLLATE "C" < p.hi
        OFFSET 0) oq
 WHERE NOT EXISTS (SELECT 1 FROM __DUROXIDE__.instances i WHERE i.instance_id = oq.instance_id)
