-- Durable restart requests not yet honoured, oldest first.
SELECT id, instance_id FROM toygres_cms.actor_restart_requests
 WHERE handled_at IS NULL
 ORDER BY id
 LIMIT 10000
