-- Mark every pending restart request of instance $1 handled, with outcome $2.
UPDATE toygres_cms.actor_restart_requests
   SET handled_at = now(), outcome = $2
 WHERE instance_id = $1 AND handled_at IS NULL
