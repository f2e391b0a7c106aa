-- Mark instance $1's restart requests $3 (the ids read before the restart, by
-- restart_request_pending.sql) handled, with outcome $2. A request that arrived later is
-- not among them and stays pending.
UPDATE toygres_cms.actor_restart_requests
   SET handled_at = now(), outcome = $2
 WHERE instance_id = $1 AND id = ANY($3) AND handled_at IS NULL
