-- The ids of instance $1's durable restart requests not yet honoured, oldest first. The
-- control worker and a full reconcile both read the pending requests; a request read by
-- both before the first run marked it handled is then honoured once, not twice. The run
-- closes exactly these ids (finish_restart_requests.sql): a request made while it restarts
-- stays pending and is honoured by the next run.
SELECT id FROM toygres_cms.actor_restart_requests
 WHERE instance_id = $1 AND handled_at IS NULL
 ORDER BY id
 LIMIT 10000
