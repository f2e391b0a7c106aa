SELECT decided_at, action, reason, old_actor_id, new_actor_id, trigger, replica, error
  FROM toygres_actors.decisions
 WHERE instance_id = $1
 ORDER BY decided_at DESC
 LIMIT 10
