-- Probe leases held by replica ($1 name, $2 epoch) for instances whose row still names the
-- leasing actor; only those assigned since $3 (NULL: all). One second of overlap: a lease
-- assigned in the same instant as the last one we saw is not missed (picking a lease up
-- twice changes nothing).
SELECT l.instance_id, l.actor_id, i.last_health_check, l.assigned_at
  FROM toygres_actors.probe_leases l
  JOIN toygres_cms.instances i
    ON i.id = l.instance_id AND i.instance_actor_orchestration_id = l.actor_id
 WHERE l.holder = $1 AND l.holder_epoch = $2
   AND ($3::timestamptz IS NULL OR l.assigned_at >= $3::timestamptz - interval '1 second')
