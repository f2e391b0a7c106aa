-- Probe leases of actors started in this transaction, taken by this replica in one
-- statement: toygres_actors.lease_for_actor with p_take = true, set-based. The rows were
-- swapped to these actor ids earlier in the same transaction (and stay locked until
-- commit). $1 instance ids, $2 actor ids, $3 replica name, $4 epoch, $5 owner TTL (s).
INSERT INTO toygres_actors.probe_leases AS l
            (instance_id, actor_id, holder, holder_epoch, expires_at, assigned_at)
SELECT n.instance_id, n.actor_id, $3, $4,
       clock_timestamp() + make_interval(secs => $5), clock_timestamp()
  FROM unnest($1::uuid[], $2::text[]) AS n(instance_id, actor_id)
ON CONFLICT (instance_id) DO UPDATE
   SET actor_id = EXCLUDED.actor_id,
       holder = EXCLUDED.holder,
       holder_epoch = EXCLUDED.holder_epoch,
       expires_at = EXCLUDED.expires_at,
       assigned_at = EXCLUDED.assigned_at
