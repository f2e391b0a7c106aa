-- Work in a Duroxide store (__DUROXIDE__) that this service does not register: orchestration
-- instances of other names, queued starts of other orchestrations (no instance row yet), and
-- queued activities of other names ($1 = our orchestrations, $2 = our activities). One row per
-- foreign name with how many items carry it. A store with any is another runtime's
-- (toygres' server runs on `toygres_duroxide`): the service refuses it, and its dispatchers
-- give back at once, uncounted, any foreign item they happen to fetch.
SELECT name, count(*)::bigint AS items
  FROM (
        SELECT i.orchestration_name AS name
          FROM __DUROXIDE__.instances i
         WHERE i.orchestration_name <> ALL($1)
        UNION ALL
        SELECT q.work_item::jsonb -> 'StartOrchestration' ->> 'orchestration'
          FROM __DUROXIDE__.orchestrator_queue q
         WHERE q.work_item LIKE '{"StartOrchestration"%'
        UNION ALL
        SELECT w.work_item::jsonb -> 'ActivityExecute' ->> 'name'
          FROM __DUROXIDE__.worker_queue w
         WHERE w.work_item LIKE '{"ActivityExecute"%'
           AND NOT (w.work_item::jsonb -> 'ActivityExecute' ->> 'name' = ANY($2))
       ) f
 WHERE name IS NOT NULL AND name <> ALL($1) AND name <> ALL($2)
 GROUP BY name
 ORDER BY name
