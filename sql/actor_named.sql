-- Inside a start transaction: the row ($1) still names actor $2 (FOR SHARE: a swap waits).
SELECT 1 FROM toygres_cms.instances
 WHERE id = $1 AND instance_actor_orchestration_id = $2
   FOR SHARE
