-- Whether instance $1 has a durable restart request not yet honoured. The control worker
-- and a full reconcile both read the pending requests; a request read by both before the
-- first run marked it handled is then honoured once, not twice.
SELECT EXISTS (SELECT 1 FROM toygres_cms.actor_restart_requests
                WHERE instance_id = $1 AND handled_at IS NULL)
