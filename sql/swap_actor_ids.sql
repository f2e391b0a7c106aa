-- Compare-and-swap of many actor ids in one statement (sql/swap_actor_id.sql, set-based):
-- $1 ids, $2 expected ids, $3 new ids (parallel arrays), $4 states that call for an actor.
-- Returns the ids swapped; a row changed since it was read is left alone (and reconciled
-- again on its own).
UPDATE toygres_cms.instances c
   SET instance_actor_orchestration_id = u.new_id
  FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, expected, new_id)
 WHERE c.id = u.id
   AND c.instance_actor_orchestration_id IS NOT DISTINCT FROM u.expected
   AND c.state::text = ANY($4)
RETURNING c.id
