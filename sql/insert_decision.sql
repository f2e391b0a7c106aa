-- One reconcile decision that did something (or failed), for `explain`. Written by the
-- leader's own reconciles only while it still leads in term ($10 name, $11 epoch, $12 term;
-- all NULL for an operator's request): a replica that wakes after losing its term records
-- nothing, not even the failure of what it was doing.
INSERT INTO toygres_actors.decisions
       (instance_id, k8s_name, action, reason, old_actor_id, new_actor_id, trigger, replica, error)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
 WHERE $12::bigint IS NULL
    OR EXISTS (SELECT 1 FROM toygres_actors.leader
                WHERE id = 1 AND holder = $10 AND epoch = $11 AND term = $12
                  AND expires_at > clock_timestamp())
