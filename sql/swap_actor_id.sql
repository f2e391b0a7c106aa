-- Compare-and-swap of the current actor id: succeeds only if nobody changed it since we
-- read it, and only while the row still calls for an actor. $1 id, $2 expected, $3 new,
-- $4 states that call for an actor.
UPDATE toygres_cms.instances
   SET instance_actor_orchestration_id = $3
 WHERE id = $1
   AND instance_actor_orchestration_id IS NOT DISTINCT FROM $2
   AND ($3 IS NULL OR state::text = ANY($4))
RETURNING id
