-- Many reconcile decisions in one statement (sql/insert_decision.sql, set-based), in the
-- transaction that carries them out: `explain` shows every instance of a batch, or none
-- of it happened. $1 ids, $2 names, $3 actions, $4 reasons, $5 old ids, $6 new ids,
-- $7 triggers (parallel arrays), $8 replica.
INSERT INTO toygres_actors.decisions
       (instance_id, k8s_name, action, reason, old_actor_id, new_actor_id, trigger, replica)
SELECT d.instance_id, d.k8s_name, d.action, d.reason, d.old_actor_id, d.new_actor_id,
       d.trigger, $8
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
       AS d(instance_id, k8s_name, action, reason, old_actor_id, new_actor_id, trigger)
