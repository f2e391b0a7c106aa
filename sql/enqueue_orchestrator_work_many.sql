-- Many Duroxide work items in one statement (sql/enqueue_orchestrator_work.sql, set-based):
-- $1 orchestration instance ids, $2 the WorkItems as duroxide serialises them (parallel
-- arrays), $3 visible at. Same procedure, same pins, inside our transaction.
SELECT __DUROXIDE__.enqueue_orchestrator_work(w.instance_id, w.item, $3, NULL, NULL, NULL)
  FROM unnest($1::text[], $2::text[]) AS w(instance_id, item)
