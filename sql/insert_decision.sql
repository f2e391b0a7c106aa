-- One reconcile decision that did something (or failed), for `explain`.
INSERT INTO toygres_actors.decisions
       (instance_id, k8s_name, action, reason, old_actor_id, new_actor_id, trigger, replica, error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
